"""An app that builds clients per request, the tip-2 mistake, beside one that shares a client.

``collector.instrument`` runs before the client libraries are imported, as in an app whose
routers import them later: their classes are hooked when they are imported.
"""

from __future__ import annotations

import os
import sys

from fastapi import FastAPI

import collector

app = FastAPI()
IMPORTED_AFTER_INSTRUMENT = sorted(name for name in ("aiohttp", "httpx", "redis") if name not in sys.modules)
collector.instrument(app)

import aiohttp  # noqa: E402
import httpx  # noqa: E402
import redis.asyncio  # noqa: E402

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
shared_client = httpx.AsyncClient()


@app.get("/imported-after-instrument")
async def imported_after_instrument() -> list[str]:
    return IMPORTED_AFTER_INSTRUMENT


@app.get("/shared/httpx")
async def shared_httpx() -> dict[str, bool]:
    return {"closed": shared_client.is_closed}


@app.get("/per-request/httpx")
async def per_request_httpx() -> dict[str, bool]:
    async with httpx.AsyncClient() as client:
        return {"closed": client.is_closed}


@app.get("/per-request/aiohttp")
async def per_request_aiohttp() -> dict[str, bool]:
    async with aiohttp.ClientSession() as session:
        return {"closed": session.closed}


@app.get("/per-request/redis")
async def per_request_redis() -> dict[str, bool]:
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        return {"pong": bool(await client.ping())}
    finally:
        await client.aclose()
