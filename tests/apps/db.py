"""An app that breaks and follows tip 6 (N+1, slow queries, a small pool) and tip 2 (an engine per request).

The tables live in the schema named by ``DB_TEST_SCHEMA`` (made and filled by the tests);
``DB_TEST_CLOSED_PORT`` is a port where no database listens.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import ForeignKey, MetaData, bindparam, create_engine, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, selectinload

import collector

SCHEMA = os.environ["DB_TEST_SCHEMA"]
POSTGRES = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
ASYNCPG_URL = POSTGRES.replace("postgresql://", "postgresql+asyncpg://", 1)
PSYCOPG_URL = POSTGRES.replace("postgresql://", "postgresql+psycopg://", 1)
DOWN_URL = f"postgresql+asyncpg://postgres@127.0.0.1:{os.environ['DB_TEST_CLOSED_PORT']}/test"


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


class Parent(Base):
    __tablename__ = "parents"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    children: Mapped[list[Child]] = relationship(lazy="raise")


class Child(Base):
    __tablename__ = "children"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("parents.id"))
    name: Mapped[str]


exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

# A pool of 2 without overflow, so concurrent requests queue for a connection.
engine = create_async_engine(ASYNCPG_URL, pool_size=2, max_overflow=0)
sync_engine = create_engine(PSYCOPG_URL, pool_size=2, max_overflow=0)
down_engine = create_async_engine(DOWN_URL)

app = FastAPI()


@app.exception_handler(DBAPIError)
@app.exception_handler(OSError)
async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    invalidated = getattr(exc, "connection_invalidated", False)
    body = {"error": "database unavailable", "type": type(exc).__name__, "invalidated": invalidated}
    return JSONResponse(body, status_code=503)


def tree(parents: list[Parent], children: dict[int, list[Child]]) -> list[dict[str, Any]]:
    return [{"id": p.id, "children": [c.name for c in children[p.id]]} for p in parents]


@app.get("/parents/n-plus-one")
async def parents_n_plus_one() -> list[dict[str, Any]]:
    async with AsyncSession(engine) as session:
        parents = list(await session.scalars(select(Parent).order_by(Parent.id)))
        children = {}
        for parent in parents:
            children[parent.id] = list(
                await session.scalars(select(Child).where(Child.parent_id == parent.id))
            )
        return tree(parents, children)


@app.get("/parents/selectin")
async def parents_selectin() -> list[dict[str, Any]]:
    async with AsyncSession(engine) as session:
        query = select(Parent).options(selectinload(Parent.children)).order_by(Parent.id)
        parents = list(await session.scalars(query))
        return tree(parents, {p.id: p.children for p in parents})


@app.get("/sync/parents/n-plus-one")
def sync_parents_n_plus_one() -> list[dict[str, Any]]:
    with Session(sync_engine) as session:
        parents = list(session.scalars(select(Parent).order_by(Parent.id)))
        children = {}
        for parent in parents:
            children[parent.id] = list(session.scalars(select(Child).where(Child.parent_id == parent.id)))
        return tree(parents, children)


@app.post("/children/orm-delete")
async def orm_delete() -> dict[str, int]:
    """An ORM flush that deletes 8 rows: one executemany of 8 DELETEs (rolled back)."""
    async with AsyncSession(engine) as session:
        children = list(await session.scalars(select(Child).order_by(Child.id).limit(8)))
        for child in children:
            await session.delete(child)
        await session.flush()
        await session.rollback()
    return {"deleted": len(children)}


@app.post("/children/executemany")
async def executemany() -> dict[str, int]:
    """An explicit executemany of 8 parameter sets."""
    rows = [{"id": i, "name": f"child {i}"} for i in range(1, 9)]
    async with engine.begin() as conn:
        await conn.execute(
            Child.__table__.update().where(Child.id == bindparam("cid")).values(name=bindparam("n")),
            [{"cid": row["id"], "n": row["name"]} for row in rows],
        )
    return {"updated": len(rows)}


@app.get("/hostile-comment")
async def hostile_comment() -> dict[str, int]:
    """An N+1 whose statement carries a client's email in a comment and a dollar-quoted string."""
    async with engine.connect() as conn:
        for i in range(6):
            await conn.execute(
                text(
                    "SELECT $$alice@example.com$$ /* for alice@example.com */"
                    " WHERE 1 = :i -- alice@example.com"
                ),
                {"i": i},
            )
    return {"ran": 6}


@app.get("/no-db")
async def no_db() -> dict[str, bool]:
    return {"ok": True}


@app.get("/hold")
async def hold(seconds: float = 0.05) -> dict[str, bool]:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT pg_sleep(:s)"), {"s": seconds})
    return {"ok": True}


@app.get("/slow")
async def slow() -> dict[str, bool]:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT pg_sleep(0.3)"))
    return {"ok": True}


@app.get("/literals")
def literals(n: int = 10_000) -> dict[str, int]:
    with sync_engine.connect() as conn:
        for i in range(n):
            conn.exec_driver_sql(f"SELECT {i} AS value, 'literal {i}' AS label")
    return {"ran": n}


async def engine_per_request() -> AsyncIterator[AsyncEngine]:
    """The tip-2 mistake: a new engine, so a new pool and connection, for every request."""
    new_engine = create_async_engine(ASYNCPG_URL)
    try:
        yield new_engine
    finally:
        await new_engine.dispose()


def shared_engine() -> AsyncEngine:
    return engine


async def select_one(db: AsyncEngine) -> dict[str, int]:
    async with db.connect() as conn:
        return {"one": (await conn.execute(text("SELECT 1"))).scalar_one()}


@app.get("/engine-per-request")
async def with_engine_per_request(db: Annotated[AsyncEngine, Depends(engine_per_request)]) -> dict[str, int]:
    return await select_one(db)


@app.get("/reused")
async def with_reused_engine(db: Annotated[AsyncEngine, Depends(shared_engine)]) -> dict[str, int]:
    return await select_one(db)


@app.get("/down")
async def down() -> dict[str, int]:
    return await select_one(down_engine)


@app.get("/terminate")
async def terminate() -> dict[str, bool]:
    """The database drops this request's connection in the middle of its work."""
    async with engine.connect() as conn:
        pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        async with engine.connect() as admin:
            await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        await conn.execute(text("SELECT 1"))
    return {"ok": True}


@app.post("/admin/instrument")
async def instrument_again() -> dict[str, bool]:
    instrument_engines()
    return {"ok": True}


@app.post("/admin/uninstrument")
async def uninstrument() -> dict[str, bool]:
    for db in (engine, sync_engine, down_engine):
        collector.uninstrument_engine(db)
    return {"ok": True}


@app.get("/spans")
async def spans() -> list[dict[str, Any]]:
    return [
        {
            "route": (span.attributes or {}).get("http.route"),
            "events": [{"name": e.name, "attributes": dict(e.attributes or {})} for e in span.events],
        }
        for span in exporter.get_finished_spans()
    ]


def instrument_engines() -> None:
    collector.instrument_engine(engine, slow_query_threshold=0.2)
    collector.instrument_engine(sync_engine, name="psycopg")
    collector.instrument_engine(down_engine, name="down")


collector.instrument(app, tracing="on")
instrument_engines()
