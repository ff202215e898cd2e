"""Statements, whatever runs them: the fingerprint normaliser and the per-request accounting (tip 6).

SQLAlchemy engines (``collector._database``) and the raw drivers (``collector._asyncpg``,
``collector._psycopg``) all report here, so a statement is fingerprinted, counted, timed
and judged an N+1 the same way whichever path ran it.

A fingerprint is the statement with everything that could carry data taken out:
comments (``--`` and nested ``/* */``) are dropped; string literals of every form
(``'...'``, ``E'...'`` with backslash escapes, ``B''``/``X''``/``N''``/``U&''``,
dollar-quoted ``$$...$$`` and ``$tag$...$tag$``), numbers, placeholders (``$1``,
``%s``, ``%(name)s``, ``:name``, ``?``) and lists of them become ``?``. An unterminated
literal or comment swallows the rest of the statement, as the server would read it.
Double-quoted names (``"User"``) are kept: they are identifiers, part of the schema the
code was written against, never a value a client sent, and the fingerprint needs them to
tell ``"User"`` from ``"Order"``. Fingerprints go on spans and in logs, never in labels.

Counting: a call that runs one statement once counts 1; a batched call (``executemany``
of 8 parameter sets) counts the 8 statements the server executes, in
``fastapi_db_queries_per_request``, but is one round trip: its fingerprint counts once
toward the N+1 threshold and its duration is observed once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import time
from collections.abc import Callable
from contextvars import ContextVar
from time import perf_counter
from typing import Any

from collector import _faults, _frames, _patches
from collector import _n_plus_one as n_plus_one_table
from collector import _routes as routes
from collector._context import RequestContext, current
from collector._settings import Settings, load
from collector._updates import observer, route_observer
from collector.metrics import (
    DB_N_PLUS_ONE,
    DB_POOL_CONNECTIONS,
    DB_POOL_WAIT,
    DB_QUERIES_PER_REQUEST,
    DB_QUERY_DURATION,
    DB_SLOW_QUERIES,
    REFRESHERS,
)

__all__ = ["Statement", "attach", "count", "detach", "fingerprint", "finish"]

logger = logging.getLogger("collector")

COMPONENT = "sql"
OPERATIONS = ("SELECT", "INSERT", "UPDATE", "DELETE")
POOL_STATES = ("size", "checked_out", "overflow", "idle")
_CACHE_MAX = 2048
_LOG_EVERY_SECONDS = 60.0
_LOG_FINGERPRINT_CHARS = 300

# Where something other than plain SQL text starts: a quoted name (kept), a comment or a literal
# (dropped). A prefix must not end a name: ``some_e'x'`` is the name ``some_e`` and a plain string.
_OPENER = re.compile(
    r"""(?P<name>")|(?P<line>--)|(?P<block>/\*)"""
    r"""|(?P<dollar>(?<![\w$])\$(?:[A-Za-z_\x80-\uffff][\w\x80-\uffff]*)?\$)"""
    r"""|(?P<escape>(?<![\w$])[Ee]')|(?P<string>(?:(?<![\w$])(?:[BbXxNn]|[Uu]&))?')"""
)
_NAME_END = re.compile(r'(?:[^"]|"")*(?:"|\Z)')
_STRING_END = re.compile(r"(?:[^']|'')*(?:'|\Z)")
_ESCAPE_END = re.compile(r"(?:[^'\\]|''|\\.)*(?:'|\Z)", re.S)
_BLOCK_TOKEN = re.compile(r"/\*|\*/")
# $1 (asyncpg), %(name)s and %s (psycopg), :name (but not ::casts), ? (sqlite)
_PLACEHOLDER = re.compile(r"\$\d+|%\(\w+\)s|%s|(?<![:\w]):\w+")
_NUMBER = re.compile(
    r"(?<![\w$?])(?:0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+"
    r"|(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\b"
)
_LIST = re.compile(r"\(\s*\?(?:\s*,\s*\?)*\s*\)")
_ROWS = re.compile(r"\(\?\)(?:\s*,\s*\(\?\))+")
_SPACE = re.compile(r"\s+")


def _block_end(text: str, start: int) -> int:
    """Where the block comment opened just before ``start`` closes (they nest in PostgreSQL)."""
    depth = 1
    for token in _BLOCK_TOKEN.finditer(text, start):
        depth += 1 if token.group() == "/*" else -1
        if depth == 0:
            return token.end()
    return len(text)


