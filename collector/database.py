"""Database signals (tips 2 and 6): queries per request, N+1, slow queries, pool use and checkout wait.

``instrument_engine(engine)`` hooks one SQLAlchemy 2 ``Engine`` or ``AsyncEngine`` (its
``sync_engine``): wrappers on its dialect's ``do_execute``, ``do_execute_no_params`` and
``do_executemany`` (what the cursor-execute events bracket) count and time each statement
and attribute it to the request found in ``collector.context.current`` (the greenlet
under ``AsyncEngine`` and the thread pool under sync endpoints both carry the context).
No event listener goes on the engine: with one, every ``Connection`` joins the engine's
event dispatcher and resolves its events one by one, a cost paid on every request.
Statements are fingerprinted (literals, numbers, placeholders and IN-lists
normalised) through a bounded cache keyed by the statement string, which SQLAlchemy
reuses for parameterised queries; fingerprints go on spans and in logs, never in labels.

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

SQLAlchemy is imported only when an engine is instrumented: it is an optional dependency.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import sys
import time
import weakref
from collections.abc import Callable
from time import perf_counter
from types import FrameType
from typing import TYPE_CHECKING, Any

from collector import _faults, routes
from collector._updates import observer, route_observer
from collector.context import RequestContext, current
from collector.event_loop import LocationNamer
from collector.metrics import (
    DB_N_PLUS_ONE,
    DB_POOL_CONNECTIONS,
    DB_POOL_WAIT,
    DB_QUERIES_PER_REQUEST,
    DB_QUERY_DURATION,
    DB_SLOW_QUERIES,
    REFRESHERS,
    RESOURCES_CREATED,
)
from collector.settings import load

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

__all__ = ["check_version", "fingerprint", "instrument_engine", "uninstrument_engine"]

logger = logging.getLogger("collector")

OPERATIONS = ("SELECT", "INSERT", "UPDATE", "DELETE")
POOL_STATES = ("size", "checked_out", "overflow", "idle")
_CACHE_MAX = 2048
_LOG_EVERY_SECONDS = 60.0
_LOG_FINGERPRINT_CHARS = 300

_STRING = re.compile(r"'(?:[^']|'')*'")
# $1 (asyncpg), %(name)s and %s (psycopg), :name (but not ::casts), ? (sqlite)
_PLACEHOLDER = re.compile(r"\$\d+|%\(\w+\)s|%s|(?<![:\w]):\w+")
_NUMBER = re.compile(r"(?<![\w$?])\d+(?:\.\d*)?(?:[eE][-+]?\d+)?\b")
_LIST = re.compile(r"\(\s*\?(?:\s*,\s*\?)*\s*\)")
_ROWS = re.compile(r"\(\?\)(?:\s*,\s*\(\?\))+")
_SPACE = re.compile(r"\s+")


def fingerprint(statement: str) -> str:
    """The statement with literals, numbers, placeholders and lists of them reduced to ``?``."""
    text = _STRING.sub("?", statement)
    text = _PLACEHOLDER.sub("?", text)
    text = _NUMBER.sub("?", text)
    text = _LIST.sub("(?)", text)
    text = _ROWS.sub("(?)", text)
    return _SPACE.sub(" ", text).strip()


def check_version(version: str) -> None:
    """Refuse, at attach time, a SQLAlchemy whose events and pool internals we do not know."""
    try:
        major = int(version.split(".", 1)[0])
    except ValueError:
        major = 0
    if major != 2:
        raise RuntimeError(f"collector.instrument_engine supports SQLAlchemy 2.x, found {version}")


class _Statement:
    __slots__ = ("duration", "fingerprint")

    def __init__(self, fingerprint: str, duration: Any) -> None:
        self.fingerprint = fingerprint
        self.duration = duration


# Statement string -> its fingerprint and duration child; cleared when full, so it stays bounded.
_statements: dict[str, _Statement] = {}
_durations: dict[str, Any] = {}
_per_request: dict[str, Callable[[float], None]] = {}
_n_plus_one: dict[str, Any] = {}
_slow: dict[str, Any] = {}
_last_logged: dict[str, float] = {}
_namer: LocationNamer | None = None


def _statement(statement: str) -> _Statement:
    head = statement.lstrip(" \t\r\n(")[:6].upper()
    operation = head if head in OPERATIONS else "other"
    child = _durations.get(operation)
    if child is None:
        child = _durations[operation] = observer(DB_QUERY_DURATION.labels(operation))
    entry = _Statement(fingerprint(statement), child)
    if len(_statements) >= _CACHE_MAX:
        _statements.clear()
    _statements[statement] = entry
    return entry


def _child(cache: dict[str, Any], metric: Any, route: str) -> Any:
    child = cache.get(route)
    if child is None:
        child = cache[route] = metric.labels(route)
    return child


def _location() -> str:
    """The innermost application frame running this statement, across the AsyncEngine greenlet."""
    namer = _namer if _namer is not None else LocationNamer()
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if namer.is_app_file(frame.f_code.co_filename):
            return namer.name(frame)
        frame = frame.f_back
    try:  # under AsyncEngine the statement runs in a child greenlet; the awaiting code is its parent's
        import greenlet

        parent = greenlet.getcurrent().parent
        while parent is not None:
            frame = parent.gr_frame
            while frame is not None:
                if namer.is_app_file(frame.f_code.co_filename):
                    return namer.name(frame)
                frame = frame.f_back
            parent = parent.parent
    except ImportError:
        pass
    return namer.name(sys._getframe(1))


_DIALECT_METHODS = ("do_execute", "do_execute_no_params", "do_executemany")


class _EngineHooks:
    """The wrappers on one instrumented engine (dialect, pool, ``dispose``), so they can be removed.

    No SQLAlchemy event listener: once an engine has one, every ``Connection`` built from
    it joins the engine's event dispatcher and resolves each event name on first use,
    which costs more per request than everything measured here.
    """

    def __init__(
        self, engine: Engine, pool_label: str, n_plus_one_threshold: int, slow_seconds: float
    ) -> None:
        self.engine = weakref.ref(engine)
        self.pool_label = pool_label
        self.threshold = n_plus_one_threshold
        self.slow_seconds = slow_seconds
        self.wait = observer(DB_POOL_WAIT.labels(pool_label))
        self.gauges = [DB_POOL_CONNECTIONS.labels(pool_label, state) for state in POOL_STATES]
        self.wrapped_pools: weakref.WeakSet[Pool] = weakref.WeakSet()
        self.dialect: Any = None
        self.initializing = False

    # Statements: the dialect's execute methods, the calls the cursor events bracket

    def wrap_dialect(self, dialect: Any) -> None:
        if _DIALECT_METHODS[0] in vars(dialect):  # an engine sharing it (execution_options) has it
            return
        for name in _DIALECT_METHODS:
            setattr(dialect, name, self._timed(getattr(dialect, name)))
        dialect.initialize = self._initializing(dialect.initialize)
        self.dialect = dialect

    def unwrap_dialect(self) -> None:
        if self.dialect is not None:
            for name in (*_DIALECT_METHODS, "initialize"):
                self.dialect.__dict__.pop(name, None)
            self.dialect = None

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

    def _timed(self, execute: Callable[..., Any]) -> Callable[..., Any]:
        slow_statement = self.slow_statement
        get = _statements.get
        slow = self.slow_seconds
        threshold = self.threshold

        @functools.wraps(execute)
        def timed(cursor: Any, statement: str, *args: Any) -> Any:
            if self.initializing:  # once, under SQLAlchemy's first-connect lock
                return execute(cursor, statement, *args)
            try:
                entry: _Statement | None = get(statement) or _statement(statement)
                ctx = current.get()
                if ctx is not None:
                    ctx.queries += 1
                    seen = ctx.query_fingerprints
                    if seen is None:
                        ctx.query_fingerprints = {entry.fingerprint: 1}  # type: ignore[union-attr]
                    else:
                        fingerprint = entry.fingerprint  # type: ignore[union-attr]
                        count = seen[fingerprint] = seen.get(fingerprint, 0) + 1
                        if count == threshold:  # one stack walk per detection: the loop's line
                            _repeated(ctx, fingerprint)
            except Exception as exc:
                _faults.record("database", exc)
                entry = None
            start = perf_counter()
            try:
                return execute(cursor, statement, *args)
            finally:  # a failed statement is timed too; its exception goes on untouched
                seconds = perf_counter() - start
                if entry is not None:
                    try:
                        entry.duration(seconds)
                        if seconds >= slow:
                            slow_statement(entry, seconds)
                    except Exception as exc:
                        _faults.record("database", exc)

        return timed

    def slow_statement(self, entry: _Statement, seconds: float) -> None:
        """A statement over the slow threshold: counted on its request's route, fingerprint on the span."""
        ctx = current.get()
        if ctx is not None:
            ctx.slow_queries += 1
            _child(_slow, DB_SLOW_QUERIES, ctx.route_label).inc()
            span = ctx.span
            if span is not None and span.is_recording():
                span.add_event(
                    "db.slow_query",
                    {"db.statement.fingerprint": entry.fingerprint, "db.duration_seconds": seconds},
                )

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

        engine.dispose = disposed

    def unwrap_dispose(self) -> None:
        engine = self.engine()
        if engine is not None:
            engine.__dict__.pop("dispose", None)

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

        queue.get = timed_get
        self.wrapped_pools.add(pool)

    def unwrap_pools(self) -> None:
        for pool in list(self.wrapped_pools):
            queue = getattr(pool, "_pool", None)
            if queue is not None:
                queue.__dict__.pop("get", None)
        self.wrapped_pools = weakref.WeakSet()


