"""Faults inside the collector: counted, logged once in a while, never raised into the app."""

from __future__ import annotations

import logging
import time

logger = logging.getLogger("collector")

_LOG_EVERY_SECONDS = 60.0
_last_logged: dict[str, float] = {}
# Kept in process memory too, so a fault of the metric store itself is still visible.
fault_counts: dict[str, int] = {}
# Faults seen before the metrics were declared (or while they could not be written).
pending: dict[str, int] = {}


def record(component: str, exc: BaseException | None = None) -> None:
    """Count a fault of ``component``; log it at most once a minute per component."""
    fault_counts[component] = fault_counts.get(component, 0) + 1
    try:
        from collector.metrics import COLLECTOR_ERRORS

        COLLECTOR_ERRORS.labels(component).inc()
    except Exception:  # not declared yet, or the metric store itself is what failed
        pending[component] = pending.get(component, 0) + 1
    now = time.monotonic()
    if now - _last_logged.get(component, -_LOG_EVERY_SECONDS) >= _LOG_EVERY_SECONDS:
        _last_logged[component] = now
        logger.warning("collector: fault in %s (the request went on): %r", component, exc)


def flush_pending() -> None:
    from collector.metrics import COLLECTOR_ERRORS

    while pending:
        component, count = pending.popitem()
        COLLECTOR_ERRORS.labels(component).inc(count)
