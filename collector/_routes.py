"""Route templates and the route inventory, read from Starlette's and FastAPI's routing.

The route a request matched is found by hooking ``handle`` on Starlette's route
classes (and FastAPI's, which override it, and its frontend routes): the router calls
``handle`` only after matching, on every Starlette/FastAPI version, whatever the nesting
of mounts and included routers. The hook reads the template there, marks when the
endpoint side of the request starts and ends, and does nothing outside an observed request.

Background tasks run after the response's last chunk, inside the app call: each one is
timed on its own by a hook on ``BackgroundTask.__call__``, so requests without them pay nothing.

Every hook is set through the patch ledger under the component ``routes``:
``_patches.undo("routes")`` (or ``remove_hooks()``) restores the classes exactly.
"""

from __future__ import annotations

import functools
import inspect
from asyncio import current_task
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from time import perf_counter
from typing import Any

from starlette import routing as starlette_routing
from starlette.background import BackgroundTask
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.staticfiles import StaticFiles

from collector import _faults, _patches
from collector._context import RequestContext, current, in_flight, snapshot
from collector._updates import route_observer
from collector.metrics import BACKGROUND_TASK_DURATION, REFRESHERS, REQUESTS_IN_PROGRESS

Handle = Callable[[Any, MutableMapping[str, Any], Any, Any], Awaitable[None]]

# FastAPI ≥ 0.16x keeps included routers as their own route objects; older ones flatten them.
_iter_route_contexts: Callable[[Any], Iterator[Any]] | None
try:
    from fastapi.routing import iter_route_contexts as _iter_route_contexts
except ImportError:
    _iter_route_contexts = None

COMPONENT = "routes"
_MOUNT_SUFFIX = "/{path}"

_in_progress: dict[tuple[str, str], Any] = {}  # (method, route) -> gauge child, every pair seen
_background: dict[str, Callable[[float], None]] = {}

# Hooks that were enabled by instrument(); read on every request, so kept as module flags.
capture_span = False
track_tasks = False  # the profiler's: each request's context names the task running its endpoint
# Called once per request when its endpoint has produced the whole response (or raised),
# while the request's span is still open.
on_route_exit: list[Callable[[RequestContext], None]] = []


def _mount_prefix(mount: starlette_routing.Mount) -> str:
    return mount.path_format.removesuffix(_MOUNT_SUFFIX)


def register(component: str, hooks: list[Any], hook: Any, *, first: bool = False) -> None:
    """Add ``hook`` to a callback list (``on_route_exit``, ``metrics.REFRESHERS``) once, in the ledger."""
    if hook in hooks:
        return
    if first:
        hooks.insert(0, hook)
    else:
        hooks.append(hook)

    def unregister() -> None:
        if hook in hooks:
            hooks.remove(hook)

    name = getattr(hook, "__qualname__", repr(hook))
    _patches.record(component, f"callback {name}", unregister)


def template_of(route: Any, scope: MutableMapping[str, Any]) -> str:
    """The matched route's path template, included-router prefix and all (not the mount prefix)."""
    fastapi_scope = scope.get("fastapi")
    if fastapi_scope is not None:
        effective = fastapi_scope.get("effective_route_context")
        if effective is not None and getattr(effective, "original_route", None) is route:
            starlette_route = getattr(effective, "starlette_route", None)
            path = getattr(starlette_route, "path_format", None) or getattr(effective, "path_format", None)
            if path:
                return str(path)
    return str(getattr(route, "path_format", None) or getattr(route, "path", ""))


def _endpoint_done(ctx: RequestContext) -> None:
    ctx.endpoint_done = True
    for hook in on_route_exit:
        try:
            hook(ctx)
        except Exception as exc:
            _faults.record("route_exit", exc)


def _send_ending_span(ctx: RequestContext, send: Any) -> Any:
    """Run the summaries before the last body chunk: tracing ends the span as that chunk passes."""

    def send_wrapper(message: Any) -> Any:
        if not ctx.endpoint_done and message["type"] == "http.response.body" and not message.get("more_body"):
            ctx.route_exit = perf_counter()
            _endpoint_done(ctx)
        return send(message)

    return send_wrapper


