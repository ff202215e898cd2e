"""An app on raw asyncpg and raw psycopg 3 (no ORM) that breaks and follows tip 6.

The tables live in the schema named by ``DB_TEST_SCHEMA`` (ten parents, three children
each, made by the tests). Every pool connection asks PostgreSQL to log each statement it
executes to the client (``log_statement=all``, ``client_min_messages=log``), and the app
counts those log messages: PostgreSQL's own count of the statements, to compare with the
collector's. ``DB_TEST_CLOSED_PORT`` is a port where no database listens.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import psycopg
import psycopg_pool
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import collector

SCHEMA = os.environ["DB_TEST_SCHEMA"]
POSTGRES = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
DOWN = f"postgresql://postgres@127.0.0.1:{os.environ['DB_TEST_CLOSED_PORT']}/test"
LOGGED = {"log_statement": "all", "client_min_messages": "log"}

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

# Statements PostgreSQL logged on the app's connections. A cursor's later fetches are the statement
# it already ran; transaction control is the driver's, left out by the collector as under SQLAlchemy.
logged = {"statements": 0}
_TRANSACTION = ("statement: BEGIN", "statement: COMMIT", "statement: ROLLBACK")


def _count_logged(text: str) -> None:
    if text.startswith(_TRANSACTION) or text.startswith("execute fetch from"):
        return
    if text.startswith(("statement: ", "execute ")):
        logged["statements"] += 1


pools: dict[str, Any] = {}


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    # A pool of 2, so concurrent requests queue for a connection.
    pools["asyncpg"] = await asyncpg.create_pool(POSTGRES, min_size=2, max_size=2, server_settings=LOGGED)
    options = " ".join(f"-c {name}={value}" for name, value in LOGGED.items())
    kwargs = {"autocommit": True, "options": options}

    def configure_sync(conn: psycopg.Connection[Any]) -> None:
        conn.add_notice_handler(lambda diag: _count_logged(diag.message_primary or ""))

    async def configure_async(conn: psycopg.AsyncConnection[Any]) -> None:
        conn.add_notice_handler(lambda diag: _count_logged(diag.message_primary or ""))

    pools["psycopg"] = psycopg_pool.AsyncConnectionPool(
        POSTGRES, min_size=2, max_size=2, kwargs=kwargs, configure=configure_async, open=False
    )
    pools["psycopg_sync"] = psycopg_pool.ConnectionPool(
        POSTGRES, min_size=1, max_size=2, kwargs=kwargs, configure=configure_sync, open=False
    )
    await pools["psycopg"].open(wait=True)
    pools["psycopg_sync"].open(wait=True)
    yield
    await pools["asyncpg"].close()
    await pools["psycopg"].close()
    pools["psycopg_sync"].close()


app = FastAPI(lifespan=lifespan)


@app.exception_handler(asyncpg.PostgresError)
@app.exception_handler(asyncpg.InterfaceError)
@app.exception_handler(psycopg.Error)
@app.exception_handler(OSError)
async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": "database unavailable", "type": type(exc).__name__}, status_code=503)


@asynccontextmanager
async def asyncpg_connection() -> AsyncIterator[Any]:
    """A pool connection whose PostgreSQL log messages are counted while the request holds it."""
    async with pools["asyncpg"].acquire() as conn:

        def listener(connection: Any, message: Any) -> None:
            _count_logged(message.message)

        conn.add_log_listener(listener)
        try:
            yield conn
        finally:
            if not conn.is_closed():
                conn.remove_log_listener(listener)


def tree(parents: list[Any], children: dict[int, list[str]]) -> list[dict[str, Any]]:
    return [{"id": p["id"], "children": children[p["id"]]} for p in parents]


# asyncpg


@app.get("/asyncpg/n-plus-one")
async def asyncpg_n_plus_one() -> list[dict[str, Any]]:
    async with asyncpg_connection() as conn:
        parents = await conn.fetch(f"SELECT id, name FROM {SCHEMA}.parents ORDER BY id")
        children = {}
        for parent in parents:
            rows = await conn.fetch(f"SELECT name FROM {SCHEMA}.children WHERE parent_id = $1", parent["id"])
            children[parent["id"]] = [row["name"] for row in rows]
        return tree(parents, children)


@app.get("/asyncpg/joined")
async def asyncpg_joined() -> list[dict[str, Any]]:
    async with asyncpg_connection() as conn:
        rows = await conn.fetch(
            f"SELECT p.id, array_agg(c.name ORDER BY c.id) AS names FROM {SCHEMA}.parents p"
            f" JOIN {SCHEMA}.children c ON c.parent_id = p.id GROUP BY p.id ORDER BY p.id"
        )
        return [{"id": row["id"], "children": list(row["names"])} for row in rows]


@app.get("/asyncpg/every-kind")
async def asyncpg_every_kind() -> dict[str, Any]:
    """Each way asyncpg sends a statement, once; the pool's own methods too."""
    async with asyncpg_connection() as conn:
        await conn.execute(f"SELECT count(*) FROM {SCHEMA}.parents")  # simple protocol
        await conn.execute(f"SELECT count(*) FROM {SCHEMA}.parents WHERE id > $1", 0)
        await conn.fetchval("SELECT 1")
        await conn.fetchrow(f"SELECT * FROM {SCHEMA}.parents WHERE id = $1", 1)
        await conn.executemany("SELECT $1::int", [(i,) for i in range(8)])
        async with conn.transaction():  # BEGIN and COMMIT are the driver's, as under SQLAlchemy
            statement = await conn.prepare(f"SELECT name FROM {SCHEMA}.children WHERE parent_id = $1")
            await statement.fetch(1)
            await statement.fetchval(2)
            rows = [row async for row in conn.cursor(f"SELECT id FROM {SCHEMA}.children", prefetch=7)]
    return {"children": len(rows)}


