"""Per-request state, reachable from anywhere the request's work runs.

One ``RequestContext`` is made by the ASGI middleware and put in a ``ContextVar``;
the route hook, the FastAPI hooks, SQLAlchemy's sync listeners (the greenlet under
``AsyncEngine`` carries the context), the thread pool and the cache wrappers all
find it there and write plain attributes: no locks and no allocation on the hot path.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

UNMATCHED = "unmatched"


class RequestContext:
    """Defaults live on the class: a request pays only for the attributes it sets."""

    route: str | None = None
    mount_prefix = ""
    route_enter = 0.0
    route_exit = 0.0
    endpoint_done = False
    status = 0
    # When the last body chunk was handed to the server: what the client waited ends here.
    end = 0.0
    # The client went away (aborted upload, closed connection) before the response was complete.
    disconnected = False
    # The app call raised; a background task raised (after a complete response).
    raised = False
    background_failed = False
    # The static-file mount label, for a StaticFiles mount or a FastAPI frontend.
    static_mount: str | None = None
    span: Any = None
    task: Any = None  # the asyncio task running the endpoint, set by the route hook while profiling
    trace_id: str | None = None
    # FastAPI's internals (dependencies, validation, serialization, size) are timed for this request.
    timed = False
    response_bytes = 0
    # Event loop stalls seen while in flight: [location, seconds], seconds filled when it ends.
    stalls: list[list[Any]] | None = None
    queries = 0
    query_fingerprints: dict[str, int] | None = None  # statement fingerprint -> times run
    query_locations: dict[str, str] | None = None  # fingerprints that reached the N+1 threshold -> code
    slow_queries = 0
    dependency_seconds = 0.0
    validation_request_seconds = 0.0
    validation_response_seconds = 0.0
    serialization_seconds = 0.0
    profile_id: str | None = None
    cache_hits = 0
    cache_misses = 0

    # The middleware makes its contexts with object.__new__ and sets these two itself.
    def __init__(self, method: str, start: float) -> None:
        self.method = method
        self.start = start

    @property
    def route_label(self) -> str:
        return self.route if self.route is not None else UNMATCHED


current: ContextVar[RequestContext | None] = ContextVar("collector_request", default=None)

# Requests being handled in this process: the event-loop watchdog attributes stalls to them, and
# fastapi_requests_in_progress is counted from them when the metrics are read.
in_flight: set[RequestContext] = set()


def snapshot(items: set[Any]) -> list[Any]:
    """A copy of a set another thread may be changing (``in_flight`` from the loop thread)."""
    for _ in range(3):
        try:
            return list(items)
        except RuntimeError:  # changed size during iteration: the loop thread moved on
            continue
    return []
