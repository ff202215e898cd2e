"""Static files served by the app itself (tip 7): responses and bytes, by mount.

Every file the app sends goes through ``FileResponse.__call__``: ``StaticFiles`` mounts,
FastAPI's frontend routes and endpoints that return a ``FileResponse``. The hook counts
the body bytes as they pass to the server, so a range request counts its range, HEAD
counts 0, and a ``pathsend`` counts the file's length. A 304 from ``StaticFiles``
(``NotModifiedResponse``) is a response with no bytes. A 404 or 405 from ``StaticFiles``
serves no file and is not counted.

The ``mount`` label is the mount path for a ``StaticFiles`` mount (``/static``, with the
prefixes of enclosing mounts) or a FastAPI frontend (``/`` for ``app.frontend("/")``), as
``collector._routes`` found it, and the route template for an endpoint's ``FileResponse``
(``/reports/{name}``): both are bounded by the app's routes.

Both hooks go through the patch ledger under the component ``static``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from starlette.responses import FileResponse
from starlette.staticfiles import NotModifiedResponse

from collector import _faults, _patches
from collector._context import RequestContext, current
from collector.metrics import STATIC_BYTES, STATIC_RESPONSES

COMPONENT = "static"

_children: dict[str, tuple[Any, Any]] = {}
_users = 0


def mount_label(ctx: RequestContext) -> str:
    mount = ctx.static_mount
    return mount if mount is not None else ctx.route_label


def _count(ctx: RequestContext, sent: int) -> None:
    try:
        label = mount_label(ctx)
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
            _count(ctx, sent)

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
            _count(ctx, 0)

    return __call__


async def _call_next_in_mro(self: Any, scope: Any, receive: Any, send: Any) -> None:
    await super(NotModifiedResponse, self).__call__(scope, receive, send)


def install() -> None:
    """Count file responses for one more instrumented app."""
    global _users
    _users += 1
    if _patches.active(COMPONENT):
        return
    _patches.replace(COMPONENT, FileResponse, "__call__", _file_response_call(vars(FileResponse)["__call__"]))
    # Inherited __call__ is looked up at call time, so a hook on Response stays in the chain.
    inherited = vars(NotModifiedResponse).get("__call__", _call_next_in_mro)
    _patches.replace(COMPONENT, NotModifiedResponse, "__call__", _not_modified_call(inherited))


def uninstall() -> None:
    """Undo ``install`` once its last app is uninstrumented."""
    global _users
    _users = max(0, _users - 1)
    if not _users:
        _patches.undo(COMPONENT)
