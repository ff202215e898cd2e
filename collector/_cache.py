"""Cache hits and misses (tip 5): redis-py clients, cashews, fastapi-cache's response header, any other cache.

    collector.instrument_redis(redis_client, name="sessions")   # GET/MGET/... on this client
    collector.instrument_cashews(cache)                          # cashews' get/get_many
    app.add_middleware(collector.CacheHeaderMiddleware)          # fastapi-cache's X-FastAPI-Cache
    users = collector.track_cache("users")                       # anything else: decorator or ``with``

Every source counts ``fastapi_cache_requests_total{cache, result}`` and adds to the
request's ``cache_hits``/``cache_misses``, which end up on the server span. A look-up
that fails (the cache is down, a wrong type) raises as it did and is not counted.
What ``instrument_redis`` and ``instrument_cashews`` add to a client is in the patch ledger
(component ``cache/<client>``), undone by their ``uninstrument_*`` or ``collector.uninstrument``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast

from collector import _faults, _patches
from collector import _routes as routes
from collector._context import RequestContext, current
from collector.metrics import CACHE_REQUESTS

logger = logging.getLogger("collector")

P = ParamSpec("P")
R = TypeVar("R")

# A name per cache is the developer's choice; past this many the rest share one series.
_MAX_NAMES = 100
_OVERFLOW = "other"

# Commands whose reply is one value, nil on a miss; and those whose reply is a list of them.
_SINGLE_VALUE = ("GET", "GETEX", "GETDEL", "HGET")
_MULTI_VALUE = ("MGET", "HMGET")


class _Counters:
    """The two labelled children of one cache name, made once."""

    __slots__ = ("hit", "miss")

    def __init__(self, name: str) -> None:
        self.hit = CACHE_REQUESTS.labels(name, "hit")
        self.miss = CACHE_REQUESTS.labels(name, "miss")

    def one(self, found: bool) -> None:
        ctx = current.get()
        if found:
            self.hit.inc()
            if ctx is not None:
                ctx.cache_hits += 1
        else:
            self.miss.inc()
            if ctx is not None:
                ctx.cache_misses += 1

    def count(self, hits: int, misses: int) -> None:
        if hits:
            self.hit.inc(hits)
        if misses:
            self.miss.inc(misses)
        ctx = current.get()
        if ctx is not None:
            ctx.cache_hits += hits
            ctx.cache_misses += misses


_counters: dict[str, _Counters] = {}


def _counters_for(name: str) -> _Counters:
    counters = _counters.get(name)
    if counters is not None:
        return counters
    if not isinstance(name, str) or not name:
        raise ValueError(f"collector: a cache name must be a non-empty string, not {name!r}")
    if len(_counters) >= _MAX_NAMES:
        logger.warning(
            "collector: more than %d cache names; %r is counted as %r", _MAX_NAMES, name, _OVERFLOW
        )
        name = _OVERFLOW
        if name in _counters:
            return _counters[name]
    counters = _counters[name] = _Counters(name)
    hook_spans()
    return counters


def hook_spans() -> None:
    """Put cache counts on request spans once some cache is counted and an app is instrumented.

    The hook costs a call per request, so it waits for the first cache; spans exist only on an
    instrumented app's requests, so it waits for the route hooks too, and is undone with them.
    """
    if _counters and _patches.active(routes.COMPONENT):
        routes.register(f"{routes.COMPONENT}/cache", routes.on_route_exit, _annotate_span)


def _annotate_span(ctx: RequestContext) -> None:
    span = ctx.span
    if span is None or not (ctx.cache_hits or ctx.cache_misses) or not span.is_recording():
        return
    span.set_attribute("collector.cache.hits", ctx.cache_hits)
    span.set_attribute("collector.cache.misses", ctx.cache_misses)


def record_cache(name: str, hit: bool, count: int = 1) -> None:
    """Count ``count`` look-ups of cache ``name`` (a fixed name, not a key) as hits or misses."""
    if hit:
        _counters_for(name).count(count, 0)
    else:
        _counters_for(name).count(0, count)


class CacheTracker:
    """Counts look-ups of one cache, as a context manager or as a decorator of a getter.

    ``with track_cache("users") as lookup:`` counts one result when the block ends: a miss
    unless ``lookup.hit()`` or ``lookup.check(value)`` found something; nothing when it raises.
    ``@track_cache("users")`` on a sync or async function counts a miss when it returns None,
    a hit otherwise, nothing when it raises.
    """

    __slots__ = ("_counters", "found")

    def __init__(self, name: str) -> None:
        self._counters = _counters_for(name)
        self.found = False

    def hit(self) -> None:
        self.found = True

    def miss(self) -> None:
        self.found = False

    def check(self, value: R) -> R:
        """A hit when ``value`` is not None; returns it."""
        self.found = value is not None
        return value

    def __enter__(self) -> CacheTracker:
        self.found = False
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self._counters.one(self.found)

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        counters = self._counters
        if inspect.iscoroutinefunction(fn):
            afn = cast(Callable[P, Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def async_lookup(*args: P.args, **kwargs: P.kwargs) -> Any:
                value = await afn(*args, **kwargs)
                counters.one(value is not None)
                return value

            return cast(Callable[P, R], async_lookup)

        @functools.wraps(fn)
        def lookup(*args: P.args, **kwargs: P.kwargs) -> R:
            value = fn(*args, **kwargs)
            counters.one(value is not None)
            return value

        return lookup


def track_cache(name: str) -> CacheTracker:
    """A tracker of cache ``name`` (a fixed name, not a key): make a new one for each ``with`` block."""
    return CacheTracker(name)


# redis-py ---------------------------------------------------------------------------------------
# redis-py has no hooks, but each client owns a dict of response callbacks that it, its
# pipelines and its transactions run on every successful reply (errors raise before it).
# Adding callbacks for the read commands counts them on that client only, costs nothing for
# other commands, and is undone by putting the dict back as it was.

_Callback = Callable[..., Any]
_MISSING: Any = object()
_redis_clients: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()  # client -> component


def _single_value_callback(counters: _Counters, original: _Callback | None) -> _Callback:
    def callback(response: Any, **options: Any) -> Any:
        try:
            counters.one(response is not None)
        except Exception as exc:
            _faults.record("cache", exc)
        return response if original is None else original(response, **options)

    return callback


def _multi_value_callback(counters: _Counters, original: _Callback | None) -> _Callback:
    def callback(response: Any, **options: Any) -> Any:
        try:
            misses = response.count(None)
            counters.count(len(response) - misses, misses)
        except Exception as exc:
            _faults.record("cache", exc)
        return response if original is None else original(response, **options)

    return callback


def _component(kind: str, client: Any) -> str:
    return f"cache/{kind}#{id(client)}"


def instrument_redis(client: Any, name: str = "redis") -> None:
    """Count hits and misses of ``client`` (``redis.Redis`` or ``redis.asyncio.Redis``) as cache ``name``.

    GET, GETEX, GETDEL and HGET count one look-up (nil is a miss), MGET and HMGET one per key,
    on the client and on its pipelines and transactions. A second call does nothing.
    """
    if client in _redis_clients:
        return
    import redis
    import redis.asyncio

    if not isinstance(client, redis.Redis | redis.asyncio.Redis):
        raise TypeError(
            f"collector.instrument_redis needs a redis.Redis or redis.asyncio.Redis, not {type(client)!r}"
        )
    counters = _counters_for(name)
    callbacks = cast(MutableMapping[str, _Callback], client.response_callbacks)
    component = _component("redis", client)
    _redis_clients[client] = component
    _patches.record(component, "instrumented redis client", lambda: _redis_clients.pop(client, None))
    for commands, make in ((_SINGLE_VALUE, _single_value_callback), (_MULTI_VALUE, _multi_value_callback)):
        for command in commands:
            original = callbacks.get(command, _MISSING)
            ours = make(counters, None if original is _MISSING else original)
            callbacks[command] = ours
            _patches.record(
                component,
                f"redis response callback {command}",
                _callback_restorer(callbacks, command, ours, original),
            )


def _callback_restorer(
    callbacks: MutableMapping[str, _Callback], command: str, ours: _Callback, original: Any
) -> Callable[[], None]:
    def restore() -> None:
        if callbacks.get(command) is not ours:  # replaced since: left as it is
            return
        if original is _MISSING:
            del callbacks[command]
        else:
            callbacks[command] = original

    return restore


def uninstrument_redis(client: Any) -> None:
    """Stop counting ``client``; its response callbacks are as they were (unless replaced since)."""
    component = _redis_clients.get(client)
    if component is not None:
        _patches.undo(component)


# cashews -----------------------------------------------------------------------------------------

_cashews_caches: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def instrument_cashews(cache: Any, name: str = "cashews") -> None:
    """Count ``get`` and ``get_many`` of a cashews ``Cache`` (its decorators use them) as cache ``name``.

    A look-up is a miss when cashews returns the caller's default. A second call does nothing.
    """
    if cache in _cashews_caches:
        return
    from cashews.commands import Command

    counters = _counters_for(name)
    get, get_many = Command.GET, Command.GET_MANY

    async def middleware(
        call: Callable[..., Awaitable[Any]], cmd: Any, backend: Any, *args: Any, **kwargs: Any
    ) -> Any:
        result = await call(*args, **kwargs)
        if cmd is get or cmd is get_many:
            try:
                default = kwargs.get("default")
                if cmd is get:
                    counters.one(result is not default)
                else:
                    misses = sum(1 for value in result if value is default)
                    counters.count(len(result) - misses, misses)
            except Exception as exc:
                _faults.record("cache", exc)
        return result

    component = _component("cashews", cache)
    _cashews_caches[cache] = component
    _patches.record(component, "instrumented cashews cache", lambda: _cashews_caches.pop(cache, None))
    cache.add_middleware(middleware)

    def remove() -> None:  # cashews has no public way to remove a middleware
        if middleware in cache._default_middlewares:
            cache._default_middlewares.remove(middleware)

    _patches.record(component, "cashews middleware", remove)


def uninstrument_cashews(cache: Any) -> None:
    """Stop counting a cashews ``Cache``."""
    component = _cashews_caches.get(cache)
    if component is not None:
        _patches.undo(component)


# Response header (fastapi-cache) -----------------------------------------------------------------


class CacheHeaderMiddleware:
    """Pure ASGI: counts responses whose cache-status header says HIT or MISS.

    fastapi-cache's ``@cache`` marks responses ``X-FastAPI-Cache: HIT|MISS`` (the header name is
    ``FastAPICache.init(cache_status_header=...)``). Note that fastapi-cache answers MISS when its
    backend fails, so a down backend shows here as misses.
    """

    def __init__(self, app: Any, name: str = "fastapi-cache", header: str = "x-fastapi-cache") -> None:
        self.app = app
        self._counters = _counters_for(name)
        self._header = header.lower().encode("latin-1")

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self._check(message.get("headers", ()))
            await send(message)

        await self.app(scope, receive, send_wrapper)

    def _check(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        header = self._header
        for key, value in headers:
            if key == header:
                status = value.upper()
                if status == b"HIT" or status == b"MISS":
                    try:
                        self._counters.one(status == b"HIT")
                    except Exception as exc:
                        _faults.record("cache", exc)
                return
