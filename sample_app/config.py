"""The sample app's settings, from the environment, checked once at start-up.

``DATABASE_URL``   SQLAlchemy async URL (``postgresql+asyncpg://...``); unset: an embedded SQLite file
``REDIS_URL``      ``redis://...``; unset: an in-process cache counted with ``collector.track_cache``
``SAMPLE_SEED``    seed of the generated shop data (default 42)
``SAMPLE_SIZE``    number of customers; products, orders and order lines scale with it (default 2000)
``SAMPLE_POOL_SIZE``  connections in the app's pool (default 10); tip 6's tiny pool has 1
``SAMPLE_STATIC_URL`` where the storefront's assets live when the app does not serve them (tip 7)
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

MIN_SIZE, MAX_SIZE = 100, 1_000_000


class ConfigError(ValueError):
    """A setting the app cannot use: its message is one line for the operator."""


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        number = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if not low <= number <= high:
        raise ConfigError(f"{name}={number} is out of range {low}..{high}")
    return number


def _async_database_url(url: str) -> str:
    """Accept the usual ``postgresql://`` spelling and run it on asyncpg."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+asyncpg://" + url[len(plain) :]
    if url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
        return url
    raise ConfigError(
        f"DATABASE_URL {url.split('://')[0]}:// is not supported: use postgresql:// or sqlite+aiosqlite://"
    )


@dataclass(frozen=True)
class Config:
    database_url: str
    redis_url: str | None
    seed: int
    size: int
    pool_size: int
    static_url: str
    work_dir: Path

    @property
    def embedded(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def static_dir(self) -> Path:
        return self.work_dir / "static"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        env = os.environ if env is None else env
        seed = _int(env, "SAMPLE_SEED", 42, 0, 2**31 - 1)
        size = _int(env, "SAMPLE_SIZE", 2000, MIN_SIZE, MAX_SIZE)
        work_dir = Path(env.get("SAMPLE_WORK_DIR") or Path(tempfile.gettempdir()) / "sample_app")
        raw_url = env.get("DATABASE_URL", "").strip()
        database_url = (
            _async_database_url(raw_url)
            if raw_url
            else f"sqlite+aiosqlite:///{work_dir / f'shop-seed{seed}-size{size}.db'}"
        )
        redis_url = env.get("REDIS_URL", "").strip() or None
        if redis_url is not None and not redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"REDIS_URL must start with redis://, rediss:// or unix://, not {redis_url!r}")
        return cls(
            database_url=database_url,
            redis_url=redis_url,
            seed=seed,
            size=size,
            pool_size=_int(env, "SAMPLE_POOL_SIZE", 10, 1, 1000),
            static_url=env.get("SAMPLE_STATIC_URL", "https://cdn.example.com/shop").rstrip("/"),
            work_dir=work_dir,
        )