def _code(text: str) -> str:
    text = _PLACEHOLDER.sub("?", text)
    return _NUMBER.sub("?", text)


def fingerprint(statement: str) -> str:
    """The statement without comments, with literals, placeholders and lists of them reduced to ``?``."""
    parts: list[str] = []
    position = 0
    while (found := _OPENER.search(statement, position)) is not None:
        parts.append(_code(statement[position : found.start()]))
        kind = found.lastgroup
        end = found.end()
        if kind == "name":
            match = _NAME_END.match(statement, end)
            end = match.end() if match else len(statement)
            parts.append(statement[found.start() : end])
        elif kind == "line":
            newline = statement.find("\n", end)
            end = len(statement) if newline < 0 else newline
            parts.append(" ")
        elif kind == "block":
            end = _block_end(statement, end)
            parts.append(" ")
        elif kind == "dollar":
            close = statement.find(found.group(), end)
            end = len(statement) if close < 0 else close + len(found.group())
            parts.append("?")
        else:
            match = (_ESCAPE_END if kind == "escape" else _STRING_END).match(statement, end)
            end = match.end() if match else len(statement)
            parts.append("?")
        position = end
    parts.append(_code(statement[position:]))
    text = _LIST.sub("(?)", "".join(parts))
    text = _ROWS.sub("(?)", text)
    return _SPACE.sub(" ", text).strip()


class Statement:
    """One distinct statement string: its fingerprint and the duration series of its operation."""

    __slots__ = ("duration", "fingerprint")

    def __init__(self, fingerprint: str, duration: Callable[[float], None]) -> None:
        self.fingerprint = fingerprint
        self.duration = duration


# Raw drivers instrumented now; while one is, a SQLAlchemy statement marks itself in ``in_engine``
# so the driver's wrappers under it leave it to the engine's and it counts once.
drivers = 0
in_engine: ContextVar[bool] = ContextVar("collector_in_engine", default=False)

# Statement string -> Statement; cleared when full, so it stays bounded.
_statements: dict[str, Statement] = {}
_durations: dict[str, Callable[[float], None]] = {}
_per_request: dict[str, Callable[[float], None]] = {}
_n_plus_one: dict[str, Any] = {}
_slow: dict[str, Any] = {}
_last_logged: dict[str, float] = {}


def _statement(statement: str) -> Statement:
    head = statement.lstrip(" \t\r\n(")[:6].upper()
    operation = head if head in OPERATIONS else "other"
    child = _durations.get(operation)
    if child is None:
        child = _durations[operation] = observer(DB_QUERY_DURATION.labels(operation))
    entry = Statement(fingerprint(statement), child)
    if len(_statements) >= _CACHE_MAX:
        _statements.clear()
    _statements[statement] = entry
    return entry


def count(statement: str, executed: int, threshold: int) -> Statement | None:
    """A call that runs ``statement`` ``executed`` times in one round trip: counted on its request."""
    try:
        entry = _statements.get(statement) or _statement(statement)
        ctx = current.get()
        if ctx is not None:
            ctx.queries += executed
            seen = ctx.query_fingerprints
            if seen is None:
                ctx.query_fingerprints = seen = {}
            fingerprint = entry.fingerprint
            repeats = seen[fingerprint] = seen.get(fingerprint, 0) + 1
            if repeats == threshold:  # one stack walk per detection: the loop's line
                _repeated(ctx, fingerprint)
        return entry
    except Exception as exc:
        _faults.record("database", exc)
        return None


def finish(entry: Statement | None, seconds: float, slow_seconds: float) -> None:
    """The call ``count`` announced is done: its duration, and the slow case."""
    if entry is None:
        return
    try:
        entry.duration(seconds)
        if seconds >= slow_seconds:
            _slow_statement(entry, seconds)
    except Exception as exc:
        _faults.record("database", exc)


def _slow_statement(entry: Statement, seconds: float) -> None:
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


def _child(cache: dict[str, Any], metric: Any, route: str) -> Any:
    child = cache.get(route)
    if child is None:
        child = cache[route] = metric.labels(route)
    return child


def location() -> str:
    """The innermost application frame running this statement, across the AsyncEngine greenlet."""
    return _frames.caller_location(skip=0)


