"""A small shop API that breaks each of the ten tips on a ``/bad/...`` path and follows it on ``/good/...``.

    uvicorn sample_app.main:app          # one process: tip 4 broken on a multi-core machine
    python -m sample_app.serve           # gunicorn, one uvicorn worker per core

Instrumented the way the README tells a user: ``collector.instrument(app)``, then
``instrument_engine`` and ``instrument_redis`` on what the app builds at start-up.
``sample_app/tips.py`` lists the pairs; ``sample_app/README.md`` says what each shows.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Path, Query
from fastapi.staticfiles import StaticFiles
from pydantic import TypeAdapter
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import selectinload
from sqlalchemy.pool import AsyncAdaptedQueuePool
from starlette.concurrency import run_in_threadpool

from sample_app import clients, middleware, seed, tips
from sample_app.cache import Cache, make_cache
from sample_app.config import Config, ConfigError
from sample_app.models import Customer, Order, OrderLine, Product
from sample_app.schemas import (
    CustomerOut,
    OrderFull,
    OrderSummary,
    OrderTotal,
    OrderWithLines,
    PopularProduct,
    ProductOut,
    Recommendation,
    ShippingQuote,
    Storefront,
)

# Tip 10 is on by default here so the demo shows it; a user's own COLLECTOR_* variables still win.
os.environ.setdefault("COLLECTOR_PROFILE", "true")
os.environ.setdefault("COLLECTOR_PROFILE_THRESHOLD", "0.25")

import collector  # after the variables above, which it reads

try:
    config = Config.from_env()
except ConfigError as exc:
    raise SystemExit(f"sample_app: {exc}") from None

POPULAR_TTL_GOOD = 300.0
POPULAR_TTL_BAD = 0.001  # the bug: milliseconds where seconds were meant, so every look-up misses
RECENT_ORDERS = 20
INVOICE_RENDER_SECONDS = 0.02
ASSETS = {"catalog.js": 192 * 1024, "catalog.css": 48 * 1024}

OrderId = Annotated[int, Path(ge=1, le=2**31 - 1)]
CustomerId = Annotated[int, Path(ge=1, le=2**31 - 1)]
ProductId = Annotated[int, Path(ge=1, le=2**31 - 1)]
Reference = Annotated[str, Path(min_length=1, max_length=20)]
Currency = Literal["EUR", "USD", "GBP", "JPY", "CHF"]


@dataclass
class Shop:
    """What the process makes once, at start-up (tip 2's good variant)."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    tiny_sessions: async_sessionmaker[AsyncSession]
    tiny_engine: AsyncEngine
    cache: Cache


_shop: Shop | None = None


def shop() -> Shop:
    if _shop is None:
        raise RuntimeError("the sample app has not started")
    return _shop


def _engine(pool_size: int) -> AsyncEngine:
    # An explicit queue pool on SQLite too, so a pool of one queues as it does on PostgreSQL.
    return create_async_engine(
        config.database_url, poolclass=AsyncAdaptedQueuePool, pool_size=pool_size, max_overflow=0
    )


def write_assets(config: Config) -> None:
    """The storefront's script and stylesheet (deterministic filler), for the app to serve in tip 7."""
    config.static_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(config.seed)
    for name, size in ASSETS.items():
        path = config.static_dir / name
        if not path.exists() or path.stat().st_size != size:
            line = f"/* {name} */ " + "".join(rng.choices("abcdefghijklmnopqrstuvwxyz;{}()=", k=100))
            path.write_text((line * (size // len(line) + 1))[:size])


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    global _shop
    # Off the loop: the first engine imports its dialect, a stall the collector would rightly count.
    engine, tiny_engine = await asyncio.to_thread(lambda: (_engine(config.pool_size), _engine(1)))
    await seed.prepare(engine, config.seed, config.size, config.work_dir)
    collector.instrument_engine(engine, name="main")
    collector.instrument_engine(tiny_engine, name="tiny")
    cache = make_cache(config.redis_url)
    _shop = Shop(
        engine=engine,
        sessions=async_sessionmaker(engine, expire_on_commit=False),
        tiny_sessions=async_sessionmaker(tiny_engine, expire_on_commit=False),
        tiny_engine=tiny_engine,
        cache=cache,
    )
    try:
        yield
    finally:
        _shop = None
        await cache.close()
        await engine.dispose()
        await tiny_engine.dispose()


write_assets(config)
app = FastAPI(title="collector sample shop", lifespan=lifespan)
collector.instrument(app)


async def session() -> AsyncIterator[AsyncSession]:
    async with shop().sessions() as db:
        yield db


async def session_per_request() -> AsyncIterator[AsyncSession]:
    """Tip 2 broken: a new engine, with its pool and a first connection, for every request."""
    engine = create_async_engine(config.database_url)
    try:
        async with AsyncSession(engine, expire_on_commit=False) as db:
            yield db
    finally:
        await engine.dispose()


Db = Annotated[AsyncSession, Depends(session)]


def _found(row: Any, what: str) -> Any:
    if row is None:
        raise HTTPException(404, f"{what} not found")
    return row


@app.get("/")
async def index() -> dict[str, Any]:
    """The data's size and the tips' twin paths."""
    return {
        "seed": config.seed,
        "size": config.size,
        "counts": seed.counts(config.size),
        "database": "sqlite (embedded)" if config.embedded else "postgresql",
        "cache": "redis" if config.redis_url else "in-process",
        "features": [
            {"tip": f.tip, "name": f.name, "bad": f.bad, "good": f.good, "signal": f.signal}
            for f in tips.FEATURES
        ],
        "per_process": tips.PER_PROCESS,
    }


@app.get("/health")
async def health(db: Db) -> dict[str, str]:
    await db.execute(select(1))
    return {"status": "ok"}


# Tip 1: a sync view holds a thread-pool token for the whole blocking call; an async one holds nothing.


@app.get("/bad/orders/{order_id}/shipping-quote", response_model=ShippingQuote)
def bad_shipping_quote(order_id: OrderId) -> ShippingQuote:
    price = clients.carrier_quote_blocking(order_id)
    return ShippingQuote(order_id=order_id, carrier="parcelco", price_cents=price)


@app.get("/good/orders/{order_id}/shipping-quote", response_model=ShippingQuote)
async def good_shipping_quote(order_id: OrderId) -> ShippingQuote:
    price = await clients.carrier_quote(order_id)
    return ShippingQuote(order_id=order_id, carrier="parcelco", price_cents=price)


# Tip 2: the same product page, its session from a per-request engine or from the shared one.


@app.get("/bad/products/{product_id}", response_model=ProductOut)
async def bad_product(
    product_id: ProductId, db: Annotated[AsyncSession, Depends(session_per_request)]
) -> Product:
    return _found(await db.get(Product, product_id), "product")  # type: ignore[no-any-return]


@app.get("/good/products/{product_id}", response_model=ProductOut)
async def good_product(product_id: ProductId, db: Db) -> Product:
    return _found(await db.get(Product, product_id), "product")  # type: ignore[no-any-return]


# Tip 3: the same 50 orders, loaded the same way; only the response model differs.


async def _order_page(db: AsyncSession, limit: int) -> list[Order]:
    query = (
        select(Order)
        .options(selectinload(Order.customer), selectinload(Order.lines).selectinload(OrderLine.product))
        .order_by(Order.id)
        .limit(limit)
    )
    return list((await db.scalars(query)).all())


Limit = Annotated[int, Query(ge=1, le=200)]


@app.get("/bad/orders", response_model=list[OrderFull])
async def bad_orders(db: Db, limit: Limit = 50) -> list[Order]:
    return await _order_page(db, limit)


@app.get("/good/orders", response_model=list[OrderSummary])
async def good_orders(db: Db, limit: Limit = 50) -> list[Order]:
    return await _order_page(db, limit)


# Tip 5: the popular-products aggregate behind the cache, with a useless or a useful expiry.

_popular_json = TypeAdapter(list[PopularProduct])


async def _popular(db: AsyncSession, key: str, ttl: float) -> list[PopularProduct]:
    cache = shop().cache
    cached = await cache.get(key)
    if cached is not None:
        return _popular_json.validate_json(cached)
    units = func.sum(OrderLine.quantity).label("units")
    query = (
        select(Product, units)
        .join(OrderLine, OrderLine.product_id == Product.id)
        .group_by(Product.id)
        .order_by(units.desc(), Product.id)
        .limit(10)
    )
    popular = [
        PopularProduct(product=ProductOut.model_validate(product), units_sold=sold)
        for product, sold in (await db.execute(query)).all()
    ]
    await cache.set(key, _popular_json.dump_json(popular), ttl)
    return popular


@app.get("/bad/popular-products", response_model=list[PopularProduct])
async def bad_popular_products(db: Db) -> list[PopularProduct]:
    return await _popular(db, "popular-products:bad", POPULAR_TTL_BAD)


@app.get("/good/popular-products", response_model=list[PopularProduct])
async def good_popular_products(db: Db) -> list[PopularProduct]:
    return await _popular(db, "popular-products:good", POPULAR_TTL_GOOD)


# Tip 6: N+1 lazy loading vs selectinload; an index defeated vs used; a pool of one vs right-sized.


def _recent() -> Any:
    return select(Order).order_by(Order.placed_at.desc(), Order.id).limit(RECENT_ORDERS)


@app.get("/bad/orders/recent", response_model=list[OrderWithLines])
async def bad_recent_orders(db: Db) -> list[Order]:
    orders = list((await db.scalars(_recent())).all())
    for order in orders:
        for line in await order.awaitable_attrs.lines:  # one query per order
            await line.awaitable_attrs.product  # and one per product not loaded yet
    return orders


@app.get("/good/orders/recent", response_model=list[OrderWithLines])
async def good_recent_orders(db: Db) -> list[Order]:
    query = _recent().options(selectinload(Order.lines).selectinload(OrderLine.product))
    return list((await db.scalars(query)).all())


@app.get("/bad/orders/by-reference/{reference}", response_model=OrderSummary)
async def bad_order_by_reference(reference: Reference, db: Db) -> Order:
    # A function on the indexed column: the database scans every order.
    query = select(Order).where(func.upper(Order.reference) == reference.upper())
    return _found(await db.scalar(query), "order")  # type: ignore[no-any-return]


@app.get("/good/orders/by-reference/{reference}", response_model=OrderSummary)
async def good_order_by_reference(reference: Reference, db: Db) -> Order:
    # Stored upper-case: the index serves the lookup.
    query = select(Order).where(Order.reference == reference.upper())
    return _found(await db.scalar(query), "order")  # type: ignore[no-any-return]


async def _invoice(sessions: async_sessionmaker[AsyncSession], order_id: int) -> Order:
    async with sessions() as db:
        order = _found(await db.get(Order, order_id, options=[selectinload(Order.lines)]), "order")
        await asyncio.sleep(INVOICE_RENDER_SECONDS)  # renders the invoice inside the transaction
        return order  # type: ignore[no-any-return]


@app.get("/bad/orders/{order_id}/invoice", response_model=OrderSummary)
async def bad_invoice(order_id: OrderId) -> Order:
    return await _invoice(shop().tiny_sessions, order_id)


@app.get("/good/orders/{order_id}/invoice", response_model=OrderSummary)
async def good_invoice(order_id: OrderId) -> Order:
    return await _invoice(shop().sessions, order_id)


# Tip 7: the storefront page points at assets the app serves itself, or at a CDN.


async def _featured(db: AsyncSession) -> list[Product]:
    return list((await db.scalars(select(Product).order_by(Product.id).limit(4))).all())


@app.get("/bad/storefront", response_model=Storefront)
async def bad_storefront(db: Db) -> Storefront:
    return Storefront(
        title="Sample shop",
        scripts=["/static/catalog.js"],
        stylesheets=["/static/catalog.css"],
        featured=[ProductOut.model_validate(p) for p in await _featured(db)],
    )


@app.get("/good/storefront", response_model=Storefront)
async def good_storefront(db: Db) -> Storefront:
    return Storefront(
        title="Sample shop",
        scripts=[f"{config.static_url}/catalog.js"],
        stylesheets=[f"{config.static_url}/catalog.css"],
        featured=[ProductOut.model_validate(p) for p in await _featured(db)],
    )


app.mount("/static", StaticFiles(directory=config.static_dir), name="static")


# Tip 8: the account API as two sub-apps, the same three middlewares written two ways.


async def _customer(customer_id: CustomerId, db: Db) -> Customer:
    return _found(await db.get(Customer, customer_id), "customer")  # type: ignore[no-any-return]


def account_app(base_http: bool) -> FastAPI:
    account = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    account.get("/customers/{customer_id}", response_model=CustomerOut)(_customer)
    if base_http:
        for dispatch in middleware.BASE_HTTP:
            account.middleware("http")(dispatch)
    else:
        for cls in middleware.PURE_ASGI:
            account.add_middleware(cls)
    return account


app.mount("/bad/account", account_app(base_http=True))
app.mount("/good/account", account_app(base_http=False))


# Tip 9: a blocking call in an async view stalls the loop; asyncio.to_thread (the article's fix) does not.


async def _order_total(db: AsyncSession, order_id: int) -> Order:
    return _found(await db.get(Order, order_id), "order")  # type: ignore[no-any-return]


@app.get("/bad/orders/{order_id}/total/{currency}", response_model=OrderTotal)
async def bad_order_total(order_id: OrderId, currency: Currency, db: Db) -> OrderTotal:
    order = await _order_total(db, order_id)
    rate = clients.exchange_rate_blocking(currency)
    return OrderTotal(order_id=order.id, currency=currency, total=round(order.total_cents * rate / 100, 2))


@app.get("/good/orders/{order_id}/total/{currency}", response_model=OrderTotal)
async def good_order_total(order_id: OrderId, currency: Currency, db: Db) -> OrderTotal:
    order = await _order_total(db, order_id)
    rate = await asyncio.to_thread(clients.exchange_rate_blocking, currency)
    return OrderTotal(order_id=order.id, currency=currency, total=round(order.total_cents * rate / 100, 2))


# Tip 10: the same recommendations, a slow Python scan (what a profile points at) or one SQL aggregate.


def recommend_slowly(customer_id: int, rows: list[tuple[int, int, int]]) -> list[int]:
    """(order, product, customer) rows → the 5 products most bought beside the customer's own."""
    mine = [product for _, product, customer in rows if customer == customer_id]
    baskets = [order for order, product, _ in rows if product in mine]
    counts: dict[int, int] = {}
    for order, product, _ in rows:
        if order in baskets and product not in mine:  # a list scan per row: quadratic
            counts[product] = counts.get(product, 0) + 1
    return sorted(counts, key=lambda p: (-counts[p], p))[:5]


@app.get("/bad/customers/{customer_id}/recommendations", response_model=Recommendation)
async def bad_recommendations(customer_id: CustomerId, db: Db) -> Recommendation:
    query = select(OrderLine.order_id, OrderLine.product_id, Order.customer_id).join(Order)
    rows = [tuple(row) for row in (await db.execute(query)).all()]
    # Off the event loop (tip 9 is kept): slow, and nobody knows why until a profile shows the scan.
    products = await run_in_threadpool(recommend_slowly, customer_id, rows)  # type: ignore[arg-type]
    return Recommendation(customer_id=customer_id, product_ids=products)


@app.get("/good/customers/{customer_id}/recommendations", response_model=Recommendation)
async def good_recommendations(customer_id: CustomerId, db: Db) -> Recommendation:
    mine = select(OrderLine.product_id).join(Order).where(Order.customer_id == customer_id)
    baskets = select(OrderLine.order_id).where(OrderLine.product_id.in_(mine))
    bought = func.count().label("bought")
    query = (
        select(OrderLine.product_id, bought)
        .where(OrderLine.order_id.in_(baskets), OrderLine.product_id.not_in(mine))
        .group_by(OrderLine.product_id)
        .order_by(bought.desc(), OrderLine.product_id)
        .limit(5)
    )
    products = [product for product, _ in (await db.execute(query)).all()]
    return Recommendation(customer_id=customer_id, product_ids=products)
