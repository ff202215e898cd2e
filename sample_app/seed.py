"""Deterministic shop data: the same seed and size give the same rows, on SQLite and PostgreSQL alike.

``generate(seed, size)`` builds the rows in memory (``size`` customers, ``size // 50`` products,
at least 20, two orders a customer of 1 to 5 lines each); ``prepare(engine, seed, size)`` creates
the schema and loads them unless the database already holds that seed and size.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from sample_app.models import Base, Customer, Order, OrderLine, Product, SeedInfo

FIRST = ("Ada", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jun", "Kofi", "Lena")
LAST = ("Adler", "Brandt", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Horvat", "Ivanova", "Jensen")
CITIES = ("Lisbon", "Berlin", "Lyon", "Porto", "Gdansk", "Turin", "Ghent", "Bergen", "Brno", "Cork")
CATEGORIES = ("books", "garden", "kitchen", "music", "outdoor", "toys", "tools", "games")
WORDS = ("solid", "light", "classic", "compact", "handmade", "durable", "quiet", "smart", "warm", "bright")
STATUSES = ("placed", "paid", "shipped", "delivered", "returned")
EPOCH = datetime(2024, 1, 1)


def reference(order_id: int) -> str:
    return f"ORD-{order_id:07d}"


@dataclass
class ShopData:
    customers: list[dict[str, Any]] = field(default_factory=list)
    products: list[dict[str, Any]] = field(default_factory=list)
    orders: list[dict[str, Any]] = field(default_factory=list)
    lines: list[dict[str, Any]] = field(default_factory=list)

    def digest(self) -> str:
        """A hash of every row: equal digests, equal data."""
        rows = [self.customers, self.products, self.orders, self.lines]
        return hashlib.sha256(json.dumps(rows, default=str, sort_keys=True).encode()).hexdigest()


def counts(size: int) -> dict[str, int]:
    return {"customers": size, "products": max(20, size // 50), "orders": 2 * size}


def generate(seed: int, size: int) -> ShopData:
    rng = random.Random(seed)
    n = counts(size)
    data = ShopData()
    for i in range(1, n["customers"] + 1):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        data.customers.append(
            {
                "id": i,
                "email": f"{first}.{last}{i}@example.com".lower(),
                "name": f"{first} {last}",
                "city": rng.choice(CITIES),
                "joined_at": EPOCH - timedelta(days=rng.randrange(1, 1500)),
            }
        )
    for i in range(1, n["products"] + 1):
        words = rng.sample(WORDS, 3)
        data.products.append(
            {
                "id": i,
                "sku": f"SKU-{i:05d}",
                "name": f"{words[0].title()} {rng.choice(CATEGORIES)[:-1]} {i}",
                "category": rng.choice(CATEGORIES),
                "price_cents": rng.randrange(199, 19999),
                "description": " ".join(rng.choices(WORDS, k=60)),
            }
        )
    prices = {p["id"]: p["price_cents"] for p in data.products}
    # Two orders each, in a shuffled order: every customer has a history for tip 10 to scan.
    buyers = [c for c in range(1, n["customers"] + 1) for _ in range(2)]
    rng.shuffle(buyers)
    line_id = 0
    for i in range(1, n["orders"] + 1):
        total = 0
        for product_id in rng.sample(range(1, n["products"] + 1), rng.randint(1, 5)):
            line_id += 1
            quantity = rng.randint(1, 4)
            total += quantity * prices[product_id]
            data.lines.append(
                {
                    "id": line_id,
                    "order_id": i,
                    "product_id": product_id,
                    "quantity": quantity,
                    "unit_price_cents": prices[product_id],
                }
            )
        data.orders.append(
            {
                "id": i,
                "reference": reference(i),
                "customer_id": buyers[i - 1],
                "status": rng.choice(STATUSES),
                "placed_at": EPOCH + timedelta(minutes=7 * i + rng.randrange(7)),
                "total_cents": total,
            }
        )
    return data


async def _load(engine: AsyncEngine, seed: int, size: int) -> bool:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        info = (await conn.execute(select(SeedInfo.seed, SeedInfo.size))).first()
        if info is not None and tuple(info) == (seed, size):
            return False
    data = await asyncio.to_thread(generate, seed, size)  # a second of CPU: off the event loop
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
        for model, rows in (
            (Customer, data.customers),
            (Product, data.products),
            (Order, data.orders),
            (OrderLine, data.lines),
        ):
            for start in range(0, len(rows), 5000):
                await conn.execute(insert(model), rows[start : start + 5000])
        await conn.execute(insert(SeedInfo), [{"id": 1, "seed": seed, "size": size}])
    return True


async def prepare(engine: AsyncEngine, seed: int, size: int, lock_dir: Path) -> bool:
    """Schema and data for ``seed``/``size``; True when the data was (re)generated.

    Gunicorn's workers start together: a file lock lets one of them load while the others wait.
    """
    lock_dir.mkdir(parents=True, exist_ok=True)
    url_key = hashlib.sha256(str(engine.url).encode()).hexdigest()[:16]
    with open(lock_dir / f"seed-{url_key}.lock", "w") as lock:
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        try:
            return await _load(engine, seed, size)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
