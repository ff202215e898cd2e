"""The shop's cache (tip 5): Redis when ``REDIS_URL`` is set, else a dict in the process.

Both count their look-ups as cache ``shop`` in ``fastapi_cache_requests_total``: Redis through
``collector.instrument_redis``, the dict through ``collector.track_cache``.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import collector

NAME = "shop"


class Cache(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl: float) -> None: ...

    async def close(self) -> None: ...


class MemoryCache:
    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, bytes]] = {}

    async def get(self, key: str) -> bytes | None:
        with collector.track_cache(NAME) as lookup:
            entry = self._entries.get(key)
            if entry is not None and entry[0] <= time.monotonic():
                del self._entries[key]
                entry = None
            return lookup.check(entry[1] if entry is not None else None)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._entries[key] = (time.monotonic() + ttl, value)

    async def close(self) -> None:
        self._entries.clear()


class RedisCache:
    def __init__(self, url: str) -> None:
        import redis.asyncio

        self.client: Any = redis.asyncio.Redis.from_url(url)
        collector.instrument_redis(self.client, name=NAME)

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self.client.get(key)
        return value

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self.client.set(key, value, px=max(1, round(ttl * 1000)))

    async def close(self) -> None:
        await self.client.aclose()


def make_cache(redis_url: str | None) -> Cache:
    return RedisCache(redis_url) if redis_url else MemoryCache()
