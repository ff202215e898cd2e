"""uninstrument() of the last app restores the interpreter: every patched attribute is the original."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio.to_thread
import fastapi.dependencies.utils
import fastapi.routing
import httpx
import redis
import redis.asyncio
from fastapi import FastAPI
from sqlalchemy import create_engine
from starlette import responses, routing

import collector
from collector import _patches
from collector import _routes as routes
from collector.metrics import REFRESHERS
from tests.conftest import REDIS_URL


def _attributes(engine: Any, client: redis.Redis) -> dict[str, Any]:
    import asyncpg
    import psycopg
    import psycopg_pool
    from sqlalchemy.engine import Engine

    owners: dict[str, tuple[Any, tuple[str, ...]]] = {
        "anyio.to_thread": (anyio.to_thread, ("run_sync",)),
        "fastapi.routing": (fastapi.routing, ("solve_dependencies", "serialize_response")),
        "fastapi.dependencies.utils": (fastapi.dependencies.utils, ("request_body_to_args",)),
        "Route": (routing.Route, ("handle",)),
        "Mount": (routing.Mount, ("handle",)),
        "FileResponse": (responses.FileResponse, ("__call__",)),
        "JSONResponse": (responses.JSONResponse, ("render",)),
        "Engine": (Engine, ("__init__",)),
        "engine": (engine, ("dispose",)),
        "dialect": (engine.dialect, ("do_execute", "do_execute_no_params", "do_executemany", "initialize")),
        "httpx.Client": (httpx.Client, ("__init__",)),
        "redis.Redis": (redis.Redis, ("__init__",)),
        "redis.asyncio.Redis": (redis.asyncio.Redis, ("__init__",)),
        "asyncpg.Connection": (asyncpg.connection.Connection, ("execute", "fetch", "executemany")),
        "asyncpg.Connection init": (asyncpg.connection.Connection, ("__init__",)),
        "asyncpg.Pool": (asyncpg.pool.Pool, ("_acquire",)),
        "psycopg.Cursor": (psycopg.Cursor, ("execute", "executemany", "stream", "copy")),
        "psycopg.AsyncCursor": (psycopg.AsyncCursor, ("execute", "executemany")),
        "psycopg_pool.ConnectionPool": (psycopg_pool.ConnectionPool, ("getconn",)),
    }
    found = {
        f"{label}.{name}": vars(owner).get(name, "<inherited>")
        for label, (owner, names) in owners.items()
        for name in names
    }
    callbacks = client.response_callbacks
    found["redis callbacks"] = {command: callbacks.get(command) for command in ("GET", "MGET")}
    found["sys.meta_path"] = list(sys.meta_path)
    found["route exit hooks"] = list(routes.on_route_exit)
    found["metric refreshers"] = list(REFRESHERS)
    return found


def test_uninstrument_of_the_last_app_restores_every_patched_attribute(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    client = redis.Redis.from_url(REDIS_URL)
    before = _attributes(engine, client)
    first, second = FastAPI(), FastAPI()
    collector.instrument(first)
    collector.instrument(second)
    collector.instrument_engine(engine)
    collector.instrument_redis(client)
    collector.instrument_asyncpg()
    collector.instrument_psycopg()
    collector.record_cache("uninstrument-test", hit=True)  # the cache's span hook joins the route hooks
    patched = _attributes(engine, client)
    assert patched["route exit hooks"] != before["route exit hooks"]
    assert [name for name in before if patched[name] is not before[name]] != []
    collector.uninstrument(first)
    assert _patches.active("asyncpg") != []  # one app is still instrumented: everything stays
    collector.uninstrument(second)
    after = _attributes(engine, client)

    assert _patches.active() == []
    assert [name for name in before if after[name] is not before[name] and after[name] != before[name]] == []
    for name, value in before.items():
        if not isinstance(value, dict | list):
            assert after[name] is value, name
    client.close()


def test_instrumenting_again_after_a_full_uninstrument_works_like_the_first_time(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    for _ in range(2):
        app = FastAPI()
        collector.instrument(app)
        collector.instrument_engine(engine)
        collector.instrument_asyncpg()
        assert {entry.component.split("/")[0] for entry in _patches.active()} >= {
            "database",
            "asyncpg",
            "sql",
            "threadpool",
        }
        collector.uninstrument(app)
        assert _patches.active() == []
