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
    __slots__ = (
        "cache_hits",
        "cache_misses",
        "dependency_seconds",
        "endpoint_done",
        "method",
        "mount_prefix",
        "profile_id",
        "queries",
        "query_fingerprints",
        "route",
        "route_enter",
        "route_exit",
        "serialization_seconds",
        "slow_queries",
        "span",
        "stalls",
        "start",
        "status",
        "trace_id",
        "validation_request_seconds",
        "validation_response_seconds",
    )

    def __init__(self, method: str, start: float) -> None:
        self.method = method
        self.start = start
        self.route: str | None = None
        self.mount_prefix = ""
        self.route_enter = 0.0
        self.route_exit = 0.0
        self.endpoint_done = False
        self.status = 0
        self.span: Any = None
        self.trace_id: str | None = None
        # Event loop stalls seen while in flight: [location, seconds], seconds filled when it ends.
        self.stalls: list[list[Any]] | None = None
        self.queries = 0
        self.query_fingerprints: dict[str, list[Any]] | None = None
        self.slow_queries = 0
        self.dependency_seconds = 0.0
        self.validation_request_seconds = 0.0
        self.validation_response_seconds = 0.0
        self.serialization_seconds = 0.0
        self.profile_id: str | None = None
        self.cache_hits = 0
        self.cache_misses = 0

    @property
    def route_label(self) -> str:
        return self.route if self.route is not None else UNMATCHED


current: ContextVar[RequestContext | None] = ContextVar("collector_request", default=None)

# Requests being handled in this process, for the event-loop watchdog to attribute stalls.
in_flight: set[RequestContext] = set()
