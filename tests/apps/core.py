"""An app that exercises every request-path signal of the collector core."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, BackgroundTasks, FastAPI, Request, WebSocket
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.routing import Mount

import collector

app = FastAPI()
router = APIRouter(prefix="/api")
sub = FastAPI()


@router.get("/users/{user_id}")
async def get_user(user_id: int) -> dict[str, int]:
    return {"id": user_id}


@sub.get("/things/{thing_id}")
def get_thing(thing_id: int) -> dict[str, int]:
    return {"id": thing_id}


BACKGROUND_SECONDS = 0.3


@app.get("/background")
async def with_background_task(tasks: BackgroundTasks) -> dict[str, bool]:
    tasks.add_task(asyncio.sleep, BACKGROUND_SECONDS)  # runs after the response has gone out
    return {"queued": True}


def failing_task() -> None:
    raise RuntimeError("the background task failed")


@app.get("/background-fail")
async def with_failing_background_task(tasks: BackgroundTasks) -> dict[str, bool]:
    tasks.add_task(failing_task)
    return {"queued": True}


@app.get("/items/{item_id}")
async def get_item(item_id: int) -> dict[str, int]:
    return {"id": item_id}


@app.get("/sync-sleep")
def sync_sleep(seconds: float = 0.2) -> dict[str, float]:
    time.sleep(seconds)
    return {"slept": seconds}


@app.get("/blocking")
async def blocking_view() -> dict[str, bool]:
    time.sleep(0.3)  # the tip-9 mistake: a sync call in an async view
    return {"blocked": True}


@app.get("/async-sleep")
async def async_sleep(seconds: float = 0.2) -> dict[str, float]:
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@app.get("/stream")
async def stream(chunks: int = 5) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        for i in range(chunks):
            await asyncio.sleep(0.01)
            yield f"chunk {i}\n".encode()

    return StreamingResponse(body(), media_type="text/plain")


@app.get("/stream-fail")
async def stream_fail() -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        yield b"first chunk\n"
        raise RuntimeError("the stream failed after its start")

    return StreamingResponse(body(), media_type="text/plain")


@app.post("/upload")
async def upload(request: Request) -> dict[str, int]:
    return {"received": len(await request.body())}


class Item(BaseModel):
    name: str


@app.post("/items")
async def create_item(item: Item) -> dict[str, str]:
    return {"name": item.name}


@app.get("/healthz")
async def healthz() -> dict[str, bool]:
    return {"ok": True}


async def silent(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app that returns without sending a response."""


@app.get("/raise")
async def raise_error() -> None:
    raise RuntimeError("the handler failed")


@app.websocket("/ws")
async def websocket_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    message = await websocket.receive_text()
    await websocket.send_text(message.upper())
    await websocket.close()


class ExplodingMiddleware:
    """Raises before the app for requests that carry ``x-explode``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and any(k == b"x-explode" for k, _ in scope["headers"]):
            raise ValueError("middleware exploded")
        await self.app(scope, receive, send)


async def timing_header(request: Request, call_next: Any) -> Any:
    response = await call_next(request)
    response.headers["x-handled"] = "1"
    return response


app.include_router(router)
app.mount("/sub", sub)
app.router.routes.append(Mount("/silent", app=silent))
app.add_middleware(ExplodingMiddleware)
app.add_middleware(BaseHTTPMiddleware, dispatch=timing_header)
collector.instrument(app)
