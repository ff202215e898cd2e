"""Database signals (tips 2 and 6): queries per request, N+1, slow queries, pool use and checkout wait.

``instrument_engine(engine)`` hooks one SQLAlchemy 2 ``Engine`` or ``AsyncEngine`` (its
``sync_engine``): wrappers on its dialect's ``do_execute``, ``do_execute_no_params`` and
``do_executemany`` (what the cursor-execute events bracket) count and time each statement
and attribute it to the request found in ``collector._context.current`` (the greenlet
under ``AsyncEngine`` and the thread pool under sync endpoints both carry the context).
No event listener goes on the engine: with one, every ``Connection`` joins the engine's
event dispatcher and resolves its events one by one, a cost paid on every request.
Statements are fingerprinted and counted by ``collector._sql``, shared with the raw
drivers: an ``executemany`` of 8 parameter sets counts 8 statements but one round trip,
never an N+1 by itself.

Per request, when the route returns (``routes.on_route_exit``) and while any engine is
instrumented: the query count is observed for every request, so a route without queries
shows 0, and a request that ran one fingerprint at least ``n_plus_one_threshold`` times
counts once as an N+1, with the fingerprint, its count and the application line that ran
it (read once, at the repeat that reaches the threshold) as a span event and one log line
per route a minute. A statement over ``slow_query_threshold`` counts on its request's route
at once; statements outside requests are timed but belong to no route.

Thresholds come from keywords of ``instrument_engine`` or ``COLLECTOR_*`` variables: an
engine is often built where no app is in reach, so it does not read ``instrument(app)``'s.

Resources (tip 2) are counted for the whole process from the first ``instrument_engine``
on: every ``Engine`` constructed (``create_engine``/``create_async_engine``), plus the
instrumented engine itself, as ``db_engine``; every DBAPI connection any pool opens as
``db_connection``. Pool gauges and the checkout wait cover ``QueuePool`` and
``AsyncAdaptedQueuePool``; other pools do not queue. The wait is the time spent taking an
idle connection from the pool's queue, not the time opening a new one (that is tip 2's
cost). The gauges are read from the pool just before the metrics are (``metrics.REFRESHERS``),
not on each checkout; ``Engine.dispose`` is wrapped so that the pool it makes is timed too.

Every change goes through the patch ledger: the process-wide ones (``Engine.__init__``, the
``Pool`` connect listener) as component ``database``, each engine's wrappers as
``database/<pool label>#<id>``, so ``uninstrument_engine`` removes one engine's and
``collector.uninstrument`` of the last app all of them.

SQLAlchemy is imported only when an engine is instrumented: it is an optional dependency.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from collector import _faults, _patches, _sql
from collector._sql import POOL_STATES, fingerprint
from collector._updates import observer
from collector.metrics import DB_POOL_CONNECTIONS, DB_POOL_WAIT, RESOURCES_CREATED

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

__all__ = ["check_version", "fingerprint", "instrument_engine", "uninstrument_engine"]

COMPONENT = "database"
_DIALECT_METHODS = ("do_execute", "do_execute_no_params")


def check_version(version: str) -> None:
    """Refuse, at attach time, a SQLAlchemy whose events and pool internals we do not know."""
    try:
        major = int(version.split(".", 1)[0])
    except ValueError:
        major = 0
    if major != 2:
        raise RuntimeError(f"collector.instrument_engine supports SQLAlchemy 2.x, found {version}")


class _EngineHooks:
    """The wrappers on one instrumented engine (dialect, pool, ``dispose``), under one ledger component.

    No SQLAlchemy event listener: once an engine has one, every ``Connection`` built from
    it joins the engine's event dispatcher and resolves each event name on first use,
    which costs more per request than everything measured here.
    """

    def __init__(
        self, engine: Engine, pool_label: str, n_plus_one_threshold: int, slow_seconds: float
    ) -> None:
        self.engine = weakref.ref(engine)
        self.component = f"{COMPONENT}/{pool_label}#{id(engine)}"
        self.pool_label = pool_label
        self.threshold = n_plus_one_threshold
        self.slow_seconds = slow_seconds
        self.wait = observer(DB_POOL_WAIT.labels(pool_label))
        self.gauges = [DB_POOL_CONNECTIONS.labels(pool_label, state) for state in POOL_STATES]
        self.wrapped_pools: weakref.WeakSet[Pool] = weakref.WeakSet()
        self.initializing = False

    # Statements: the dialect's execute methods, the calls the cursor events bracket

    def wrap_dialect(self, dialect: Any) -> None:
        if _DIALECT_METHODS[0] in vars(dialect):  # an engine sharing it (execution_options) has it
            return
        for name in _DIALECT_METHODS:
            _patches.replace(self.component, dialect, name, self._timed(getattr(dialect, name), many=False))
        _patches.replace(
            self.component, dialect, "do_executemany", self._timed(dialect.do_executemany, many=True)
        )
        _patches.replace(self.component, dialect, "initialize", self._initializing(dialect.initialize))

    def _initializing(self, initialize: Callable[[Any], None]) -> Callable[[Any], None]:
        """The dialect's own statements on the first connection are not the request's."""

        @functools.wraps(initialize)
        def wrapped(connection: Any) -> None:
            self.initializing = True
            try:
                initialize(connection)
            finally:
                self.initializing = False

        return wrapped

    def _timed(self, execute: Callable[..., Any], *, many: bool) -> Callable[..., Any]:
        count = _sql.count
        finish = _sql.finish
        slow = self.slow_seconds
        threshold = self.threshold

        in_engine = _sql.in_engine

        @functools.wraps(execute)
        def timed(cursor: Any, statement: str, *args: Any) -> Any:
            if self.initializing:  # once, under SQLAlchemy's first-connect lock
                return execute(cursor, statement, *args)
            # do_executemany(cursor, statement, parameters, context): one round trip, a statement per set
            entry = count(statement, _executed(args[0]) if many else 1, threshold)
            # with a raw driver instrumented too, its wrappers leave this statement to us
            token = in_engine.set(True) if _sql.drivers else None
            start = perf_counter()
            try:
                return execute(cursor, statement, *args)
            finally:  # a failed statement is timed too; its exception goes on untouched
                finish(entry, perf_counter() - start, slow)
                if token is not None:
                    in_engine.reset(token)

        return timed

    # Pool

    def wrap_dispose(self, engine: Any) -> None:
        """``Engine.dispose`` swaps in a new pool: wrap that one as it is made."""
        dispose = type(engine).dispose
        engine_ref = self.engine

        @functools.wraps(dispose)
        def disposed(*args: Any, **kwargs: Any) -> None:
            target = engine_ref()
            try:
                dispose(target, *args, **kwargs)
            finally:
                try:
                    if target is not None:
                        self.wrap_pool(target.pool)
                except Exception as exc:
                    _faults.record("database", exc)

        _patches.replace(self.component, engine, "dispose", disposed)

    def update_pool_gauges(self) -> None:
        """Read the pool's counts into the gauges: run by ``metrics.refresh`` before they are read."""
        engine = self.engine()
        if engine is None:
            return
        pool: Any = engine.pool
        if not hasattr(pool, "checkedout"):
            return
        size, checked_out, overflow, idle = self.gauges
        size.set(pool.size())
        checked_out.set(pool.checkedout())
        # QueuePool counts overflow from -size up: only connections beyond the size are overflow
        overflow.set(max(pool.overflow(), 0))
        idle.set(pool.checkedin())

    def wrap_pool(self, pool: Any) -> None:
        """Time the wait for an idle connection in the pool's queue."""
        queue = getattr(pool, "_pool", None)
        if pool in self.wrapped_pools or queue is None or not hasattr(pool, "checkedout"):
            return
        get = queue.get
        wait = self.wait

        @functools.wraps(get)
        def timed_get(block: bool = True, timeout: float | None = None) -> Any:
            if timeout is None:  # QueuePool.dispose draining; checkouts always pass the pool timeout
                return get(block, timeout)
            start = perf_counter()
            try:
                return get(block, timeout)
            finally:
                try:
                    wait(perf_counter() - start)
                except Exception as exc:
                    _faults.record("database", exc)

        _patches.replace(self.component, queue, "get", timed_get)
        self.wrapped_pools.add(pool)