def _capture_span(ctx: RequestContext) -> None:
    try:
        from opentelemetry import trace

        span = trace.get_current_span()
        span_context = span.get_span_context()
        if span_context.is_valid:
            ctx.span = span
            if span_context.trace_flags.sampled:
                ctx.trace_id = format(span_context.trace_id, "032x")
    except Exception as exc:
        _faults.record("tracing", exc)


Resolve = Callable[[Any, MutableMapping[str, Any], RequestContext], "str | None"]


def _hook(original: Handle, resolve: Resolve) -> Handle:
    """Wrap ``handle``: ``resolve`` names the route template, or None to pass through (mount with routes)."""

    @functools.wraps(original)
    def handle(self: Any, scope: MutableMapping[str, Any], receive: Any, send: Any) -> Awaitable[None]:
        # A plain function handing back a coroutine: passing through costs no extra frame.
        ctx = current.get()
        if ctx is None or ctx.route_enter:
            return original(self, scope, receive, send)
        try:
            template = resolve(self, scope, ctx)
        except Exception as exc:
            _faults.record("routing", exc)
            template = None
        if template is None:
            return original(self, scope, receive, send)
        return _observed(original, self, ctx, template, scope, receive, send)

    return handle


async def _observed(
    original: Handle, route: Any, ctx: RequestContext, template: str, scope: Any, receive: Any, send: Any
) -> None:
    ctx.route = template
    if capture_span:
        _capture_span(ctx)
        if ctx.span is not None:
            send = _send_ending_span(ctx, send)
    ctx.route_enter = perf_counter()
    if track_tasks:
        ctx.task = current_task()
    try:
        await original(route, scope, receive, send)
    finally:
        ctx.route_exit = perf_counter()
        if not ctx.endpoint_done:
            _endpoint_done(ctx)


def _resolve_leaf(route: Any, scope: MutableMapping[str, Any], ctx: RequestContext) -> str:
    return ctx.mount_prefix + template_of(route, scope)


def _resolve_mount(mount: Any, scope: MutableMapping[str, Any], ctx: RequestContext) -> str | None:
    prefix = ctx.mount_prefix + _mount_prefix(mount)
    if getattr(mount, "routes", None):  # a sub-app: its own routes name the template
        ctx.mount_prefix = prefix
        return None
    if isinstance(mount.app, StaticFiles):
        ctx.static_mount = prefix
    return prefix + _MOUNT_SUFFIX  # a mounted ASGI app or StaticFiles: the mount is the route


def _resolve_frontend(group: Any, scope: MutableMapping[str, Any], ctx: RequestContext) -> str | None:
    """``app.frontend(path)``: route ``<path>/{path}``, as FastAPI names it; the files' mount ``<path>``."""
    prefix = ""
    effective = scope.get("fastapi", {}).get("effective_route_context")
    if effective is not None and getattr(effective, "original_route", None) is group:
        prefix = effective.frontend_prefix  # the group belongs to an included router
    _, _, route = group._match(scope, prefix=prefix)
    if route is None:
        return None
    path = ctx.mount_prefix + (prefix + route.path if route.path != "/" else prefix or "/").rstrip("/")
    ctx.static_mount = path or "/"
    return path + _MOUNT_SUFFIX


def _hook_targets() -> Iterator[tuple[type, Resolve]]:
    yield starlette_routing.Route, _resolve_leaf
    yield starlette_routing.WebSocketRoute, _resolve_leaf
    yield starlette_routing.Mount, _resolve_mount
    try:
        from fastapi import routing as fastapi_routing
    except ImportError:
        return
    for cls in (fastapi_routing.APIRoute, fastapi_routing.APIWebSocketRoute):
        if "handle" in cls.__dict__:
            yield cls, _resolve_leaf
    frontend = getattr(fastapi_routing, "_FrontendRouteGroup", None)  # FastAPI >= 0.16x: app.frontend()
    if frontend is not None and "handle" in frontend.__dict__:
        yield frontend, _resolve_frontend


