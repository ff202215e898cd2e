"""Multi-process (gunicorn) support: the value store and exposition over live workers."""

from __future__ import annotations

import os
import tempfile

from prometheus_client import values

from collector import _faults

ENV = "PROMETHEUS_MULTIPROC_DIR"


def directory() -> str | None:
    return os.environ.get(ENV) or os.environ.get(ENV.lower()) or None


def enabled() -> bool:
    """True when metric values live in shared files (prometheus_client decided this at import)."""
    return values.ValueClass is not values.MutexValue


def _usable(path: str) -> bool:
    if not os.path.isdir(path):
        return False
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".collector-probe-"):
            return True
    except OSError:
        return False


def ensure_usable_value_store() -> None:
    """Fall back to this process's memory when the multiprocess directory is unusable.

    prometheus_client would otherwise raise on the first metric it creates, which is
    at import time, and take the app down with it. The fault is counted and the
    worker's own metrics are still served.
    """
    path = directory()
    if path is None or not enabled() or _usable(path):
        return
    # Internal to prometheus_client: metrics read values.ValueClass when they create a value.
    values.ValueClass = values.MutexValue
    _faults.record("multiprocess", OSError(f"{ENV}={path!r} is not a writable directory"))
