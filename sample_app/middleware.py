"""Tip 8: the account API's three middlewares, written twice: as ``@app.middleware("http")`` functions
(each one a ``BaseHTTPMiddleware``) and as pure ASGI classes that do the same work."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import Request, Response

logger = logging.getLogger("sample_app.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]
CallNext = Callable[[Request], Awaitable[Response]]


# BaseHTTPMiddleware: each runs the rest of the app in a task and streams the body through memory channels.


async def request_id_http(request: Request, call_next: CallNext) -> Response:
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    response = await call_next(request)
    response.headers["x-request-id"] = request_id
    return response


async def server_timing_http(request: Request, call_next: CallNext) -> Response:
    start = time.perf_counter()
    response = await call_next(request)
    response.headers["server-timing"] = f"app;dur={(time.perf_counter() - start) * 1000:.2f}"
    return response


async def access_log_http(request: Request, call_next: CallNext) -> Response:
    response = await call_next(request)
    logger.info("%s %s %d", request.method, request.url.path, response.status_code)
    return response


BASE_HTTP = (access_log_http, server_timing_http, request_id_http)


# Pure ASGI: one wrapped ``send`` each, nothing between the app and the server.


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
        request_id = given or uuid.uuid4().hex.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id)]
            await send(message)

        await self.app(scope, receive, send_with_id)


class ServerTimingMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def send_with_timing(message: Message) -> None:
            if message["type"] == "http.response.start":
                timing = f"app;dur={(time.perf_counter() - start) * 1000:.2f}".encode()
                message["headers"] = [*message.get("headers", ()), (b"server-timing", timing)]
            await send(message)

        await self.app(scope, receive, send_with_timing)


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, send_noting_status)
        logger.info("%s %s %d", scope["method"], scope["path"], status)


PURE_ASGI = (AccessLogMiddleware, ServerTimingMiddleware, RequestIdMiddleware)
