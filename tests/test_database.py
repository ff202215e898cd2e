"""Database signals (tips 2 and 6): a real uvicorn server on a real PostgreSQL, via asyncpg and psycopg."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool

import collector
from collector import _database as database
from collector import _patches, _sql, metrics
from collector import _routes as routes
from collector._context import RequestContext, current
from tests.conftest import POSTGRES_URL, Samples, Server, free_port, scrape_until, series, value

ASYNCPG_POOL = "postgresql+asyncpg://" + POSTGRES_URL.split("@", 1)[1]  # the URL without its user


@pytest.fixture(scope="module")
def schema() -> Iterator[str]:
    """Ten parents with three children each, in a schema of this test run only."""
    name = f"collector_db_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
        conn.execute(f"CREATE TABLE {name}.parents (id integer PRIMARY KEY, name text NOT NULL)")
        conn.execute(
            f"CREATE TABLE {name}.children (id serial PRIMARY KEY,"
            f" parent_id integer NOT NULL REFERENCES {name}.parents (id), name text NOT NULL)"
        )
        conn.execute(f"INSERT INTO {name}.parents SELECT i, 'parent ' || i FROM generate_series(1, 10) i")
        conn.execute(
            f"INSERT INTO {name}.children (parent_id, name)"
            f" SELECT p, 'child ' || p || '.' || c FROM generate_series(1, 10) p, generate_series(1, 3) c"
        )
    yield name
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {name} CASCADE")


@pytest.fixture
def app_server(serve: Callable[..., Server], schema: str) -> Server:
    return serve("tests.apps.db:app", env={"DB_TEST_SCHEMA": schema, "DB_TEST_CLOSED_PORT": str(free_port())})


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def get_ok(server: Server, path: str, times: int = 1) -> None:
    with server.client() as client:
        for _ in range(times):
            response = client.get(path)
            assert response.status_code == 200, response.text


def db_series(samples: Samples) -> set[tuple[str, frozenset[tuple[str, str]]]]:
    return {key for key in samples if key[0].startswith("fastapi_db_")}


def span_events(server: Server, route: str, name: str) -> list[dict[str, Any]]:
    spans = server.get("/spans").json()
    return [e["attributes"] for s in spans if s["route"] == route for e in s["events"] if e["name"] == name]


def test_n_plus_one_is_detected_once_per_request_and_selectinload_is_not(
    app_server: Server, schema: str
) -> None:
    before = app_server.metrics()
    get_ok(app_server, "/parents/n-plus-one", times=3)
    get_ok(app_server, "/parents/selectin", times=3)
    after = app_server.metrics()

    assert delta(before, after, "fastapi_db_n_plus_one_total", route="/parents/n-plus-one") == 3
    assert value(after, "fastapi_db_n_plus_one_total", route="/parents/selectin") == 0
    assert delta(before, after, "fastapi_db_queries_per_request_sum", route="/parents/selectin") == 6
    events = span_events(app_server, "/parents/n-plus-one", "db.n_plus_one")
    assert len(events) == 3
    for attributes in events:
        assert attributes["db.statement.count"] == 10
        assert (
            f"FROM {schema}.children WHERE {schema}.children.parent_id = ?"
            in attributes["db.statement.fingerprint"]
        )
        assert attributes["code.location"].startswith("tests/apps/db.py:parents_n_plus_one:")
    assert span_events(app_server, "/parents/selectin", "db.n_plus_one") == []
    # one log line for the route, however many requests repeat it within a minute
    assert len(re.findall(r"N\+1 queries on GET /parents/n-plus-one", app_server.output())) == 1


def test_queries_per_request_sum_equals_the_statements_each_route_ran(app_server: Server) -> None:
    before = app_server.metrics()
    get_ok(app_server, "/parents/n-plus-one", times=2)
    get_ok(app_server, "/parents/selectin", times=2)
    get_ok(app_server, "/sync/parents/n-plus-one", times=2)  # psycopg, sync endpoint in the thread pool
    get_ok(app_server, "/no-db", times=3)
    after = app_server.metrics()

    expected = {
        "/parents/n-plus-one": (2, 22),
        "/parents/selectin": (2, 4),
        "/sync/parents/n-plus-one": (2, 22),
    }
    expected["/no-db"] = (3, 0)
    for route, (requests, queries) in expected.items():
        assert delta(before, after, "fastapi_db_queries_per_request_count", route=route) == requests, route
        assert delta(before, after, "fastapi_db_queries_per_request_sum", route=route) == queries, route
    assert value(after, "fastapi_db_queries_per_request_bucket", route="/no-db", le="0.0") == 3
    assert delta(before, after, "fastapi_db_query_duration_seconds_count", operation="SELECT") == 48
    assert delta(before, after, "fastapi_db_n_plus_one_total", route="/sync/parents/n-plus-one") == 2


def test_small_pool_under_concurrent_requests_shows_checkout_waits(app_server: Server) -> None:
    get_ok(app_server, "/hold")
    before = app_server.metrics()

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=app_server.url, timeout=30) as client:
            responses = await asyncio.gather(
                *(client.get("/hold", params={"seconds": 0.05}) for _ in range(20))
            )
        return [r.status_code for r in responses]

    assert asyncio.run(burst()) == [200] * 20
    after = app_server.metrics()

    waits = delta(before, after, "fastapi_db_pool_wait_seconds_count", pool=ASYNCPG_POOL)
    waited = delta(before, after, "fastapi_db_pool_wait_seconds_sum", pool=ASYNCPG_POOL)
    assert waits == 20
    # 20 holds of 50 ms on 2 connections: the last ones queue for about 450 ms
    assert waited > 0.5
    assert value(after, "fastapi_db_pool_connections", pool=ASYNCPG_POOL, state="size") == 2
    assert value(after, "fastapi_db_pool_connections", pool=ASYNCPG_POOL, state="checked_out") == 0
    assert value(after, "fastapi_db_pool_connections", pool=ASYNCPG_POOL, state="idle") == 2
    assert value(after, "fastapi_db_pool_connections", pool=ASYNCPG_POOL, state="overflow") == 0


def test_engine_per_request_is_told_apart_from_a_reused_engine(app_server: Server) -> None:
    get_ok(app_server, "/reused")
    before = app_server.metrics()
    get_ok(app_server, "/reused", times=5)
    middle = app_server.metrics()
    get_ok(app_server, "/engine-per-request", times=5)
    after = app_server.metrics()

    assert delta(before, middle, "fastapi_resources_created_total", kind="db_engine") == 0
    assert delta(before, middle, "fastapi_resources_created_total", kind="db_connection") == 0
    assert delta(middle, after, "fastapi_resources_created_total", kind="db_engine") == 5
    assert delta(middle, after, "fastapi_resources_created_total", kind="db_connection") == 5


def test_slow_query_is_counted_on_its_route_with_its_fingerprint(app_server: Server) -> None:
    before = app_server.metrics()
    get_ok(app_server, "/slow")
    get_ok(app_server, "/hold")  # 50 ms: under the 200 ms threshold the app set
    after = app_server.metrics()

    assert delta(before, after, "fastapi_db_slow_queries_total", route="/slow") == 1
    assert delta(before, after, "fastapi_db_slow_queries_total") == 1
    events = span_events(app_server, "/slow", "db.slow_query")
    assert [e["db.statement.fingerprint"] for e in events] == ["SELECT pg_sleep(?)"]
    assert events[0]["db.duration_seconds"] >= 0.3


def test_database_going_away_raises_the_apps_own_error_and_counters_stay_consistent(
    app_server: Server,
) -> None:
    get_ok(app_server, "/reused")
    before = app_server.metrics()
    with app_server.client() as client:
        refused = [client.get("/down") for _ in range(2)]
        terminated = client.get("/terminate")
        recovered = client.get("/reused")
    after = app_server.metrics()

    # the app's own exception handler saw the driver's error, unchanged by the listeners
    assert [r.status_code for r in refused] == [503, 503]
    assert refused[0].json()["type"] == "ConnectionRefusedError"
    assert terminated.status_code == 503
    assert terminated.json()["invalidated"] is True  # SQLAlchemy saw a disconnect and dropped the connection
    assert recovered.status_code == 200
    assert delta(before, after, "fastapi_collector_errors_total") == 0
    # every statement tried was timed exactly once, failed ones included
    statements = delta(before, after, "fastapi_db_queries_per_request_sum")
    assert statements == 4  # pid, terminate, the failed SELECT 1, then the recovered SELECT 1
    assert delta(before, after, "fastapi_db_query_duration_seconds_count") == statements
    assert delta(before, after, "fastapi_db_queries_per_request_count", route="/down") == 2
    assert value(after, "fastapi_db_pool_connections", pool=ASYNCPG_POOL, state="checked_out") == 0
    assert value(after, "fastapi_db_pool_connections", pool="down", state="checked_out") == 0
    # /terminate's second connection, then one reconnect: a disconnect invalidates the whole pool
    assert delta(before, after, "fastapi_resources_created_total", kind="db_connection") == 2


def test_ten_thousand_distinct_literals_add_no_series(app_server: Server) -> None:
    get_ok(app_server, "/literals?n=10")
    before = app_server.metrics()
    get_ok(app_server, "/literals?n=10000")
    after = app_server.metrics()

    assert db_series(after) == db_series(before)
    assert delta(before, after, "fastapi_db_queries_per_request_sum", route="/literals") == 10_000
    # the same statement shape ten thousand times is one N+1, not ten thousand fingerprints
    assert delta(before, after, "fastapi_db_n_plus_one_total", route="/literals") == 1
    [event] = span_events(app_server, "/literals", "db.n_plus_one")[-1:]
    assert event["db.statement.fingerprint"] == "SELECT ? AS value, ? AS label"
    assert event["db.statement.count"] == 10_000


def test_instrumenting_twice_counts_once_and_uninstrumenting_stops_counting(app_server: Server) -> None:
    before = app_server.metrics()
    with app_server.client() as client:
        assert client.post("/admin/instrument").status_code == 200
    get_ok(app_server, "/parents/selectin")
    twice = app_server.metrics()
    with app_server.client() as client:
        assert client.post("/admin/uninstrument").status_code == 200
    uninstrumented = app_server.metrics()
    get_ok(app_server, "/parents/n-plus-one")
    get_ok(app_server, "/engine-per-request")
    after = app_server.metrics()

    assert delta(before, twice, "fastapi_db_queries_per_request_sum", route="/parents/selectin") == 2
    assert delta(before, twice, "fastapi_db_query_duration_seconds_count") == 2
    assert delta(before, twice, "fastapi_resources_created_total", kind="db_engine") == 0
    assert delta(uninstrumented, after, "fastapi_db_query_duration_seconds_count") == 0
    assert delta(uninstrumented, after, "fastapi_db_queries_per_request_count") == 0
    assert delta(uninstrumented, after, "fastapi_db_n_plus_one_total") == 0
    assert delta(uninstrumented, after, "fastapi_resources_created_total") == 0
    assert series(twice, "fastapi_db_pool_connections") != []
    assert series(uninstrumented, "fastapi_db_pool_connections") == []


def test_pool_gauges_under_gunicorn_come_from_each_worker_heartbeat(
    serve: Callable[..., Server], schema: str, multiproc_dir: str
) -> None:
    # In multi-process mode the scrape reads files, so each worker writes its pool's counts on its heartbeat.
    env = {
        "DB_TEST_SCHEMA": schema,
        "DB_TEST_CLOSED_PORT": str(free_port()),
        "PROMETHEUS_MULTIPROC_DIR": multiproc_dir,
        "COLLECTOR_PROCESS_SAMPLE_INTERVAL": "0.1",
    }
    server = serve("tests.apps.db:app", server="gunicorn", workers=2, env=env, ready_path="/no-db")
    for _ in range(6):
        with server.client() as client:  # a new connection each time: gunicorn spreads them over workers
            assert client.get("/parents/selectin").status_code == 200
    time.sleep(0.5)  # the workers write their pools' counts on their next heartbeat
    after = scrape_until(server.metrics, "fastapi_workers", 2)  # the second worker may still be booting
    assert value(after, "fastapi_workers") == 2
    # pool_size=2 in each of the two live workers, summed; nothing checked out once the requests are done
    assert value(after, "fastapi_db_pool_connections", pool=ASYNCPG_POOL, state="size") == 4
    assert value(after, "fastapi_db_pool_connections", pool=ASYNCPG_POOL, state="checked_out") == 0
    assert value(after, "fastapi_db_pool_connections", pool=ASYNCPG_POOL, state="overflow") == 0


def queries_counted_on_a_request(engine: Any) -> int:
    """Run one statement as if inside a request; how many statements that request counted."""
    ctx = RequestContext("GET", 0.0)
    token = current.set(ctx)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        current.reset(token)
    return ctx.queries


WRAPPED_DIALECT_METHODS = {"do_execute", "do_execute_no_params", "do_executemany", "initialize"}


def test_uninstrument_removes_every_listener_and_wrapper(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    original_init = Engine.__dict__["__init__"]
    collector.instrument_engine(engine)
    collector.instrument_engine(engine)
    hooks = database._engines[engine]
    try:
        assert set(vars(engine.dialect)) >= WRAPPED_DIALECT_METHODS
        assert "dispose" in vars(engine)
        # no engine-level listener: it would make every Connection join the engine's dispatcher
        assert not engine._has_events
        assert event.contains(Pool, "connect", database._count_connection)
        assert routes.on_route_exit.count(_sql._on_route_exit) == 1
        assert metrics.REFRESHERS.count(_sql._refresh) == 1
        engine.dispose()  # the new pool gets its own wrapper
        assert engine.pool in hooks.wrapped_pools
        assert queries_counted_on_a_request(engine) == 1
    finally:
        collector.uninstrument_engine(engine)

    assert _patches.active() == []
    assert not WRAPPED_DIALECT_METHODS & set(vars(engine.dialect))
    assert "dispose" not in vars(engine)
    assert not event.contains(Pool, "connect", database._count_connection)
    assert _sql._on_route_exit not in routes.on_route_exit
    assert _sql._refresh not in metrics.REFRESHERS
    assert Engine.__dict__["__init__"] is original_init
    assert "get" not in vars(engine.pool._pool)  # type: ignore[attr-defined]
    engine.dispose()
    assert queries_counted_on_a_request(engine) == 0


def test_uninstrumenting_one_engine_keeps_the_other_instrumented(tmp_path: Path) -> None:
    first = create_engine(f"sqlite:///{tmp_path / 'first.sqlite'}")
    second = create_engine(f"sqlite:///{tmp_path / 'second.sqlite'}")
    collector.instrument_engine(first)
    collector.instrument_engine(second)
    try:
        collector.uninstrument_engine(first)
        assert queries_counted_on_a_request(first) == 0
        assert queries_counted_on_a_request(second) == 1
    finally:
        collector.uninstrument_engine(second)
    assert _patches.active() == []


def test_statement_cache_stays_bounded_under_distinct_literals() -> None:
    engine = create_engine("sqlite://")
    collector.instrument_engine(engine)
    try:
        with engine.connect() as conn:
            for i in range(_sql._CACHE_MAX + 500):
                conn.exec_driver_sql(f"SELECT {i}")
    finally:
        collector.uninstrument_engine(engine)
    assert 0 < len(_sql._statements) <= _sql._CACHE_MAX
    assert set(_sql._durations) <= {*_sql.OPERATIONS, "other"}


def test_an_executemany_counts_each_statement_and_is_one_round_trip_not_an_n_plus_one(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id integer PRIMARY KEY)")
    collector.instrument_engine(engine, n_plus_one_threshold=2)
    ctx = RequestContext("GET", 0.0)
    token = current.set(ctx)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t (id) VALUES (:id)"), [{"id": i} for i in range(8)])
    finally:
        current.reset(token)
        collector.uninstrument_engine(engine)
    assert ctx.queries == 8
    assert ctx.query_fingerprints == {"INSERT INTO t (id) VALUES (?)": 1}
    assert ctx.query_locations is None  # one call, however many rows: no N+1


def test_sqlalchemy_before_2_is_refused_at_attach_time() -> None:
    with pytest.raises(RuntimeError, match=r"SQLAlchemy 2\.x, found 1\.4\.54"):
        database.check_version("1.4.54")
    database.check_version("2.0.36")


def test_instrumenting_something_that_is_not_an_engine_fails_at_once() -> None:
    with pytest.raises(TypeError, match="Engine or AsyncEngine"):
        collector.instrument_engine(object())


def test_a_batched_statement_counts_the_statements_it_ran_and_is_not_an_n_plus_one(
    app_server: Server,
) -> None:
    before = app_server.metrics()
    with app_server.client() as client:
        for path in ("/children/orm-delete", "/children/executemany"):
            response = client.post(path)
            assert response.status_code == 200, response.text
    after = app_server.metrics()

    # the ORM's SELECT of 8 children, then its flush: one executemany of 8 DELETEs
    assert delta(before, after, "fastapi_db_queries_per_request_sum", route="/children/orm-delete") == 9
    assert delta(before, after, "fastapi_db_queries_per_request_sum", route="/children/executemany") == 8
    # a batch is one round trip, whatever its size: never an N+1 by itself
    assert delta(before, after, "fastapi_db_n_plus_one_total") == 0
    assert delta(before, after, "fastapi_db_query_duration_seconds_count", operation="DELETE") == 1
    assert delta(before, after, "fastapi_db_query_duration_seconds_count", operation="UPDATE") == 1


def test_an_email_in_a_comment_or_literal_never_reaches_the_n_plus_one_log_or_span(
    app_server: Server,
) -> None:
    before = app_server.metrics()
    get_ok(app_server, "/hostile-comment")
    after = app_server.metrics()

    assert delta(before, after, "fastapi_db_n_plus_one_total", route="/hostile-comment") == 1
    [event] = span_events(app_server, "/hostile-comment", "db.n_plus_one")
    assert event["db.statement.fingerprint"] == "SELECT ? WHERE ? = ?"
    assert "N+1 queries on GET /hostile-comment" in app_server.output()
    assert "alice" not in app_server.output()