def _refresh_pools() -> None:
    for hooks in list(_engines.values()):
        try:
            hooks.update_pool_gauges()
        except Exception as exc:
            _faults.record("database", exc)


# Per request


def _repeated(ctx: RequestContext, fingerprint: str) -> None:
    """A fingerprint reached the N+1 threshold in this request: note where its loop is."""
    if ctx.query_locations is None:
        ctx.query_locations = {}
    ctx.query_locations[fingerprint] = _location()


def _on_route_exit(ctx: RequestContext) -> None:
    route = ctx.route_label
    route_observer(_per_request, DB_QUERIES_PER_REQUEST, route)(ctx.queries)
    locations = ctx.query_locations
    if locations is not None and ctx.query_fingerprints is not None:
        seen = ctx.query_fingerprints
        repeated = [(fingerprint, seen[fingerprint], where) for fingerprint, where in locations.items()]
        _report_n_plus_one(ctx, route, repeated)


def _report_n_plus_one(ctx: RequestContext, route: str, repeated: list[tuple[str, int, str]]) -> None:
    _child(_n_plus_one, DB_N_PLUS_ONE, route).inc()
    span = ctx.span
    if span is not None and span.is_recording():
        for statement, count, location in repeated:
            span.add_event(
                "db.n_plus_one",
                {
                    "db.statement.fingerprint": statement,
                    "db.statement.count": count,
                    "code.location": location,
                },
            )
    now = time.monotonic()
    if now - _last_logged.get(route, -_LOG_EVERY_SECONDS) >= _LOG_EVERY_SECONDS:
        _last_logged[route] = now
        statement, count, location = repeated[0]
        logger.warning(
            "collector: N+1 queries on %s %s: %r ran %d times in one request, from %s "
            "(tip 6: load related rows in one query, e.g. selectinload)",
            ctx.method,
            route,
            statement[:_LOG_FINGERPRINT_CHARS],
            count,
            location,
        )


