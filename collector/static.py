"""Static files served by the app itself (tip 7): responses and bytes, by mount.

Every file the app sends goes through ``FileResponse.__call__``: ``StaticFiles`` mounts,
FastAPI's frontend routes and endpoints that return a ``FileResponse``. The hook counts
the body bytes as they pass to the server, so a range request counts its range, HEAD
counts 0, and a ``pathsend`` counts the file's length. A 304 from ``StaticFiles``
(``NotModifiedResponse``) is a response with no bytes. A 404 or 405 from ``StaticFiles``
serves no file and is not counted.

The ``mount`` label is the mount path for a ``StaticFiles`` mount (``/static``, with the
prefixes of enclosing mounts), and the route template for an endpoint's ``FileResponse``
(``/reports/{name}``): both are bounded by the app's routes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from starlette.responses import FileResponse
from starlette.staticfiles import NotModifiedResponse, StaticFiles

from collector import _faults
from collector.context import RequestContext, current
from collector.metrics import STATIC_BYTES, STATIC_RESPONSES

_MOUNT_SUFFIX = "/{path}"  # collector.routes names a leaf mount "<prefix>/{path}"

_children: dict[str, tuple[Any, Any]] = {}
_original_file_call: Callable[..., Any] | None = None
_original_not_modified_call: Callable[..., Any] | None = None  # only if the class has its own
_users = 0


def mount_label(ctx: RequestContext, scope: Any) -> str:
    route = ctx.route_label
    if isinstance(scope.get("endpoint"), StaticFiles):
        return route.removesuffix(_MOUNT_SUFFIX)
    return route


def _count(ctx: RequestContext, scope: Any, sent: int) -> None:
    try:
        label = mount_label(ctx, scope)
        children = _children.get(label)
        if children is None:
            children = _children[label] = (STATIC_RESPONSES.labels(label), STATIC_BYTES.labels(label))
        children[0].inc()
        if sent:
            children[1].inc(sent)
    except Exception as exc:
        _faults.record("static", exc)


def _file_response_call(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
        ctx = current.get()
        if ctx is None or scope["type"] != "http":
            await original(self, scope, receive, send)
            return
        sent = 0
        length = 0

        async def counting_send(message: Any) -> None:
            nonlocal sent, length
            kind = message["type"]
            if kind == "http.response.body":
                sent += len(message.get("body", b""))
            elif kind == "http.response.start":
                length = _content_length(message.get("headers", ()))
            elif kind == "http.response.pathsend":  # the server sends the whole file itself
                sent += length
            await send(message)

        try:
            await original(self, scope, receive, counting_send)
        finally:
            _count(ctx, scope, sent)

    return __call__


def _content_length(headers: Any) -> int:
    for key, value in headers:
        if key == b"content-length" and value.isdigit():
            return int(value)
    return 0


def _not_modified_call(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
        await original(self, scope, receive, send)
        ctx = current.get()
        if ctx is not None and scope["type"] == "http":
            _count(ctx, scope, 0)

    return __call__


async def _call_next_in_mro(self: Any, scope: Any, receive: Any, send: Any) -> None:
    await super(NotModifiedResponse, self).__call__(scope, receive, send)


def install() -> None:
    """Count file responses for one more instrumented app."""
    global _users, _original_file_call, _original_not_modified_call
    _users += 1
    if _original_file_call is None:
        _original_file_call = vars(FileResponse)["__call__"]
        _original_not_modified_call = vars(NotModifiedResponse).get("__call__")
        FileResponse.__call__ = _file_response_call(_original_file_call)  # type: ignore[method-assign]
        # Inherited __call__ is looked up at call time, so a hook on Response stays in the chain.
        inherited = _original_not_modified_call or _call_next_in_mro
        NotModifiedResponse.__call__ = _not_modified_call(inherited)  # type: ignore[method-assign]


def uninstall() -> None:
    """Undo ``install`` once its last app is uninstrumented."""
    global _users, _original_file_call, _original_not_modified_call
    _users = max(0, _users - 1)
    if _users or _original_file_call is None:
        return
    FileResponse.__call__ = _original_file_call  # type: ignore[method-assign]
    if _original_not_modified_call is not None:
        NotModifiedResponse.__call__ = _original_not_modified_call  # type: ignore[method-assign]
    else:
        del NotModifiedResponse.__call__
    _original_file_call = _original_not_modified_call = None
