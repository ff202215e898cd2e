"""A small service that breaks some of the ten tips on purpose, and follows them on twin routes.

``/bad/...`` routes break a tip; ``/good/...`` routes do the same work the right way.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel

import collector

app = FastAPI(title="collector sample app")


class Item(BaseModel):
    id: int
    name: str


def _checksum(rounds: int) -> str:
    digest = b"seed"
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


@app.get("/good/items/{item_id}", response_model=Item)
async def good_item(item_id: int) -> Item:
    await asyncio.sleep(0.005)  # non-blocking I/O
    return Item(id=item_id, name=f"item {item_id}")


@app.get("/bad/items/{item_id}", response_model=Item)
async def bad_item(item_id: int) -> Item:
    time.sleep(0.15)  # tip 9: a blocking call inside an async view stalls every request
    return Item(id=item_id, name=f"item {item_id}")


@app.get("/good/report")
async def good_report() -> dict[str, str]:
    checksum = await asyncio.to_thread(_checksum, 20_000)  # CPU work off the event loop
    return {"checksum": checksum}


@app.get("/bad/report")
def bad_report() -> dict[str, str]:
    time.sleep(0.05)  # tip 1: a sync handler holds a thread-pool token for the whole call
    return {"checksum": _checksum(20_000)}


@app.middleware("http")
async def add_server_timing(request: Request, call_next: Any) -> Any:
    # Tip 8: an @app.middleware("http") function is a BaseHTTPMiddleware, costly on every request.
    start = time.perf_counter()
    response = await call_next(request)
    response.headers["server-timing"] = f"app;dur={(time.perf_counter() - start) * 1000:.1f}"
    return response


collector.instrument(app)
