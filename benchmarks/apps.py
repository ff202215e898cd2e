"""The app variants the overhead benchmark serves: one endpoint, bare twice and instrumented four ways.

The realistic scenario also runs on raw asyncpg (``bare_asyncpg``, ``collector_asyncpg``), whose
ratio is paired with ``bare_asyncpg`` (``BASELINE``), beside the SQLAlchemy variants.

Served with ``uvicorn --app-dir benchmarks apps:create_app --factory``; the variant and the
scenario come from ``BENCH_VARIANT`` and ``BENCH_SCENARIO`` so that every server runs the
same module. ``GET /_bench`` tells the driver what the server really set up.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

VARIANTS: dict[str, str] = {
    "bare": "FastAPI, no instrumentation",
    "bare_again": "the same bare app in processes of its own: the noise floor of a ratio to bare",
    "collector": "collector.instrument(app), metrics only (COLLECTOR_TRACING=off)",
    "collector_tracing": "collector.instrument(app), tracing on, 100 % sampled, spans to a counting exporter",
    "instrumentator": "prometheus-fastapi-instrumentator: Instrumentator().instrument(app).expose(app)",
    "otel": "opentelemetry-instrumentation-fastapi defaults, SDK TracerProvider, counting exporter",
    "bare_asyncpg": "FastAPI, no instrumentation; the realistic endpoint's queries on a raw asyncpg pool",
    "collector_asyncpg": "bare_asyncpg with collector.instrument(app) and collector.instrument_asyncpg()",
}

# The variant each one's ratio is paired with, round by round (bare FastAPI unless named here).
BASELINE: dict[str, str] = {"collector_asyncpg": "bare_asyncpg"}

# Environment of each variant's server, on top of the driver's own.
VARIANT_ENV: dict[str, dict[str, str]] = {
    "bare": {},
    "bare_again": {},
    "collector": {"COLLECTOR_TRACING": "off"},
    "collector_tracing": {"COLLECTOR_TRACING": "on", "COLLECTOR_TRACE_SAMPLE_RATIO": "1.0"},
    "instrumentator": {},
    "otel": {},
    "bare_asyncpg": {},
    "collector_asyncpg": {"COLLECTOR_TRACING": "off"},
}

SCENARIOS = ("trivial", "realistic")
DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
ITEM_COUNT = 1000
_ITEMS_TABLE = "overhead_bench_items"
_TAGS_TABLE = "overhead_bench_item_tags"


class Item(BaseModel):
    id: int
    name: str
    price: float
    tags: list[str]


class CountingExporter:
    """A span exporter that keeps only a count: spans are made, batched and handed over, then dropped.

    It stands in for OTLP so that the cost measured is the instrumentation's, not the network's.
    """

    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _batch_processor(exporter: CountingExporter) -> Any:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    return BatchSpanProcessor(exporter)  # type: ignore[arg-type]


async def seed(url: str = DEFAULT_POSTGRES_URL) -> None:
    """Create and fill the realistic scenario's two tables; safe to run again."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    f"CREATE TABLE IF NOT EXISTS {_ITEMS_TABLE} "
                    "(id integer PRIMARY KEY, name text NOT NULL, price double precision NOT NULL)"
                )
            )
            await conn.execute(
                text(
                    f"CREATE TABLE IF NOT EXISTS {_TAGS_TABLE} "
                    "(item_id integer NOT NULL, tag text NOT NULL, PRIMARY KEY (item_id, tag))"
                )
            )
            await conn.execute(
                text(
                    f"INSERT INTO {_ITEMS_TABLE} SELECT i, 'item ' || i, i * 0.5 "
                    f"FROM generate_series(1, {ITEM_COUNT}) AS i ON CONFLICT DO NOTHING"
                )
            )
            await conn.execute(
                text(
                    f"INSERT INTO {_TAGS_TABLE} SELECT i, t FROM generate_series(1, {ITEM_COUNT}) AS i, "
                    "unnest(ARRAY['red', 'large', 'sale']) AS t ON CONFLICT DO NOTHING"
                )
            )
    finally:
        await engine.dispose()


def _add_trivial_route(app: FastAPI) -> None:
    @app.get("/items/{item_id}", response_model=Item)
    async def get_item(item_id: int) -> Item:
        return Item(id=item_id, name="widget", price=9.99, tags=["red", "large"])


