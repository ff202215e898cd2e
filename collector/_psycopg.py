"""Raw psycopg 3 (tips 2 and 6): the statements, pools and connections of an app that uses no ORM.

``instrument_psycopg()`` wraps, on psycopg's cursor classes (sync and async, client- and
server-side), ``execute`` and ``executemany`` (timed), and ``stream`` and ``copy`` (counted
when called: they hand back a stream). ``Connection.execute`` and pipelines go through the
cursors. Each statement is counted and fingerprinted by ``collector._sql`` (an
``executemany`` of N counts N statements, one round trip) and attributed to the request in
``collector._context.current``. psycopg's own transaction control (``transaction()``, the
implicit ``BEGIN``) never reaches the cursors and is not counted, as under SQLAlchemy;
statements under an instrumented SQLAlchemy engine are left to the engine.

``psycopg_pool`` pools (``ConnectionPool``, ``AsyncConnectionPool``) are noticed at their
first ``getconn``: ``fastapi_db_pool_wait_seconds`` times it, and the gauges read
``size`` (``max_size``), ``checked_out``, ``idle`` and ``overflow`` (0) before each scrape.
Connections opened count as ``fastapi_resources_created_total{kind="db_connection"}``.

Every wrapper is in the patch ledger (component ``psycopg``); psycopg is imported only by
``instrument_psycopg``, so an app that does not call it pays nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from time import perf_counter
from typing import Any

from collector import _faults, _patches, _sql
from collector import _resources as resources
from collector._sql import batch, once

__all__ = ["instrument_psycopg", "uninstrument_psycopg"]

COMPONENT = "psycopg"
SUPPORTED = ((3, 1), (4, 0))
POOL_SUPPORTED = ((3, 2), (4, 0))


def _statement(self: Any, query: Any, *args: Any, **kwargs: Any) -> str | None:
    if isinstance(query, str):
        return query
    if isinstance(query, bytes):
        return query.decode("utf-8", "replace")
    as_string = getattr(query, "as_string", None)  # psycopg.sql.Composable
    return as_string(self) if as_string is not None else None


def _after_query(count: Callable[..., int]) -> Callable[..., int]:
    return lambda query=None, *rest: count(*rest) if rest else 1


def _targets(psycopg: Any) -> list[tuple[Any, str, Callable[..., Any]]]:
    """(class, method, wrapper maker) for every cursor method that sends statements."""
    many = _after_query(batch)
    found: list[tuple[Any, str, Callable[..., Any]]] = [
        (psycopg.Cursor, "executemany", functools.partial(_sql.timed_sync, executed=many)),
        (psycopg.AsyncCursor, "executemany", functools.partial(_sql.timed_async, executed=many)),
    ]
    # server-side cursors have their own execute (a DECLARE) and refuse executemany
    for cls in (psycopg.Cursor, psycopg.ServerCursor):
        found.append((cls, "execute", functools.partial(_sql.timed_sync, executed=once)))
    for cls in (psycopg.AsyncCursor, psycopg.AsyncServerCursor):
        found.append((cls, "execute", functools.partial(_sql.timed_async, executed=once)))
    for cls in (psycopg.Cursor, psycopg.AsyncCursor):
        for name in ("stream", "copy"):
            found.append((cls, name, functools.partial(_sql.counted, executed=once)))
    return found


def _check(psycopg: Any) -> None:
    version = getattr(psycopg, "__version__", "0")
    _sql.check_version("instrument_psycopg", "psycopg", version, SUPPORTED)
    try:
        missing = [f"{cls.__name__}.{name}" for cls, name, _ in _targets(psycopg) if name not in vars(cls)]
    except AttributeError as exc:
        missing = [str(exc)]
    if _connection_base(psycopg) is None:
        missing.append("a connection base class with __init__")
    if missing:
        raise RuntimeError(f"collector.instrument_psycopg: psycopg {version} lacks {', '.join(missing)}")


def _connection_base(psycopg: Any) -> Any:
    """The class whose ``__init__`` every sync and async connection runs once."""
    shared = [cls for cls in psycopg.Connection.__mro__ if cls in psycopg.AsyncConnection.__mro__]
    return next((cls for cls in shared if cls is not object and "__init__" in vars(cls)), None)


def _pool_classes() -> list[Any]:
    """psycopg_pool's pool classes, when it is installed and supported; none otherwise."""
    try:
        import psycopg_pool
    except ImportError:
        return []
    version = getattr(psycopg_pool, "__version__", "0")
    _sql.check_version("instrument_psycopg", "psycopg_pool", version, POOL_SUPPORTED)
    return [psycopg_pool.ConnectionPool, psycopg_pool.AsyncConnectionPool]