def _executed(parameters: Any) -> int:
    """Statements a batch of parameter sets runs: one per set."""
    try:
        return max(len(parameters), 1)
    except TypeError:
        return 1


def _refresh_pools() -> None:
    for hooks in list(_engines.values()):
        try:
            hooks.update_pool_gauges()
        except Exception as exc:
            _faults.record("database", exc)


# Resources created (tip 2), process-wide while any engine is instrumented

_counted_engines: weakref.WeakSet[Any] = weakref.WeakSet()
_db_engine_created: Any = None
_db_connection_created: Any = None


def _count_engine(engine: Any) -> None:
    if engine not in _counted_engines:
        _counted_engines.add(engine)
        _db_engine_created.inc()


def _count_connection(dbapi_connection: Any, record: Any) -> None:
    try:
        _db_connection_created.inc()
    except Exception as exc:
        _faults.record("database", exc)


def _install_process_hooks() -> None:
    """``Engine.__init__`` counted, the ``Pool`` connect listener, the request hook; all in the ledger."""
    global _db_engine_created, _db_connection_created
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    _db_engine_created = RESOURCES_CREATED.labels("db_engine")
    _db_connection_created = RESOURCES_CREATED.labels("db_connection")
    _patches.record(COMPONENT, "instrumented engines", _engines.clear)  # undone last: state follows
    original: Callable[..., None] = Engine.__dict__["__init__"]

    # create_engine and create_async_engine both construct an Engine; option copies do not
    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        try:
            _count_engine(self)
        except Exception as exc:
            _faults.record("database", exc)

    _patches.replace(COMPONENT, Engine, "__init__", __init__)
    event.listen(Pool, "connect", _count_connection)

    def remove_listener() -> None:
        if event.contains(Pool, "connect", _count_connection):
            event.remove(Pool, "connect", _count_connection)

    _patches.record(COMPONENT, "sqlalchemy.pool.Pool connect listener", remove_listener)
    _sql.attach(COMPONENT, _refresh_pools)
    _patches.record(COMPONENT, "statement source", lambda: _sql.detach(COMPONENT))


