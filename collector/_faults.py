"""Faults inside the collector: counted, logged once in a while, never raised into the app.

This module imports nothing of the collector: ``collector.metrics`` hands it the counter
once declared (``count_into``), so any module can record a fault, the metric store included.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

logger = logging.getLogger("collector")

_LOG_EVERY_SECONDS = 60.0
_last_logged: dict[str, float] = {}
# Kept in process memory too, so a fault of the metric store itself is still visible.
fault_counts: dict[str, int] = {}
_counter: Any = None  # fastapi_collector_errors_total, once collector.metrics declared it


def record(component: str, exc: BaseException | None = None) -> None:
    """Count a fault of ``component``; log it at most once a minute per component."""
    fault_counts[component] = fault_counts.get(component, 0) + 1
    if _counter is not None:
        with contextlib.suppress(Exception):  # the metric store itself failed: fault_counts has it
            _counter.labels(component).inc()
    now = time.monotonic()
    if now - _last_logged.get(component, -_LOG_EVERY_SECONDS) >= _LOG_EVERY_SECONDS:
        _last_logged[component] = now
        logger.warning("collector: fault in %s (the request went on): %r", component, exc)


def count_into(counter: Any) -> None:
    """Count faults into ``counter`` from now on, starting with those recorded before it existed."""
    global _counter
    for component, count in fault_counts.items():
        counter.labels(component).inc(count)
    _counter = counter