# Pools


def _label(pool: Any) -> str:
    if _driver.name is not None:
        return _driver.name
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(pool.conninfo, **(pool.kwargs or {}))
    return _sql.url_label("psycopg", params.get("host"), params.get("port"), params.get("dbname"))


def _read(pool: Any) -> tuple[int, int, int]:
    stats = pool.get_stats()
    size, idle = stats["pool_size"], stats["pool_available"]
    return pool.max_size, size - idle, idle


def _closed(pool: Any) -> bool:
    return bool(pool.closed)


_driver = _sql.Driver(COMPONENT, _read, _closed)


def _wait_of(pool: Any) -> Callable[[float], None] | None:
    try:
        return _driver.pools.wait(pool, _label)
    except Exception as exc:
        _faults.record("database", exc)
        return None


def _observe(wait: Callable[[float], None] | None, seconds: float) -> None:
    if wait is not None:
        try:
            wait(seconds)
        except Exception as exc:
            _faults.record("database", exc)


def _timed_getconn(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def getconn(self: Any, *args: Any, **kwargs: Any) -> Any:
        wait = _wait_of(self)
        start = perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            _observe(wait, perf_counter() - start)

    return getconn


def _timed_getconn_async(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def getconn(self: Any, *args: Any, **kwargs: Any) -> Any:
        wait = _wait_of(self)
        start = perf_counter()
        try:
            return await original(self, *args, **kwargs)
        finally:
            _observe(wait, perf_counter() - start)

    return getconn


def instrument_psycopg(
    *,
    name: str | None = None,
    n_plus_one_threshold: int | None = None,
    slow_query_threshold: float | None = None,
) -> None:
    """Count, time and fingerprint psycopg 3's statements, measure its pools; a second call does nothing.

    ``name`` is the ``pool`` label of the pools (default: ``psycopg://host:port/dbname``).
    The thresholds default to ``COLLECTOR_N_PLUS_ONE_THRESHOLD`` and ``COLLECTOR_SLOW_QUERY_THRESHOLD``.
    Raises at once, in one line, on a psycopg or psycopg_pool whose methods are not the ones wrapped here.
    """
    import psycopg

    _check(psycopg)
    pools = _pool_classes()
    if _patches.active(COMPONENT):
        return
    settings = _sql.settings(n_plus_one_threshold, slow_query_threshold)
    if not settings.enabled:
        return
    _driver.begin(settings, name)
    for cls, method, wrap in _targets(psycopg):
        wrapper = wrap(getattr(cls, method), statement_of=_statement, limits=_driver)
        _patches.replace(COMPONENT, cls, method, wrapper)
    for pool in pools:
        timed = _timed_getconn_async if "Async" in pool.__name__ else _timed_getconn
        _patches.replace(COMPONENT, pool, "getconn", timed(pool.getconn))
    base = _connection_base(psycopg)
    _patches.replace(
        COMPONENT, base, "__init__", resources.counting(base.__init__, "db_connection", "database")
    )
    _driver.end()


def uninstrument_psycopg() -> None:
    """Remove every wrapper ``instrument_psycopg`` put on psycopg and psycopg_pool."""
    _patches.undo(COMPONENT)
