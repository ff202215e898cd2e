"""An app that reads through caches: redis-py (async and sync), fastapi-cache, cashews, a dict."""

from __future__ import annotations

import os
import socket
from typing import Any

import redis
import redis.asyncio
from cashews import Cache
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi_cache import FastAPICache
from fastapi_cache.backends.redis import RedisBackend
from fastapi_cache.decorator import cache as fastapi_cache
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

import collector

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
# Every key this app writes starts with the prefix, so a test can delete exactly its own keys.
PREFIX = os.environ.get("CACHE_APP_PREFIX", "collector-test:cache-app:")

spans = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(spans))
trace.set_tracer_provider(provider)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


users = redis.asyncio.Redis.from_url(REDIS_URL)
collector.instrument_redis(users, name="users")
users_sync = redis.Redis.from_url(REDIS_URL)
collector.instrument_redis(users_sync, name="users-sync")
gone = redis.asyncio.Redis(host="127.0.0.1", port=_closed_port(), retry=Retry(NoBackoff(), 1))
collector.instrument_redis(gone, name="gone")

FastAPICache.init(RedisBackend(redis.asyncio.Redis.from_url(REDIS_URL)), prefix=PREFIX + "fc")
cashews = Cache()
cashews.setup(REDIS_URL)
collector.instrument_cashews(cashews, name="cashews")

local: dict[str, str] = {}

app = FastAPI()


class CacheUnavailable(Exception):
    """The app's own error for a cache it cannot reach."""


@app.exception_handler(CacheUnavailable)
async def cache_unavailable(request: Request, exc: CacheUnavailable) -> Response:
    return JSONResponse({"error": "cache unavailable"}, status_code=503)


@app.get("/users/{user_id}")
async def get_user(user_id: int) -> dict[str, Any]:
    key = f"{PREFIX}user:{user_id}"
    if await users.get(key) is not None:
        return {"id": user_id, "cached": True}
    await users.set(key, "1", ex=60)
    return {"id": user_id, "cached": False}


@app.get("/sync/users/{user_id}")
def get_user_sync(user_id: int) -> dict[str, Any]:
    key = f"{PREFIX}sync-user:{user_id}"
    if users_sync.get(key) is not None:
        return {"id": user_id, "cached": True}
    users_sync.set(key, "1", ex=60)
    return {"id": user_id, "cached": False}


@app.get("/gone/users/{user_id}")
async def get_user_gone(user_id: int) -> dict[str, Any]:
    try:
        value = await gone.get(f"{PREFIX}user:{user_id}")
    except redis.ConnectionError as exc:
        raise CacheUnavailable from exc
    return {"id": user_id, "cached": value is not None}


@app.get("/fastapi-cache/items/{item_id}")
@fastapi_cache(expire=60)
async def get_item_fastapi_cache(item_id: int) -> dict[str, int]:
    return {"id": item_id}


@app.get("/cashews/items/{item_id}")
@cashews(ttl="1m", key=PREFIX + "cashews:{item_id}")
async def get_item_cashews(item_id: int) -> dict[str, int]:
    return {"id": item_id}


@collector.track_cache("local")
def _local_get(key: str) -> str | None:
    return local.get(key)


@app.get("/local/{key}")
def get_local(key: str) -> dict[str, Any]:
    value = _local_get(key)
    if value is None:
        local[key] = value = key.upper()
    return {"key": key, "value": value}


@app.get("/spans")
def finished_spans() -> list[dict[str, Any]]:
    """Cache facts of the finished server spans that carry any."""
    return [
        {
            "route": span.attributes.get("http.route"),
            "hits": span.attributes["collector.cache.hits"],
            "misses": span.attributes["collector.cache.misses"],
        }
        for span in spans.get_finished_spans()
        if span.attributes and "collector.cache.hits" in span.attributes
    ]


app.add_middleware(collector.CacheHeaderMiddleware)
collector.instrument(app, tracing="on")