@app.get("/asyncpg/pool-method")
async def asyncpg_pool_method() -> dict[str, int]:
    return {"two": await pools["asyncpg"].fetchval("SELECT 2")}


@app.get("/asyncpg/hold")
async def asyncpg_hold(seconds: float = 0.05) -> dict[str, bool]:
    async with asyncpg_connection() as conn:
        await conn.execute("SELECT pg_sleep($1)", seconds)
    return {"ok": True}


@app.get("/asyncpg/terminate")
async def asyncpg_terminate() -> dict[str, bool]:
    """The database drops this request's connection in the middle of its work."""
    async with asyncpg_connection() as conn:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        admin = await asyncpg.connect(POSTGRES)
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        await asyncio.sleep(0.5)  # the server's notice of termination reaches the connection first
        await conn.fetchval("SELECT 1")
    return {"ok": True}


@app.get("/asyncpg/down")
async def asyncpg_down() -> dict[str, bool]:
    conn = await asyncpg.connect(DOWN)
    await conn.close()
    return {"ok": True}


# psycopg


@app.get("/psycopg/n-plus-one")
async def psycopg_n_plus_one() -> list[dict[str, Any]]:
    async with pools["psycopg"].connection() as conn:
        parents = await (await conn.execute(f"SELECT id, name FROM {SCHEMA}.parents ORDER BY id")).fetchall()
        children = {}
        for parent_id, _ in parents:
            cursor = await conn.execute(
                f"SELECT name FROM {SCHEMA}.children WHERE parent_id = %s", (parent_id,)
            )
            children[parent_id] = [name for (name,) in await cursor.fetchall()]
        return [{"id": parent_id, "children": children[parent_id]} for parent_id, _ in parents]


@app.get("/psycopg/joined")
async def psycopg_joined() -> list[dict[str, Any]]:
    async with pools["psycopg"].connection() as conn:
        cursor = await conn.execute(
            f"SELECT p.id, array_agg(c.name ORDER BY c.id) FROM {SCHEMA}.parents p"
            f" JOIN {SCHEMA}.children c ON c.parent_id = p.id GROUP BY p.id ORDER BY p.id"
        )
        return [{"id": parent_id, "children": names} for parent_id, names in await cursor.fetchall()]


@app.get("/psycopg/every-kind")
async def psycopg_every_kind() -> dict[str, int]:
    async with pools["psycopg"].connection() as conn:
        await conn.execute("SELECT 1")
        async with conn.cursor() as cursor:
            await cursor.executemany("SELECT %s::int", [(i,) for i in range(8)])
        async with conn.pipeline():
            await conn.execute("SELECT %s::int", (1,))
            await conn.execute("SELECT %s::int", (2,))
        async with conn.transaction():  # BEGIN and COMMIT never reach a cursor
            await conn.execute(f"SELECT count(*) FROM {SCHEMA}.children")
    return {"ok": 1}


@app.get("/psycopg/sync-n-plus-one")
def psycopg_sync_n_plus_one() -> dict[str, int]:
    with pools["psycopg_sync"].connection() as conn:
        parents = conn.execute(f"SELECT id FROM {SCHEMA}.parents ORDER BY id").fetchall()
        for (parent_id,) in parents:
            conn.execute(f"SELECT name FROM {SCHEMA}.children WHERE parent_id = %s", (parent_id,)).fetchall()
    return {"parents": len(parents)}


@app.get("/psycopg/hold")
async def psycopg_hold(seconds: float = 0.05) -> dict[str, bool]:
    async with pools["psycopg"].connection() as conn:
        await conn.execute("SELECT pg_sleep(%s)", (seconds,))
    return {"ok": True}


@app.get("/psycopg/terminate")
async def psycopg_terminate() -> dict[str, bool]:
    async with pools["psycopg"].connection() as conn:
        pid = (await (await conn.execute("SELECT pg_backend_pid()")).fetchone())[0]  # type: ignore[index]
        async with await psycopg.AsyncConnection.connect(POSTGRES, autocommit=True) as admin:
            await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        await conn.execute("SELECT 1")
    return {"ok": True}


@app.get("/psycopg/down")
async def psycopg_down() -> dict[str, bool]:
    async with await psycopg.AsyncConnection.connect(DOWN, connect_timeout=2):
        return {"ok": True}


@app.get("/no-db")
async def no_db() -> dict[str, bool]:
    return {"ok": True}


@app.get("/pg-logged")
async def pg_logged() -> dict[str, int]:
    return logged


@app.get("/spans")
async def spans() -> list[dict[str, Any]]:
    return [
        {
            "route": (span.attributes or {}).get("http.route"),
            "events": [{"name": e.name, "attributes": dict(e.attributes or {})} for e in span.events],
        }
        for span in exporter.get_finished_spans()
    ]


collector.instrument(app, tracing="on")
collector.instrument_asyncpg(name="asyncpg", slow_query_threshold=0.2)
collector.instrument_psycopg(name="psycopg")
