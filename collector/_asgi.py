"""The pure-ASGI middleware: outermost on the app, one clock call at each end of a request.

A request's latency is what its client waited: from its arrival to the last body chunk handed
to the server. Work the app does after that (background tasks) is measured on its own by
``collector._routes``. A response that fails after it started is counted as incomplete
(``app_error``) beside its status; a client that goes away before its response is complete
(an aborted upload, a closed connection) is counted as incomplete (``client_disconnect``) and
not in the latency series, where the status the app sent to nobody would read as its fault.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect

from collector import _fastapi_hooks as fastapi_hooks
from collector import _faults
from collector._context import UNMATCHED, RequestContext, current, in_flight
from collector._updates import adder, observer
from collector.metrics import (
    MIDDLEWARE_DURATION,
    REQUEST_DURATION,
    REQUESTS_EXCLUDED,
    RESPONSE_SIZE,
    RESPONSES_INCOMPLETE,
    STALLED_REQUESTS,
)

if TYPE_CHECKING:
    from collector._runtime import Runtime

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]

# Methods outside this set share one label value, so a client cannot add series.
_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "QUERY"}
)

_new_context = object.__new__
_randint = random.Random().randint


def route_path(path: str, root_path: str) -> str:
    """``path`` with ``root_path`` taken off, as Starlette routes (``starlette._utils.get_route_path``)."""
    if not path.startswith(root_path):
        return path
    if path == root_path:
        return ""
    if path[len(root_path)] == "/":
        return path[len(root_path) :]
    return path


class CollectorMiddleware:
    def __init__(self, app: Any, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime
        self._duration: dict[tuple[str, str, int], Callable[[float], None]] = {}
        self._middleware: dict[str, Callable[[float], None]] = {}
        self._size: dict[str, Callable[[float], None]] = {}
        self._incomplete: dict[tuple[str, str], Callable[[float], None]] = {}
        self._exemplars = runtime.exemplars
        ratio = runtime.settings.internals_sample_ratio
        self._timed_every = round(1 / ratio) if ratio > 0 else 0
        self._until_timed = 1
        self._own_paths = frozenset(runtime.own_paths)
        # The profile path is a prefix that matches only whole path segments.
        self._own_base = runtime.own_prefix.rstrip("/")
        self._own_prefix = self._own_base + "/" if runtime.own_prefix else ""
        self._excluded = {
            path: adder(REQUESTS_EXCLUDED.labels(path)) for path in runtime.settings.exclude_paths
        }
        # Paths that are not requests of the app: one set lookup on the hot path finds them all.
        self._special = self._own_paths | frozenset(self._excluded)

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
        root_path = scope.get("root_path")
        if root_path:
            path = route_path(path, root_path)
        if path in self._special or (self._own_prefix and self._under_own_prefix(path)):
            await self._serve_special(path, scope, receive, send)
            return

        method = scope["method"]
        ctx = _new_context(RequestContext)  # its __init__ would be one more Python call per request
        ctx.method = method if method in _METHODS else "other"
        ctx.start = perf_counter()
        if self._timed_every:
            self._until_timed -= 1
            if not self._until_timed:
                # A random gap of mean N, not every Nth: load that alternates routes can't dodge it.
                self._until_timed = _randint(1, 2 * self._timed_every - 1)
                ctx.timed = True
                try:
                    fastapi_hooks.timed_begin()
                except Exception as exc:
                    _faults.record("fastapi", exc)
        token = current.set(ctx)
        in_flight.add(ctx)

        def send_wrapper(message: Message) -> Any:
            # Returns send's awaitable rather than awaiting it: no extra coroutine per message.
            kind = message["type"]
            if kind == "http.response.body":
                if ctx.timed:
                    ctx.response_bytes += len(message.get("body", b""))
                if not message.get("more_body"):
                    ctx.end = perf_counter()
            elif kind == "http.response.start":
                ctx.status = message["status"]
            elif kind == "http.response.pathsend":  # the server sends the whole file: the last message
                ctx.end = perf_counter()
            return send(message)

        async def receive_wrapper() -> Message:
            # Called only by apps that read the body or watch for a disconnect.
            message: Message = await receive()
            if message["type"] == "http.disconnect" and not ctx.end:
                ctx.disconnected = True
            return message

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except ClientDisconnect:
            ctx.disconnected = True
            raise
        except BaseException:
            ctx.raised = True
            raise
        finally:
            end = ctx.end or perf_counter()
            in_flight.discard(ctx)
            current.reset(token)
            try:
                if ctx.timed:
                    fastapi_hooks.timed_end()
                self._finish(ctx, end)
            except Exception as exc:
                _faults.record("asgi", exc)

    def _under_own_prefix(self, path: str) -> bool:
        return path.startswith(self._own_prefix) or path == self._own_base

    async def _serve_special(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        count = self._excluded.get(path)
        own = path in self._own_paths or (self._own_prefix and self._under_own_prefix(path))
        if count is not None and not own:  # excluding /metrics from the metrics must not hide it
            try:
                count(1)
            except Exception as exc:
                _faults.record("asgi", exc)
            await self.app(scope, receive, send)
            return
        # The collector's own endpoints see the path the app routes on, root_path taken off.
        own_scope = scope if path == scope["path"] else {**scope, "path": path}
        await self.runtime.serve_own(own_scope, receive, send)

    def _count_incomplete(self, route: str, reason: str) -> None:
        key = (route, reason)
        count = self._incomplete.get(key)
        if count is None:
            count = self._incomplete[key] = adder(RESPONSES_INCOMPLETE.labels(route, reason))
        count(1)

    def _finish(self, ctx: RequestContext, end: float) -> None:
        route = ctx.route or UNMATCHED
        if ctx.stalls:
            STALLED_REQUESTS.labels(route).inc()
        if ctx.disconnected:
            self._count_incomplete(route, "client_disconnect")
            return
        status = ctx.status
        if not status:  # the app sent nothing: the server answers 500
            status = 500
        elif not ctx.end or (ctx.raised and status < 500 and not ctx.background_failed):
            # Started, then gave up or failed (BaseHTTPMiddleware ends a failed body as if complete).
            # A 500 sent for the failure by the error handler is complete and speaks for itself.
            self._count_incomplete(route, "app_error")
        if self._exemplars and ctx.trace_id is not None:
            child = REQUEST_DURATION.labels(ctx.method, route, str(status))
            child.observe(end - ctx.start, {"trace_id": ctx.trace_id})
        else:
            key = (ctx.method, route, status)
            observe = self._duration.get(key)
            if observe is None:
                child = REQUEST_DURATION.labels(ctx.method, route, str(status))
                observe = self._duration[key] = observer(child)
            observe(end - ctx.start)
        if ctx.route_enter:
            observe = self._middleware.get(route)
            if observe is None:
                observe = self._middleware[route] = observer(MIDDLEWARE_DURATION.labels(route))
            # The route may return after the last chunk (background tasks): none of that is middleware.
            after = end - ctx.route_exit
            observe((ctx.route_enter - ctx.start) + (after if after > 0.0 else 0.0))
            if ctx.timed:
                observe = self._size.get(route)
                if observe is None:
                    observe = self._size[route] = observer(RESPONSE_SIZE.labels(route))
                observe(0 if ctx.method == "HEAD" else ctx.response_bytes)
