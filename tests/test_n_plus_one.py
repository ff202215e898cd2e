"""The N+1 table: per (route, fingerprint), bounded, in the profile listing, cleared with the last app."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

import collector
from collector import _n_plus_one as table
from tests.conftest import POSTGRES_URL
from tests.test_database import schema

__all__ = ["schema"]  # the module fixture: ten parents with three children each

TOKEN = "n-plus-one-test-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PATH = "/_collector/profiles"


@pytest.fixture(autouse=True)
def empty_table() -> Iterator[None]:
    table.clear()
    yield
    table.clear()


def test_a_fingerprint_is_counted_per_route_with_its_most_repeats_and_latest_location() -> None:
    table.record("/a", "SELECT ?", 10, "app.py:a:1")
    table.record("/a", "SELECT ?", 30, "app.py:a:2")
    table.record("/a", "SELECT ?", 20, "app.py:a:3")
    table.record("/b", "SELECT ?", 5, "app.py:b:1")
    rows = {row["route"]: row for row in table.entries()}
    assert rows["/a"]["requests"] == 3 and rows["/a"]["max_repeats"] == 30
    assert rows["/a"]["location"] == "app.py:a:3"
    assert rows["/b"]["requests"] == 1
    assert [row["route"] for row in table.entries()] == ["/a", "/b"]  # the most requests first


def test_the_table_is_bounded_and_evicts_the_least_recently_seen() -> None:
    for i in range(table.MAX_ENTRIES):
        table.record(f"/r{i}", "SELECT ?", 5, "app.py:f:1")
    table.record("/r0", "SELECT ?", 5, "app.py:f:1")  # seen again: now the most recent
    table.record("/new", "SELECT ?", 5, "app.py:f:1")
    routes = {row["route"] for row in table.entries()}
    assert len(routes) == table.MAX_ENTRIES
    assert "/new" in routes and "/r0" in routes
    assert "/r1" not in routes  # the least recently seen went


def test_a_long_fingerprint_is_kept_cut_to_its_bound() -> None:
    table.record("/a", "SELECT " + "x, " * 5000, 5, "app.py:a:1")
    [row] = table.entries()
    assert len(row["fingerprint"]) == table.FINGERPRINT_CHARS


def test_threads_recording_the_same_statement_lose_no_request() -> None:
    def record() -> None:
        for _ in range(2000):
            table.record("/sync", "SELECT ?", 7, "app.py:f:1")

    threads = [threading.Thread(target=record) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    [row] = table.entries()
    assert row["requests"] == 16_000


def _app(schema: str) -> tuple[FastAPI, Any]:
    engine = create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    app = FastAPI()

    @app.get("/parents/{parent}/loop")
    def children_one_query_each(parent: int) -> int:
        rows = 0
        with engine.connect() as conn:
            for i in range(1, 11):
                rows += len(
                    conn.execute(
                        text(f"SELECT * FROM {schema}.children WHERE parent_id = :p"), {"p": i}
                    ).all()
                )
        return rows

    @app.get("/parents/{parent}/join")
    def children_in_one_query(parent: int) -> int:
        with engine.connect() as conn:
            return len(conn.execute(text(f"SELECT * FROM {schema}.children")).all())

    collector.instrument(app, profile_endpoint=True, profile_token=TOKEN, tracing="off")
    collector.instrument_engine(engine)
    return app, engine


def test_the_profile_listing_names_each_n_plus_one_and_the_last_app_going_clears_it(schema: str) -> None:
    app, engine = _app(schema)
    try:
        with TestClient(app) as client:
            for _ in range(3):
                assert client.get("/parents/1/loop").status_code == 200
                assert client.get("/parents/1/join").status_code == 200
            assert client.get(PATH).status_code == 401
            listing = client.get(PATH, headers=AUTH).json()
    finally:
        collector.uninstrument(app)
        engine.dispose()
    [row] = listing["n_plus_one"]
    assert row["route"] == "/parents/{parent}/loop"
    assert row["fingerprint"] == f"SELECT * FROM {schema}.children WHERE parent_id = ?"
    assert row["requests"] == 3 and row["max_repeats"] == 10
    assert row["location"].startswith("tests/test_n_plus_one.py:children_one_query_each:")
    assert table.entries() == []  # uninstrumenting the last app undid the statement hooks and the table