# Public API

_engines: weakref.WeakKeyDictionary[Any, _EngineHooks] = weakref.WeakKeyDictionary()


def pool_label(engine: Engine) -> str:
    """``driver://host:port/database`` of the engine's URL: no user, password or query."""
    url = engine.url
    host = url.host or ""
    if url.port:
        host = f"{host}:{url.port}"
    return f"{url.drivername}://{host}/{url.database or ''}"


def _sync_engine(engine: Any) -> Engine:
    from sqlalchemy.engine import Engine

    sync = getattr(engine, "sync_engine", engine)
    if not isinstance(sync, Engine):
        raise TypeError(
            f"collector.instrument_engine needs a SQLAlchemy Engine or AsyncEngine, got {engine!r}"
        )
    return sync


def instrument_engine(
    engine: Any,
    *,
    name: str | None = None,
    n_plus_one_threshold: int | None = None,
    slow_query_threshold: float | None = None,
) -> None:
    """Measure statements and pool of a SQLAlchemy ``Engine`` or ``AsyncEngine``; a second call does nothing.

    ``name`` is the ``pool`` label (default: the URL without credentials). The thresholds
    default to ``COLLECTOR_N_PLUS_ONE_THRESHOLD`` and ``COLLECTOR_SLOW_QUERY_THRESHOLD``.
    Raises at once on a SQLAlchemy other than 2.x or an object that is not an engine.
    """
    import sqlalchemy

    check_version(sqlalchemy.__version__)
    sync = _sync_engine(engine)
    if sync in _engines:
        return
    settings = _sql.settings(n_plus_one_threshold, slow_query_threshold)
    if not settings.enabled:
        return
    hooks = _EngineHooks(
        sync, name or pool_label(sync), settings.n_plus_one_threshold, settings.slow_query_threshold
    )
    if not _patches.active(COMPONENT):
        _install_process_hooks()
    _patches.record(hooks.component, "pool gauges", functools.partial(_forget_engine, sync, hooks))
    _engines[sync] = hooks
    _count_engine(sync)  # usually built before instrumenting, so the constructor hook missed it
    hooks.wrap_dialect(sync.dialect)
    hooks.wrap_dispose(sync)
    hooks.wrap_pool(sync.pool)


def _forget_engine(engine: Any, hooks: _EngineHooks) -> None:
    """Undone last of an engine's entries: it is no longer instrumented, its pool series go."""
    if _engines.get(engine) is hooks:
        del _engines[engine]
    if not any(other.pool_label == hooks.pool_label for other in _engines.values()):
        for state in POOL_STATES:
            with contextlib.suppress(KeyError):
                DB_POOL_CONNECTIONS.remove(hooks.pool_label, state)


def uninstrument_engine(engine: Any) -> None:
    """Remove every wrapper ``instrument_engine`` put on ``engine``; the process hooks go with the last."""
    hooks = _engines.get(_sync_engine(engine))
    if hooks is None:
        return
    _patches.undo(hooks.component)
    if not _engines:
        _patches.undo(COMPONENT)
