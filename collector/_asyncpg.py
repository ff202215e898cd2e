"""Raw asyncpg (tips 2 and 6): the statements, pools and connections of an app that uses no ORM.

``instrument_asyncpg()`` wraps, on asyncpg's classes, every call that sends statements:
``Connection.execute``/``executemany``/``fetch``/``fetchval``/``fetchrow``/``fetchmany``,
the ``copy_*`` family, prepared statements' ``fetch*``/``executemany``/``explain`` and the
first round trip of a cursor. Each is counted and fingerprinted by ``collector._sql``
(an ``executemany`` of N counts N statements, one round trip) and attributed to the request
in ``collector._context.current``. Not counted: what the driver sends for itself, the pool's
reset on release and the transaction control of ``Connection.transaction()`` (as SQLAlchemy's
never reaches its execute methods either), and statements under an instrumented SQLAlchemy
engine, which counts them itself.

Pools (``asyncpg.Pool``) are noticed at their first acquire: ``fastapi_db_pool_wait_seconds``
times ``Pool.acquire`` (which includes opening a connection when the pool grows), and the
gauges read ``size`` (the pool's ``max_size``), ``checked_out``, ``idle`` and ``overflow`` (0:
asyncpg does not overflow) before each scrape. Connections opened count as
``fastapi_resources_created_total{kind="db_connection"}``.

Every wrapper is in the patch ledger (component ``asyncpg``); asyncpg is imported only by
``instrument_asyncpg``, so an app that does not call it pays nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from time import perf_counter
from typing import Any
from urllib.parse import urlsplit

from collector import _faults, _patches, _sql
from collector import _resources as resources
from collector._sql import batch as _batch
from collector._sql import once as _once

__all__ = ["instrument_asyncpg", "uninstrument_asyncpg"]

COMPONENT = "asyncpg"
SUPPORTED = ((0, 30), (1, 0))  # get_reset_query, which tells the pool's reset apart, is 0.30
# What asyncpg's Transaction sends through Connection.execute; the pool's reset is told by identity.
_TRANSACTION = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE SAVEPOINT")


def _first_argument(self: Any, query: Any, *args: Any, **kwargs: Any) -> str | None:
    return query if isinstance(query, str) else None


def _execute_statement(self: Any, query: Any, *args: Any, **kwargs: Any) -> str | None:
    if not isinstance(query, str):
        return None
    # without arguments, the simple protocol: the pool's reset and transaction control go by here
    if not args and (query is self._reset_query or query.lstrip()[:17].upper().startswith(_TRANSACTION)):
        return None
    return query


def _own_query(self: Any, *args: Any, **kwargs: Any) -> str | None:
    return self._query if isinstance(self._query, str) else None


def _copy_records(self: Any, table_name: Any, *args: Any, **kwargs: Any) -> str:
    return f"COPY {table_name} FROM STDIN (FORMAT binary)"


def _after_first(count: Callable[..., int]) -> Callable[..., int]:
    """For methods whose statement is the first argument: count from the rest."""
    return lambda first=None, *rest: count(*rest) if rest else 1


def _targets(asyncpg: Any) -> list[tuple[Any, str, Callable[..., str | None], Callable[..., int]]]:
    from asyncpg.cursor import BaseCursor
    from asyncpg.prepared_stmt import PreparedStatement

    connection = asyncpg.connection.Connection
    return [
        (connection, "execute", _execute_statement, _once),
        (connection, "executemany", _first_argument, _after_first(_batch)),
        (connection, "fetch", _first_argument, _once),
        (connection, "fetchval", _first_argument, _once),
        (connection, "fetchrow", _first_argument, _once),
        (connection, "fetchmany", _first_argument, _after_first(_batch)),
        (connection, "_copy_out", _first_argument, _once),
        (connection, "_copy_in", _first_argument, _once),
        (connection, "copy_records_to_table", _copy_records, _once),
        (PreparedStatement, "fetch", _own_query, _once),
        (PreparedStatement, "fetchval", _own_query, _once),
        (PreparedStatement, "fetchrow", _own_query, _once),
        (PreparedStatement, "fetchmany", _own_query, _batch),
        (PreparedStatement, "executemany", _own_query, _batch),
        (PreparedStatement, "explain", _own_query, _once),
        (BaseCursor, "_bind_exec", _own_query, _once),
        (BaseCursor, "_bind", _own_query, _once),
    ]


def _check(asyncpg: Any) -> None:
    version = getattr(asyncpg, "__version__", "0")
    _sql.check_version("instrument_asyncpg", "asyncpg", version, SUPPORTED)
    missing = [
        f"{owner.__name__}.{name}"
        for owner, name, _, _ in _targets(asyncpg)
        if not callable(getattr(owner, name, None))
    ]
    pool = asyncpg.pool.Pool
    missing += [
        f"Pool.{name}" for name in ("_acquire", "get_size", "get_idle_size") if not hasattr(pool, name)
    ]
    if missing or not hasattr(asyncpg.connection.Connection, "get_reset_query"):
        raise RuntimeError(
            f"collector.instrument_asyncpg: asyncpg {version} lacks {', '.join(missing) or 'get_reset_query'}"
        )


# Pools


def _label(pool: Any) -> str:
    if _driver.name is not None:
        return _driver.name
    args = getattr(pool, "_connect_args", None) or ()
    options = getattr(pool, "_connect_kwargs", None) or {}
    host: Any = None
    port: Any = None
    database: Any = None
    if args and isinstance(args[0], str):
        parts = urlsplit(args[0])
        host, port, database = parts.hostname, parts.port, parts.path.lstrip("/")
    host = options.get("host", host)
    port = options.get("port", port)
    database = options.get("database", database)
    return _sql.url_label("asyncpg", host, port, database)


def _read(pool: Any) -> tuple[int, int, int]:
    size = pool.get_size()
    idle = pool.get_idle_size()
    return pool.get_max_size(), size - idle, idle


def _closed(pool: Any) -> bool:
    return bool(pool.is_closing())


_driver = _sql.Driver(COMPONENT, _read, _closed)


def _timed_acquire(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def _acquire(self: Any, timeout: Any) -> Any:
        try:
            wait = _driver.pools.wait(self, _label)
        except Exception as exc:
            _faults.record("database", exc)
            return await original(self, timeout)
        start = perf_counter()
        try:
            return await original(self, timeout)
        finally:
            try:
                wait(perf_counter() - start)
            except Exception as exc:
                _faults.record("database", exc)

    return _acquire


def instrument_asyncpg(
    *,
    name: str | None = None,
    n_plus_one_threshold: int | None = None,
    slow_query_threshold: float | None = None,
) -> None:
    """Count, time and fingerprint asyncpg's statements, measure its pools; a second call does nothing.

    ``name`` is the ``pool`` label of asyncpg pools (default: ``asyncpg://host:port/database``).
    The thresholds default to ``COLLECTOR_N_PLUS_ONE_THRESHOLD`` and ``COLLECTOR_SLOW_QUERY_THRESHOLD``.
    Raises at once, in one line, on an asyncpg whose internals are not the ones wrapped here.
    """
    import asyncpg

    _check(asyncpg)
    if _patches.active(COMPONENT):
        return
    settings = _sql.settings(n_plus_one_threshold, slow_query_threshold)
    if not settings.enabled:
        return
    _driver.begin(settings, name)
    for owner, method, statement_of, executed in _targets(asyncpg):
        _patches.replace(
            COMPONENT,
            owner,
            method,
            _sql.timed_async(getattr(owner, method), statement_of, executed, _driver),
        )
    pool = asyncpg.pool.Pool
    _patches.replace(COMPONENT, pool, "_acquire", _timed_acquire(pool._acquire))
    connection = asyncpg.connection.Connection
    _patches.replace(
        COMPONENT,
        connection,
        "__init__",
        resources.counting(connection.__init__, "db_connection", "database"),
    )
    _driver.end()


def uninstrument_asyncpg() -> None:
    """Remove every wrapper ``instrument_asyncpg`` put on asyncpg."""
    _patches.undo(COMPONENT)