def _background_call(original: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
    @functools.wraps(original)
    async def __call__(self: Any) -> None:
        ctx = current.get()
        if ctx is None:
            await original(self)
            return
        start = perf_counter()
        try:
            await original(self)
        except BaseException:
            ctx.background_failed = True  # the response before it was complete: not an incomplete one
            raise
        finally:
            try:
                route_observer(_background, BACKGROUND_TASK_DURATION, ctx.route_label)(perf_counter() - start)
            except Exception as exc:
                _faults.record("background", exc)

    return __call__


def refresh_in_progress() -> None:
    """Set ``fastapi_requests_in_progress`` from the requests in flight, when the metrics are read.

    A request counts from the moment its route matched until its last body chunk has gone out. Counting
    at read time rather than per request keeps two gauge updates off every request.
    """
    counts: dict[tuple[str, str], int] = {}
    for ctx in snapshot(in_flight):
        route = ctx.route
        if route is not None and not ctx.end:  # background tasks after the last chunk do not count
            key = (ctx.method, route)
            counts[key] = counts.get(key, 0) + 1
    for key in counts:
        if key not in _in_progress:
            _in_progress[key] = REQUESTS_IN_PROGRESS.labels(*key)
    for key, child in list(_in_progress.items()):
        child.set(counts.get(key, 0))


def install_hooks() -> None:
    """Hook ``handle`` on the route classes and time background tasks; a second call does nothing."""
    if _patches.active(COMPONENT):
        return
    register(COMPONENT, REFRESHERS, refresh_in_progress)
    for cls, resolve in _hook_targets():
        _patches.replace(COMPONENT, cls, "handle", _hook(cls.__dict__["handle"], resolve))
    _patches.replace(
        COMPONENT, BackgroundTask, "__call__", _background_call(vars(BackgroundTask)["__call__"])
    )


def remove_hooks() -> None:
    """Undo ``install_hooks``: every class holds its own method again."""
    _patches.undo(COMPONENT)


def handler_kind(endpoint: Any) -> str:
    """``async`` if the endpoint runs on the event loop, ``sync`` if FastAPI runs it in the thread pool."""
    fn = inspect.unwrap(endpoint)
    while isinstance(fn, functools.partial):
        fn = inspect.unwrap(fn.func)
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        return "async"
    if not inspect.isfunction(fn) and not inspect.ismethod(fn):
        call = getattr(fn, "__call__", None)  # noqa: B004
        if call is not None and inspect.iscoroutinefunction(call):
            return "async"
    return "sync"


def _expand(routes: Any) -> Iterator[tuple[Any, str | None, Any, Any]]:
    if _iter_route_contexts is not None:
        for rc in _iter_route_contexts(list(routes)):
            yield rc.original_route, rc.path_format, rc.methods, rc.endpoint
    else:
        for route in routes:
            yield (
                route,
                getattr(route, "path_format", None),
                getattr(route, "methods", None),
                getattr(route, "endpoint", None),
            )


def iter_endpoints(routes: Any, prefix: str = "") -> Iterator[tuple[str, str, str]]:
    """(method, route template, kind) for every HTTP endpoint, into mounted sub-apps."""
    for route, path, methods, endpoint in _expand(routes):
        if isinstance(route, starlette_routing.Mount):
            if route.routes:
                yield from iter_endpoints(route.routes, prefix + _mount_prefix(route))
            continue
        if not methods or endpoint is None or path is None:
            continue
        kind = handler_kind(endpoint)
        for method in sorted(methods):
            if method == "HEAD" and "GET" in methods:
                continue
            yield method, prefix + path, kind


def iter_middlewares(app: Any) -> Iterator[tuple[str, str]]:
    """(name, kind) for each middleware the app and its mounted sub-apps added, outermost first."""
    yield from _own_middlewares(app)
    for route in getattr(app, "routes", None) or ():
        if isinstance(route, starlette_routing.Mount) and route.app is not app:
            yield from iter_middlewares(route.app)


def _own_middlewares(app: Any) -> Iterator[tuple[str, str]]:
    for entry in getattr(app, "user_middleware", []):
        cls = entry.cls
        kwargs = getattr(entry, "kwargs", {}) or {}
        if isinstance(cls, type) and issubclass(cls, BaseHTTPMiddleware):
            dispatch = kwargs.get("dispatch")
            name = getattr(dispatch, "__qualname__", None) or cls.__qualname__
            yield name, "base_http"
        else:
            yield getattr(cls, "__qualname__", repr(cls)), "asgi"
