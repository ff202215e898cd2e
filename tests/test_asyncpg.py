"""Raw asyncpg (tip 6 without an ORM): a real uvicorn server and PostgreSQL, checked against its count."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable

import asyncpg
import httpx
import pytest

import collector
from collector import _patches
from collector._context import RequestContext, current
from tests.conftest import POSTGRES_URL, ROOT, Server, free_port, value
from tests.test_database import delta, get_ok, schema, span_events

__all__ = ["schema"]  # the module fixture: ten parents with three children each


@pytest.fixture
def raw_server(serve: Callable[..., Server], schema: str) -> Server:
    env = {"DB_TEST_SCHEMA": schema, "DB_TEST_CLOSED_PORT": str(free_port())}
    return serve("tests.apps.raw_db:app", env=env)


def pg_logged(server: Server) -> int:
    return int(server.get("/pg-logged").json()["statements"])


def test_n_plus_one_through_raw_asyncpg_is_one_per_request_at_the_loop_and_a_join_is_not(
    raw_server: Server, schema: str
) -> None:
    before = raw_server.metrics()
    get_ok(raw_server, "/asyncpg/n-plus-one", times=2)
    get_ok(raw_server, "/asyncpg/joined", times=2)
    after = raw_server.metrics()

    assert delta(before, after, "fastapi_db_n_plus_one_total", route="/asyncpg/n-plus-one") == 2
    assert delta(before, after, "fastapi_db_n_plus_one_total", route="/asyncpg/joined") == 0
    events = span_events(raw_server, "/asyncpg/n-plus-one", "db.n_plus_one")
    assert len(events) == 2
    assert events[0]["db.statement.fingerprint"] == f"SELECT name FROM {schema}.children WHERE parent_id = ?"
    assert events[0]["db.statement.count"] == 10
    assert events[0]["code.location"].startswith("tests/apps/raw_db.py:asyncpg_n_plus_one:")


def test_queries_per_request_equal_the_statements_postgresql_logged(raw_server: Server) -> None:
    expected = {
        "/asyncpg/n-plus-one": (11, 11),
        "/asyncpg/joined": (1, 1),
        # execute twice, fetchval, fetchrow, executemany of 8, two prepared fetches, one cursor: 8 calls
        "/asyncpg/every-kind": (15, 8),
    }
    for route, (statements, calls) in expected.items():
        before, logged = raw_server.metrics(), pg_logged(raw_server)
        get_ok(raw_server, route, times=2)
        after = raw_server.metrics()
        assert pg_logged(raw_server) - logged == 2 * statements, route
        assert delta(before, after, "fastapi_db_queries_per_request_sum", route=route) == 2 * statements, (
            route
        )
        assert delta(before, after, "fastapi_db_queries_per_request_count", route=route) == 2, route
        # a batch is one round trip: one observation of its duration
        assert delta(before, after, "fastapi_db_query_duration_seconds_count") == 2 * calls, route

    before = raw_server.metrics()
    get_ok(raw_server, "/asyncpg/pool-method")  # Pool.fetchval: acquires, runs, releases
    after = raw_server.metrics()
    assert delta(before, after, "fastapi_db_queries_per_request_sum", route="/asyncpg/pool-method") == 1
    assert delta(before, after, "fastapi_db_n_plus_one_total") == 0


def test_asyncpg_pool_of_two_under_twenty_concurrent_requests_shows_acquire_waits(raw_server: Server) -> None:
    get_ok(raw_server, "/asyncpg/hold")
    before = raw_server.metrics()

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=raw_server.url, timeout=30) as client:
            responses = await asyncio.gather(*(client.get("/asyncpg/hold") for _ in range(20)))
        return [r.status_code for r in responses]

    assert asyncio.run(burst()) == [200] * 20
    after = raw_server.metrics()

    assert delta(before, after, "fastapi_db_pool_wait_seconds_count", pool="asyncpg") == 20
    # 20 holds of 50 ms on 2 connections: the last ones wait about 450 ms
    assert delta(before, after, "fastapi_db_pool_wait_seconds_sum", pool="asyncpg") > 0.5
    assert value(after, "fastapi_db_pool_connections", pool="asyncpg", state="size") == 2
    assert value(after, "fastapi_db_pool_connections", pool="asyncpg", state="checked_out") == 0
    assert value(after, "fastapi_db_pool_connections", pool="asyncpg", state="idle") == 2
    assert value(after, "fastapi_db_pool_connections", pool="asyncpg", state="overflow") == 0


def test_database_going_away_raises_the_apps_own_error_and_counters_stay_consistent(
    raw_server: Server,
) -> None:
    get_ok(raw_server, "/asyncpg/joined")
    before = raw_server.metrics()
    with raw_server.client() as client:
        refused = client.get("/asyncpg/down")
        terminated = client.get("/asyncpg/terminate")
        recovered = client.get("/asyncpg/joined")
    after = raw_server.metrics()

    assert (refused.status_code, refused.json()["type"]) == (503, "ConnectionRefusedError")
    assert (terminated.status_code, terminated.json()["type"]) == (503, "InterfaceError")
    assert recovered.status_code == 200
    assert delta(before, after, "fastapi_collector_errors_total") == 0
    # pid, terminate (on its own connection), the recovered join, each timed once; the SELECT 1 after
    # the termination never reached a connection: the pool's proxy refused it, as it does without us
    statements = delta(before, after, "fastapi_db_queries_per_request_sum")
    assert statements == 3
    assert delta(before, after, "fastapi_db_query_duration_seconds_count") == statements
    assert delta(before, after, "fastapi_db_queries_per_request_count", route="/asyncpg/down") == 1
    assert value(after, "fastapi_db_pool_connections", pool="asyncpg", state="checked_out") == 0
    # the admin connection, then the pool replacing the one that was terminated
    assert delta(before, after, "fastapi_resources_created_total", kind="db_connection") == 2


def test_instrumenting_twice_patches_once_and_uninstrument_restores_asyncpg() -> None:
    original = vars(asyncpg.connection.Connection)["fetchval"]

    async def counted() -> int:
        ctx = RequestContext("GET", 0.0)
        token = current.set(ctx)
        try:
            conn = await asyncpg.connect(POSTGRES_URL)
            try:
                await conn.fetchval("SELECT 1")
            finally:
                await conn.close()
        finally:
            current.reset(token)
        return ctx.queries

    collector.instrument_asyncpg()
    collector.instrument_asyncpg()
    try:
        entries = len(_patches.active("asyncpg"))
        collector.instrument_asyncpg()
        assert len(_patches.active("asyncpg")) == entries
        assert asyncio.run(counted()) == 1
    finally:
        collector.uninstrument_asyncpg()
    assert _patches.active() == []
    assert vars(asyncpg.connection.Connection)["fetchval"] is original
    assert asyncio.run(counted()) == 0


def test_an_unsupported_asyncpg_fails_at_attach_time_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asyncpg, "__version__", "0.27.0")
    with pytest.raises(
        RuntimeError, match=r"^collector.instrument_asyncpg supports asyncpg >=0\.30,<1\.0, found 0\.27\.0$"
    ):
        collector.instrument_asyncpg()
    assert _patches.active() == []


def test_importing_and_instrumenting_an_app_imports_no_database_driver() -> None:
    script = (
        "import sys, collector\n"
        "from fastapi import FastAPI\n"
        "collector.instrument(FastAPI())\n"
        "print(sorted(m for m in ('asyncpg', 'psycopg', 'psycopg_pool', 'sqlalchemy') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