def _repeated(ctx: RequestContext, fingerprint: str) -> None:
    """A fingerprint reached the N+1 threshold in this request: note where its loop is."""
    if ctx.query_locations is None:
        ctx.query_locations = {}
    ctx.query_locations[fingerprint] = location()


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
    for statement, repeats, where in repeated:
        n_plus_one_table.record(route, statement, repeats, where)
    span = ctx.span
    if span is not None and span.is_recording():
        for statement, repeats, where in repeated:
            span.add_event(
                "db.n_plus_one",
                {
                    "db.statement.fingerprint": statement,
                    "db.statement.count": repeats,
                    "code.location": where,
                },
            )
    now = time.monotonic()
    if now - _last_logged.get(route, -_LOG_EVERY_SECONDS) >= _LOG_EVERY_SECONDS:
        _last_logged[route] = now
        statement, repeats, where = repeated[0]
        logger.warning(
            "collector: N+1 queries on %s %s: %r ran %d times in one request, from %s "
            "(tip 6: load related rows in one query, e.g. selectinload or a join)",
            ctx.method,
            route,
            statement[:_LOG_FINGERPRINT_CHARS],
            repeats,
            where,
        )


# Raw drivers' wrappers: a method that sends a statement, found by ``statement_of(self, *args,
# **kwargs)`` (None: not counted), ``executed(*args)`` times in one round trip.


class Driver:
    """A raw driver's state (thresholds, pool label, pools), reset when its ledger component is undone."""

    def __init__(
        self, component: str, read: Callable[[Any], tuple[int, int, int]], closed: Callable[[Any], bool]
    ) -> None:
        self.component = component
        self.threshold = 5
        self.slow_seconds = 0.5
        self.name: str | None = None  # the pool label the app chose
        self.pools = Pools(read, closed)

    def begin(self, settings: Settings, name: str | None) -> None:
        """Before the driver's patches: its state, undone last."""
        global drivers
        self.threshold = settings.n_plus_one_threshold
        self.slow_seconds = settings.slow_query_threshold
        self.name = name
        drivers += 1
        _patches.record(self.component, "driver state", self._forget)

    def end(self) -> None:
        """After the driver's patches: it reports statements and pools from now on."""
        attach(self.component, self.pools.refresh)
        _patches.record(self.component, "statement source", functools.partial(detach, self.component))

    def _forget(self) -> None:
        global drivers
        drivers -= 1
        self.pools.clear()
        self.name = None


def settings(n_plus_one_threshold: int | None, slow_query_threshold: float | None) -> Settings:
    """The settings of an ``instrument_*`` call: its keywords over ``COLLECTOR_*`` variables."""
    overrides: dict[str, Any] = {}
    if n_plus_one_threshold is not None:
        overrides["n_plus_one_threshold"] = n_plus_one_threshold
    if slow_query_threshold is not None:
        overrides["slow_query_threshold"] = slow_query_threshold
    return load(**overrides)


def check_version(call: str, package: str, version: str, supported: tuple[tuple[int, int], ...]) -> None:
    """One line, at attach time, for a driver version outside ``supported`` (lowest, first unsupported)."""
    low, high = supported
    numbers = [int(part) for part in re.findall(r"\d+", version)[:2]]
    if len(numbers) < 2 or not low <= (numbers[0], numbers[1]) < high:
        raise RuntimeError(
            f"collector.{call} supports {package} >={low[0]}.{low[1]},<{high[0]}.{high[1]}, found {version}"
        )


def once(*args: Any) -> int:
    return 1


def batch(params: Any, *rest: Any) -> int:
    """A statement per parameter set of an ``executemany`` (an unsized iterable counts as one)."""
    try:
        return max(len(params), 1)
    except TypeError:
        return 1


def _begin(
    self: Any,
    args: Any,
    kwargs: Any,
    statement_of: Callable[..., str | None],
    executed: Callable[..., int],
    limits: Driver,
) -> Statement | None:
    if in_engine.get():
        return None
    try:
        statement = statement_of(self, *args, **kwargs)
        return None if statement is None else count(statement, executed(*args), limits.threshold)
    except Exception as exc:
        _faults.record("database", exc)
        return None


def timed_async(
    original: Callable[..., Any],
    statement_of: Callable[..., str | None],
    executed: Callable[..., int],
    limits: Driver,
) -> Callable[..., Any]:
    @functools.wraps(original)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        entry = _begin(self, args, kwargs, statement_of, executed, limits)
        if entry is None:
            return await original(self, *args, **kwargs)
        start = perf_counter()
        try:
            return await original(self, *args, **kwargs)
        finally:
            finish(entry, perf_counter() - start, limits.slow_seconds)

    return wrapper


