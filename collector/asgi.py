"""The pure-ASGI middleware: outermost on the app, one clock call at each end of a request."""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from collector import _faults, fastapi_hooks
from collector._updates import observer
from collector.context import UNMATCHED, RequestContext, current, in_flight
from collector.metrics import MIDDLEWARE_DURATION, REQUEST_DURATION, RESPONSE_SIZE, STALLED_REQUESTS

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

_new_context = object.__new__


class CollectorMiddleware:
    def __init__(self, app: Any, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime
        self._duration: dict[tuple[str, str, int], Callable[[float], None]] = {}
        self._middleware: dict[str, Callable[[float], None]] = {}
        self._size: dict[str, Callable[[float], None]] = {}
        self._exemplars = runtime.exemplars
        ratio = runtime.settings.internals_sample_ratio
        self._timed_every = round(1 / ratio) if ratio > 0 else 0
        self._until_timed = 1
        self._own_paths = runtime.own_paths
        self._own_prefix = runtime.own_prefix

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
        if path in self._own_paths or (self._own_prefix and path.startswith(self._own_prefix)):
            await runtime.serve_own(scope, receive, send)
            return

        method = scope["method"]
        ctx = _new_context(RequestContext)  # its __init__ would be one more Python call per request
        ctx.method = method if method in _METHODS else "other"
        ctx.start = perf_counter()
        if self._timed_every:
            self._until_timed -= 1
            if not self._until_timed:
                self._until_timed = self._timed_every
                ctx.timed = True
                try:
                    fastapi_hooks.timed_begin()
                except Exception as exc:
                    _faults.record("fastapi", exc)
        token = current.set(ctx)
        in_flight.add(ctx)

        def send_wrapper(message: Message) -> Any:
            # Returns send's awaitable rather than awaiting it: no extra coroutine per message.
            if message["type"] == "http.response.start":
                ctx.status = message["status"]
            elif ctx.timed:
                ctx.response_bytes += len(message.get("body", b""))
            return send(message)

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
                if ctx.timed:
                    fastapi_hooks.timed_end()
                self._finish(ctx, end)
            except Exception as exc:
                _faults.record("asgi", exc)

    def _finish(self, ctx: RequestContext, end: float) -> None:
        route = ctx.route or UNMATCHED
        if self._exemplars and ctx.trace_id is not None:
            child = REQUEST_DURATION.labels(ctx.method, route, str(ctx.status))
            child.observe(end - ctx.start, {"trace_id": ctx.trace_id})
        else:
            key = (ctx.method, route, ctx.status)
            observe = self._duration.get(key)
            if observe is None:
                child = REQUEST_DURATION.labels(ctx.method, route, str(ctx.status))
                observe = self._duration[key] = observer(child)
            observe(end - ctx.start)
        if ctx.route_enter:
            observe = self._middleware.get(route)
            if observe is None:
                observe = self._middleware[route] = observer(MIDDLEWARE_DURATION.labels(route))
            observe((ctx.route_enter - ctx.start) + (end - ctx.route_exit))
            if ctx.timed:
                observe = self._size.get(route)
                if observe is None:
                    observe = self._size[route] = observer(RESPONSE_SIZE.labels(route))
                observe(0 if ctx.method == "HEAD" else ctx.response_bytes)
        if ctx.stalls:
            STALLED_REQUESTS.labels(route).inc()