# Resources created (tip 2), process-wide while any engine is instrumented

_counted_engines: weakref.WeakSet[Any] = weakref.WeakSet()
_engine_init: Callable[..., None] | None = None
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
    """Install once; engines collected without ``uninstrument_engine`` leave them in place."""
    global _engine_init, _db_engine_created, _db_connection_created, _namer
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    if _engine_init is not None:
        return
    _namer = LocationNamer()
    _db_engine_created = RESOURCES_CREATED.labels("db_engine")
    _db_connection_created = RESOURCES_CREATED.labels("db_connection")
    original: Callable[..., None] = Engine.__dict__["__init__"]

    # create_engine and create_async_engine both construct an Engine; option copies do not
    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        try:
            _count_engine(self)
        except Exception as exc:
            _faults.record("database", exc)

    _engine_init = original
    setattr(Engine, "__init__", __init__)  # noqa: B010
    event.listen(Pool, "connect", _count_connection)
    routes.on_route_exit.append(_on_route_exit)
    REFRESHERS.append(_refresh_pools)


def _remove_process_hooks() -> None:
    global _engine_init
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    if _engine_init is not None:
        setattr(Engine, "__init__", _engine_init)  # noqa: B010
        _engine_init = None
    if event.contains(Pool, "connect", _count_connection):
        event.remove(Pool, "connect", _count_connection)
    if _on_route_exit in routes.on_route_exit:
        routes.on_route_exit.remove(_on_route_exit)
    if _refresh_pools in REFRESHERS:
        REFRESHERS.remove(_refresh_pools)


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
    overrides: dict[str, Any] = {}
    if n_plus_one_threshold is not None:
        overrides["n_plus_one_threshold"] = n_plus_one_threshold
    if slow_query_threshold is not None:
        overrides["slow_query_threshold"] = slow_query_threshold
    settings = load(**overrides)
    if not settings.enabled:
        return
    hooks = _EngineHooks(
        sync, name or pool_label(sync), settings.n_plus_one_threshold, settings.slow_query_threshold
    )
    if not _engines:
        _install_process_hooks()
    _engines[sync] = hooks
    _count_engine(sync)  # usually built before instrumenting, so the constructor hook missed it
    hooks.wrap_dialect(sync.dialect)
    hooks.wrap_dispose(sync)
    hooks.wrap_pool(sync.pool)


def uninstrument_engine(engine: Any) -> None:
    """Remove every wrapper ``instrument_engine`` put on ``engine``."""
    sync = _sync_engine(engine)
    hooks = _engines.pop(sync, None)
    if hooks is None:
        return
    hooks.unwrap_dialect()
    hooks.unwrap_dispose()
    hooks.unwrap_pools()
    if not any(other.pool_label == hooks.pool_label for other in _engines.values()):
        for state in POOL_STATES:
            with contextlib.suppress(KeyError):
                DB_POOL_CONNECTIONS.remove(hooks.pool_label, state)
    if not _engines:
        _remove_process_hooks()