def _add_realistic_route(app: FastAPI, engine: Any) -> None:
    from sqlalchemy import text

    item_query = text(f"SELECT id, name, price FROM {_ITEMS_TABLE} WHERE id = :id")
    tags_query = text(f"SELECT tag FROM {_TAGS_TABLE} WHERE item_id = :id ORDER BY tag")

    @app.get("/items/{item_id}", response_model=Item)
    async def get_item(item_id: int) -> Item:
        async with engine.connect() as conn:
            row = (await conn.execute(item_query, {"id": item_id})).one()
            tags = (await conn.execute(tags_query, {"id": item_id})).scalars().all()
        return Item(id=row.id, name=row.name, price=row.price, tags=list(tags))


def _add_realistic_asyncpg_route(app: FastAPI, pools: dict[str, Any]) -> None:
    """The realistic endpoint's two queries through raw asyncpg, no ORM."""
    item_query = f"SELECT id, name, price FROM {_ITEMS_TABLE} WHERE id = $1"
    tags_query = f"SELECT tag FROM {_TAGS_TABLE} WHERE item_id = $1 ORDER BY tag"

    @app.get("/items/{item_id}", response_model=Item)
    async def get_item(item_id: int) -> Item:
        async with pools["asyncpg"].acquire() as conn:
            row = await conn.fetchrow(item_query, item_id)
            tags = [record["tag"] for record in await conn.fetch(tags_query, item_id)]
        return Item(id=row["id"], name=row["name"], price=row["price"], tags=tags)


def create_app() -> FastAPI:
    variant = os.environ.get("BENCH_VARIANT", "bare")
    scenario = os.environ.get("BENCH_SCENARIO", "trivial")
    if variant not in VARIANTS or scenario not in SCENARIOS:
        raise SystemExit(f"unknown BENCH_VARIANT={variant!r} or BENCH_SCENARIO={scenario!r}")

    engine: Any = None
    url = os.environ.get("BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    raw_asyncpg = scenario == "realistic" and variant.endswith("_asyncpg")
    pools: dict[str, Any] = {}
    if scenario == "realistic" and not raw_asyncpg:
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(url, pool_size=10, max_overflow=0, pool_pre_ping=False)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if raw_asyncpg:
            import asyncpg

            dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
            pools["asyncpg"] = await asyncpg.create_pool(dsn, min_size=10, max_size=10)
        yield
        if engine is not None:
            await engine.dispose()
        if pools:
            await pools["asyncpg"].close()

    app = FastAPI(lifespan=lifespan)
    if raw_asyncpg:
        _add_realistic_asyncpg_route(app, pools)
    elif engine is None:
        _add_trivial_route(app)
    else:
        _add_realistic_route(app, engine)

    exporter: CountingExporter | None = None
    engine_instrumented: bool | None = None
    if variant == "collector_asyncpg":
        import collector

        collector.instrument(app)
        collector.instrument_asyncpg()
    elif variant in ("collector", "collector_tracing"):
        import collector

        collector.instrument(app)
        if variant == "collector_tracing":
            from opentelemetry import trace

            # The collector made the provider (with its ratio sampler); it has no exporter without OTLP.
            exporter = CountingExporter()
            trace.get_tracer_provider().add_span_processor(_batch_processor(exporter))  # type: ignore[attr-defined]
        if engine is not None:
            # Database instrumentation is measured as soon as the collector has it.
            instrument_engine = getattr(collector, "instrument_engine", None)
            engine_instrumented = instrument_engine is not None
            if instrument_engine is not None:
                instrument_engine(engine)
    elif variant == "instrumentator":
        from prometheus_fastapi_instrumentator import Instrumentator

        Instrumentator().instrument(app).expose(app)
    elif variant == "otel":
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        from opentelemetry.sdk.trace import TracerProvider

        exporter = CountingExporter()
        provider = TracerProvider()
        provider.add_span_processor(_batch_processor(exporter))
        FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)

    @app.get("/_bench", include_in_schema=False)
    async def bench_info() -> dict[str, Any]:
        return {
            "variant": variant,
            "scenario": scenario,
            "pid": os.getpid(),
            "instrument_engine": engine_instrumented,
            "spans_exported": None if exporter is None else exporter.exported,
        }

    return app