def timed_sync(
    original: Callable[..., Any],
    statement_of: Callable[..., str | None],
    executed: Callable[..., int],
    limits: Driver,
) -> Callable[..., Any]:
    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        entry = _begin(self, args, kwargs, statement_of, executed, limits)
        if entry is None:
            return original(self, *args, **kwargs)
        start = perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            finish(entry, perf_counter() - start, limits.slow_seconds)

    return wrapper


def counted(
    original: Callable[..., Any],
    statement_of: Callable[..., str | None],
    executed: Callable[..., int],
    limits: Driver,
) -> Callable[..., Any]:
    """For a method that hands back a stream or a copy context: counted when called, not timed."""

    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        _begin(self, args, kwargs, statement_of, executed, limits)
        return original(self, *args, **kwargs)

    return wrapper


# Pools, whatever their library: the wait for a connection, per pool label.

_waits: dict[str, Callable[[float], None]] = {}


def pool_wait(label: str) -> Callable[[float], None]:
    """The observer of ``fastapi_db_pool_wait_seconds{pool=label}``."""
    wait = _waits.get(label)
    if wait is None:
        wait = _waits[label] = observer(DB_POOL_WAIT.labels(label))
    return wait


# Per request: one hook for every statement source, attached while any source is instrumented.

_sources: dict[str, Callable[[], None]] = {}  # source -> its pool gauge reader


def _refresh() -> None:
    for update in list(_sources.values()):
        try:
            update()
        except Exception as exc:
            _faults.record("database", exc)


def attach(source: str, refresh_pools: Callable[[], None]) -> None:
    """``source`` (an engine, a driver) reports statements now; its pools are read before each scrape."""
    if not _patches.active(COMPONENT):
        _patches.record(COMPONENT, "statement sources", _sources.clear)
        _patches.record(COMPONENT, "N+1 table", n_plus_one_table.clear)
        routes.register(COMPONENT, routes.on_route_exit, _on_route_exit)
        routes.register(COMPONENT, REFRESHERS, _refresh)
    _sources[source] = refresh_pools


def detach(source: str) -> None:
    """``source`` stopped reporting; the request hook goes with the last one."""
    _sources.pop(source, None)
    if not _sources:
        _patches.undo(COMPONENT)


class Pools:
    """The pools a raw driver has handed connections from: wait observers and gauges, by pool label.

    A pool is noticed at its first acquire (no constructor to patch) and held until it is
    closed; the driver says how to read it: ``(size, checked_out, idle)``.
    """

    def __init__(self, read: Callable[[Any], tuple[int, int, int]], closed: Callable[[Any], bool]) -> None:
        self.read = read
        self.closed = closed
        self.pools: dict[int, tuple[Any, str]] = {}
        self.labels: dict[int, Callable[[float], None]] = {}

    def wait(self, pool: Any, label: Callable[[Any], str]) -> Callable[[float], None]:
        """The wait observer of ``pool``, noticing the pool the first time."""
        key = id(pool)
        wait = self.labels.get(key)
        if wait is None or self.pools[key][0] is not pool:
            name = label(pool)
            self.pools[key] = (pool, name)
            wait = self.labels[key] = pool_wait(name)
        return wait

    def refresh(self) -> None:
        totals: dict[str, list[int]] = {}  # pools sharing a label are summed
        for key, (pool, name) in list(self.pools.items()):
            if self.closed(pool):
                del self.pools[key], self.labels[key]
                self._remove(name)
                continue
            size, checked_out, idle = self.read(pool)
            total = totals.setdefault(name, [0, 0, 0, 0])
            for index, number in enumerate((size, checked_out, 0, idle)):
                total[index] += number
        for name, total in totals.items():
            for state, number in zip(POOL_STATES, total, strict=True):
                DB_POOL_CONNECTIONS.labels(name, state).set(number)

    def clear(self) -> None:
        for _, name in list(self.pools.values()):
            self._remove(name)
        self.pools.clear()
        self.labels.clear()

    def _remove(self, name: str) -> None:
        if any(other == name for _, other in self.pools.values()):
            return
        for state in POOL_STATES:
            with contextlib.suppress(KeyError):
                DB_POOL_CONNECTIONS.remove(name, state)


def url_label(scheme: str, host: Any, port: Any, database: Any) -> str:
    """``scheme://host:port/database``: no user, password or options."""
    where = f"{host or ''}:{port}" if port else str(host or "")
    return f"{scheme}://{where}/{database or ''}"
