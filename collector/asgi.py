"""The pure-ASGI middleware: outermost on the app, one clock call at each end of a request."""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from collector import _faults
from collector.context import UNMATCHED, RequestContext, current, in_flight
from collector.metrics import MIDDLEWARE_DURATION, REQUEST_DURATION, STALLED_REQUESTS

if TYPE_CHECKING:
    from collector.runtime import Runtime

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]

# Methods outside this set share one label value, so a client cannot add series.
_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "QUERY"}
)


class CollectorMiddleware:
    def __init__(self, app: Any, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime
        self._duration: dict[tuple[str, str, int], Any] = {}
        self._middleware: dict[str, Any] = {}
        self._exemplars = runtime.exemplars

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        if scope_type != "http":
            if scope_type == "lifespan":
                await self.runtime.lifespan(self.app, scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        runtime = self.runtime
        if not runtime.started:
            runtime.start()
        path = scope["path"]
        if path in runtime.own_paths or (runtime.own_prefix and path.startswith(runtime.own_prefix)):
            await runtime.serve_own(scope, receive, send)
            return

        method = scope["method"]
        ctx = RequestContext(method if method in _METHODS else "other", perf_counter())
        token = current.set(ctx)
        in_flight.add(ctx)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                ctx.status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException:
            if not ctx.status:
                ctx.status = 500
            raise
        finally:
            end = perf_counter()
            in_flight.discard(ctx)
            current.reset(token)
            try:
                self._finish(ctx, end)
            except Exception as exc:
                _faults.record("asgi", exc)

    def _finish(self, ctx: RequestContext, end: float) -> None:
        route = ctx.route or UNMATCHED
        key = (ctx.method, route, ctx.status)
        child = self._duration.get(key)
        if child is None:
            child = self._duration[key] = REQUEST_DURATION.labels(ctx.method, route, str(ctx.status))
        if self._exemplars and ctx.trace_id is not None:
            child.observe(end - ctx.start, {"trace_id": ctx.trace_id})
        else:
            child.observe(end - ctx.start)
        if ctx.route_enter:
            mw = self._middleware.get(route)
            if mw is None:
                mw = self._middleware[route] = MIDDLEWARE_DURATION.labels(route)
            mw.observe((ctx.route_enter - ctx.start) + (end - ctx.route_exit))
        if ctx.stalls:
            STALLED_REQUESTS.labels(route).inc()
