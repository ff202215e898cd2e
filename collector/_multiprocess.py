"""Multi-process (gunicorn) support: the shared directory, the value store, every worker's values.

Module level needs the standard library only: the gunicorn config imports this in the master,
before prometheus_client and before any metric exists.

Readers of the directory (scrapes) hold a shared lock on ``.collector.lock``; folding a dead
worker's files into the archive holds it exclusively, so no scrape sees a value twice or not at all.
"""

from __future__ import annotations

import fcntl
import glob
import json
import operator
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from collector import _faults, _patches

ENV = "PROMETHEUS_MULTIPROC_DIR"
LOCK = ".collector.lock"
# What prometheus_client writes (<kind>_<pid>.db, gauges <kind>_<mode>_<pid>.db), the archives of
# dead workers and an archive being written.
_OWN_FILE = re.compile(
    r"(counter|histogram|summary|gauge_(live)?(all|min|max|sum|mostrecent))_(\d+|archive)\.db(\.new)?"
)
# Kinds whose dead workers' values fold into one archive file; "all" and "mostrecent" gauges keep
# their per-pid files.
_FOLD: dict[str, Callable[[float, float], float]] = {
    "counter": operator.add,
    "histogram": operator.add,  # buckets are stored per bucket, not cumulative: they add up
    "summary": operator.add,
    "gauge_sum": operator.add,
    "gauge_max": max,
    "gauge_min": min,
}


def directory() -> str | None:
    return os.environ.get(ENV) or os.environ.get(ENV.lower()) or None


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def enabled() -> bool:
    """True when metric values live in shared files (prometheus_client decided this at import)."""
    from prometheus_client import values

    return values.ValueClass is not values.MutexValue


def prepare_directory(path: str) -> None:
    """Create ``path``, or empty it of an earlier run's metric files; stop on anything else in it.

    Everything is checked before anything is deleted: one wrong variable must not wipe a folder.
    """
    try:
        os.makedirs(path, exist_ok=True)
        with os.scandir(path) as entries:
            found = [(entry.name, entry.is_file(follow_symlinks=False)) for entry in entries]
    except OSError as exc:
        raise _unusable(path, exc) from None
    foreign = sorted(
        name + ("" if is_file else "/")
        for name, is_file in found
        if not (is_file and (name == LOCK or _OWN_FILE.fullmatch(name)))
    )
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise SystemExit(
            f"collector: {ENV}={path!r} holds what is not a metric file ({shown}); nothing was deleted: "
            "give the metrics a directory of their own"
        )
    try:
        for name, _ in found:
            if name != LOCK:  # stale values of an earlier run would be summed in
                os.unlink(os.path.join(path, name))
        _touch_lock(path)
    except OSError as exc:
        raise _unusable(path, exc) from None


def _unusable(path: str, exc: OSError) -> SystemExit:
    return SystemExit(f"collector: {ENV}={path!r} cannot be the metrics directory: {exc.strerror or exc}")


def _touch_lock(path: str) -> None:
    with open(os.path.join(path, LOCK), "a"):
        pass


def ensure_usable_value_store() -> None:
    """Fall back to this process's memory when the multiprocess directory cannot be used.

    prometheus_client would otherwise raise on the first metric it creates, which is at import
    time, and take the app down with it. A missing directory is created. The fallback is
    counted and logged by every process it happens in: each scrape then shows one worker only.
    """
    path = directory()
    if path is None or not enabled():
        return
    try:
        os.makedirs(path, exist_ok=True)
        _touch_lock(path)
        return
    except OSError as exc:
        reason = exc.strerror or str(exc)
    from prometheus_client import values

    # Internal to prometheus_client: metrics read values.ValueClass when they create a value. Made at
    # import for the whole process: undoing it would send later values to the unusable directory.
    _patches.replace("multiprocess", values, "ValueClass", values.MutexValue)
    _faults.record(
        "multiprocess",
        OSError(
            f"{ENV}={path!r} is not a usable directory ({reason}): this process keeps its metrics "
            "to itself, so a scrape shows one worker instead of the sum over all workers"
        ),
    )


@contextmanager
def _locked(path: str, operation: int) -> Iterator[None]:
    with open(os.path.join(path, LOCK), "a") as lock:
        fcntl.flock(lock, operation)
        yield  # closing the file releases the lock


def collect(path: str) -> list[Any]:
    """Every worker's values merged as prometheus_client's ``MultiProcessCollector`` does.

    A file that cannot be read (truncated, corrupted) is left out of this scrape and counted.
    """
    from prometheus_client.multiprocess import MultiProcessCollector

    with _locked(path, fcntl.LOCK_SH):
        files = glob.glob(os.path.join(path, "*.db"))
        try:
            return list(MultiProcessCollector.merge(files, accumulate=True))  # type: ignore[no-untyped-call]
        except Exception as exc:
            _faults.record("exposition", exc)
            readable = [name for name in files if _readable(name)]
            return list(MultiProcessCollector.merge(readable, accumulate=True))  # type: ignore[no-untyped-call]


def _readable(name: str) -> bool:
    from prometheus_client.mmap_dict import MmapedDict

    try:
        for key, _, _, _ in MmapedDict.read_all_values_from_file(name):  # type: ignore[no-untyped-call]
            json.loads(key)
    except Exception:
        return False
    return True


def archive_dead(pid: int, path: str) -> None:
    """Fold a dead worker's files into one archive per kind: the file count stays bounded, totals exact.

    prometheus_client's ``merge(files, accumulate=False)`` is meant for writing merged values
    back to a file; here the values are folded per key, which is the same for these kinds.
    """
    from prometheus_client.mmap_dict import MmapedDict
    from prometheus_client.multiprocess import mark_process_dead

    with _locked(path, fcntl.LOCK_EX):
        mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        for kind, fold in _FOLD.items():
            dead = os.path.join(path, f"{kind}_{pid}.db")
            if not os.path.exists(dead):
                continue
            archive = os.path.join(path, f"{kind}_archive.db")
            merged: dict[str, tuple[float, float]] = {}
            for source in (archive, dead):
                if not os.path.exists(source):
                    continue
                for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(source):  # type: ignore[no-untyped-call]
                    if key in merged:
                        previous, previous_timestamp = merged[key]
                        merged[key] = (fold(previous, value), max(previous_timestamp, timestamp))
                    else:
                        merged[key] = (value, timestamp)
            staging = archive + ".new"  # outside the "*.db" a scrape reads
            if os.path.exists(staging):
                os.unlink(staging)  # left by an interrupted fold; its values are still in the sources
            written = MmapedDict(staging)  # type: ignore[no-untyped-call]
            for key, (value, timestamp) in merged.items():
                written.write_value(key, value, timestamp)  # type: ignore[no-untyped-call]
            written.close()  # type: ignore[no-untyped-call]
            os.replace(staging, archive)
            os.unlink(dead)
