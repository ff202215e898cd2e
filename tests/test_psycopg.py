"""Raw psycopg 3 and psycopg_pool (tip 6 without an ORM): a real uvicorn server and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import psycopg
import pytest

import collector
from collector import _patches
from collector._context import RequestContext, current
from tests.conftest import POSTGRES_URL, Server, free_port, value
from tests.test_database import delta, get_ok, schema, span_events

__all__ = ["schema"]  # the module fixture: ten parents with three children each


@pytest.fixture
def raw_server(serve: Callable[..., Server], schema: str) -> Server:
    env = {"DB_TEST_SCHEMA": schema, "DB_TEST_CLOSED_PORT": str(free_port())}
    return serve("tests.apps.raw_db:app", env=env)


def pg_logged(server: Server) -> int:
    return int(server.get("/pg-logged").json()["statements"])


def test_n_plus_one_through_raw_psycopg_is_one_per_request_at_the_loop_and_a_join_is_not(
    raw_server: Server, schema: str
) -> None:
    before = raw_server.metrics()
    get_ok(raw_server, "/psycopg/n-plus-one", times=2)
    get_ok(raw_server, "/psycopg/sync-n-plus-one", times=2)  # sync endpoint, in the thread pool
    get_ok(raw_server, "/psycopg/joined", times=2)
    after = raw_server.metrics()

    assert delta(before, after, "fastapi_db_n_plus_one_total", route="/psycopg/n-plus-one") == 2
    assert delta(before, after, "fastapi_db_n_plus_one_total", route="/psycopg/sync-n-plus-one") == 2
    assert delta(before, after, "fastapi_db_n_plus_one_total", route="/psycopg/joined") == 0
    events = span_events(raw_server, "/psycopg/n-plus-one", "db.n_plus_one")
    assert len(events) == 2
    assert events[0]["db.statement.fingerprint"] == f"SELECT name FROM {schema}.children WHERE parent_id = ?"
    assert events[0]["db.statement.count"] == 10
    assert events[0]["code.location"].startswith("tests/apps/raw_db.py:psycopg_n_plus_one:")
    [sync_event, _] = span_events(raw_server, "/psycopg/sync-n-plus-one", "db.n_plus_one")
    assert sync_event["code.location"].startswith("tests/apps/raw_db.py:psycopg_sync_n_plus_one:")


def test_queries_per_request_equal_the_statements_postgresql_logged(raw_server: Server) -> None:
    expected = {
        "/psycopg/n-plus-one": (11, 11),
        "/psycopg/sync-n-plus-one": (11, 11),
        "/psycopg/joined": (1, 1),
        # execute, executemany of 8, two in a pipeline, one in a transaction: 5 calls
        "/psycopg/every-kind": (12, 5),
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


def test_psycopg_pool_of_two_under_twenty_concurrent_requests_shows_acquire_waits(raw_server: Server) -> None:
    get_ok(raw_server, "/psycopg/hold")
    before = raw_server.metrics()

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=raw_server.url, timeout=30) as client:
            responses = await asyncio.gather(*(client.get("/psycopg/hold") for _ in range(20)))
        return [r.status_code for r in responses]

    assert asyncio.run(burst()) == [200] * 20
    after = raw_server.metrics()

    assert delta(before, after, "fastapi_db_pool_wait_seconds_count", pool="psycopg") == 20
    assert delta(before, after, "fastapi_db_pool_wait_seconds_sum", pool="psycopg") > 0.5
    # the app's sync pool shares the label but served nothing yet: only the async pool of 2 is known
    assert value(after, "fastapi_db_pool_connections", pool="psycopg", state="size") == 2
    assert value(after, "fastapi_db_pool_connections", pool="psycopg", state="checked_out") == 0
    assert value(after, "fastapi_db_pool_connections", pool="psycopg", state="idle") == 2
    assert value(after, "fastapi_db_pool_connections", pool="psycopg", state="overflow") == 0


def test_database_going_away_raises_the_apps_own_error_and_counters_stay_consistent(
    raw_server: Server,
) -> None:
    get_ok(raw_server, "/psycopg/joined")
    get_ok(raw_server, "/psycopg/sync-n-plus-one")  # both pools now known under the one label
    before = raw_server.metrics()
    with raw_server.client() as client:
        refused = client.get("/psycopg/down")
        terminated = client.get("/psycopg/terminate")
        recovered = client.get("/psycopg/joined")
    after = raw_server.metrics()

    assert (refused.status_code, refused.json()["type"]) == (503, "OperationalError")
    assert (terminated.status_code, terminated.json()["type"]) == (503, "AdminShutdown")
    assert recovered.status_code == 200
    assert delta(before, after, "fastapi_collector_errors_total") == 0
    # pid, terminate (on its own connection), the SELECT 1 that failed, the recovered join: each timed once
    statements = delta(before, after, "fastapi_db_queries_per_request_sum")
    assert statements == 4
    assert delta(before, after, "fastapi_db_query_duration_seconds_count") == statements
    assert value(after, "fastapi_db_pool_connections", pool="psycopg", state="size") == 4  # summed
    # the terminated connection's replacement is made in the background; until then it counts as out
    deadline = time.monotonic() + 15
    while value(after, "fastapi_db_pool_connections", pool="psycopg", state="checked_out") and (
        time.monotonic() < deadline
    ):
        time.sleep(0.2)
        after = raw_server.metrics()
    assert value(after, "fastapi_db_pool_connections", pool="psycopg", state="checked_out") == 0
    # the admin connection, and the pool's replacement of the one terminated (made in the background)
    assert delta(before, after, "fastapi_resources_created_total", kind="db_connection") >= 1


def test_instrumenting_twice_patches_once_and_uninstrument_restores_psycopg() -> None:
    original = vars(psycopg.Cursor)["execute"]

    def counted() -> int:
        ctx = RequestContext("GET", 0.0)
        token = current.set(ctx)
        try:
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute("SELECT 1")
                with conn.cursor() as cursor:
                    cursor.executemany("SELECT %s::int", [(1,), (2,), (3,)])
        finally:
            current.reset(token)
        return ctx.queries

    collector.instrument_psycopg()
    try:
        entries = len(_patches.active("psycopg"))
        collector.instrument_psycopg()
        assert len(_patches.active("psycopg")) == entries
        assert counted() == 4
    finally:
        collector.uninstrument_psycopg()
    assert _patches.active() == []
    assert vars(psycopg.Cursor)["execute"] is original
    assert counted() == 0


def test_an_unsupported_psycopg_fails_at_attach_time_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psycopg, "__version__", "3.0.18")
    with pytest.raises(
        RuntimeError, match=r"^collector.instrument_psycopg supports psycopg >=3\.1,<4\.0, found 3\.0\.18$"
    ):
        collector.instrument_psycopg()
    assert _patches.active() == []
