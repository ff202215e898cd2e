"""Cache hits and misses: redis-py clients against a real Redis (db 15), cashews, fastapi-cache, trackers."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from cashews import Cache
from fastapi import FastAPI
from prometheus_client import REGISTRY
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

import collector
from collector import _cache as cache_module
from collector import _routes as routes
from tests.conftest import REDIS_URL, free_port, parse_metrics, value

METRIC = "fastapi_cache_requests_total"


def counts(name: str) -> tuple[float, float]:
    """(hits, misses) of cache ``name`` in this process."""
    get = REGISTRY.get_sample_value
    return (
        get(METRIC, {"cache": name, "result": "hit"}) or 0.0,
        get(METRIC, {"cache": name, "result": "miss"}) or 0.0,
    )


def counted_since(name: str, before: tuple[float, float]) -> tuple[float, float]:
    hits, misses = counts(name)
    return hits - before[0], misses - before[1]


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    key_prefix = f"collector-test:{uuid.uuid4().hex}:"
    yield key_prefix
    with redis.Redis.from_url(REDIS_URL) as client:
        keys = list(client.scan_iter(match=key_prefix + "*"))
        if keys:
            client.delete(*keys)


@pytest.fixture
def sync_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    collector.uninstrument_redis(client)
    client.close()


def _closed_port_client(cls: Any, retry: Any) -> Any:
    """A client of a Redis that is not there: a port nobody listens on, one quick retry."""
    return cls(host="127.0.0.1", port=free_port(), retry=retry(NoBackoff(), 1))


# A scripted mix of look-ups over present and absent keys; the expected counts come from
# replaying the script on a model of the data (GETDEL removes what it finds).
Script = list[tuple[str, str]]


def _script(prefix: str, seed: int) -> tuple[dict[str, str], set[str], Script, int, int]:
    strings = {f"{prefix}s:{i}": f"v{i}" for i in range(4)}
    hashes = {f"{prefix}h:{i}" for i in range(3)}
    string_keys = [*strings, f"{prefix}s:absent:1", f"{prefix}s:absent:2"]
    hash_keys = [*hashes, f"{prefix}h:absent"]
    rng = random.Random(seed)
    script: Script = []
    for _ in range(40):
        command = rng.choice(["GET", "GETEX", "GETDEL", "HGET", "GET"])
        script.append((command, rng.choice(hash_keys if command == "HGET" else string_keys)))
    present_strings, hits, misses = set(strings), 0, 0
    for command, key in script:
        found = key in hashes if command == "HGET" else key in present_strings
        hits, misses = hits + found, misses + (not found)
        if command == "GETDEL":
            present_strings.discard(key)
    assert hits and misses, "the script must mix hits and misses"
    return strings, hashes, script, hits, misses


def _call(client: Any, command: str, key: str) -> Any:
    if command == "HGET":
        return client.hget(key, "field")
    return getattr(client, command.lower())(key)


def test_sync_client_hit_ratio_equals_the_scripted_ratio(sync_client: redis.Redis, prefix: str) -> None:
    strings, hashes, script, hits, misses = _script(prefix, seed=1)
    sync_client.mset(strings)
    for key in hashes:
        sync_client.hset(key, "field", "1")
    collector.instrument_redis(sync_client, name="test-sync")
    before = counts("test-sync")

    for command, key in script:
        _call(sync_client, command, key)

    counted_hits, counted_misses = counted_since("test-sync", before)
    assert (counted_hits, counted_misses) == (hits, misses)
    assert counted_hits / (counted_hits + counted_misses) == hits / len(script)


def test_async_client_hit_ratio_equals_the_scripted_ratio(prefix: str) -> None:
    strings, hashes, script, hits, misses = _script(prefix, seed=2)

    async def run() -> tuple[float, float]:
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        try:
            await client.mset(strings)
            for key in hashes:
                await client.hset(key, "field", "1")
            collector.instrument_redis(client, name="test-async")
            before = counts("test-async")
            for command, key in script:
                await _call(client, command, key)
            return counted_since("test-async", before)
        finally:
            collector.uninstrument_redis(client)
            await client.aclose()

    counted_hits, counted_misses = asyncio.run(run())
    assert (counted_hits, counted_misses) == (hits, misses)
    assert counted_hits / (counted_hits + counted_misses) == hits / len(script)


def test_mget_and_hmget_count_each_key(sync_client: redis.Redis, prefix: str) -> None:
    present = [f"{prefix}k:{i}" for i in range(3)]
    keys = [present[0], f"{prefix}absent:1", present[1], present[2], f"{prefix}absent:2", present[0]]
    fields = ["a", "missing", "b"]
    sync_client.mset(dict.fromkeys(present, "1"))
    sync_client.hset(f"{prefix}hash", mapping={"a": "1", "b": "2"})
    collector.instrument_redis(sync_client, name="test-mget")
    before = counts("test-mget")

    values = sync_client.mget(keys) + sync_client.hmget(f"{prefix}hash", fields)

    expected_hits = sum(k in present for k in keys) + sum(f in ("a", "b") for f in fields)
    assert counted_since("test-mget", before) == (expected_hits, len(values) - expected_hits)
    assert sum(v is not None for v in values) == expected_hits


def test_mget_counts_each_key_on_the_async_client(prefix: str) -> None:
    keys = [f"{prefix}present", f"{prefix}absent:1", f"{prefix}absent:2", f"{prefix}present"]

    async def run() -> tuple[float, float]:
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        try:
            await client.set(f"{prefix}present", "1")
            collector.instrument_redis(client, name="test-async-mget")
            before = counts("test-async-mget")
            await client.mget(keys)
            return counted_since("test-async-mget", before)
        finally:
            collector.uninstrument_redis(client)
            await client.aclose()

    hits = sum(key == f"{prefix}present" for key in keys)
    assert asyncio.run(run()) == (hits, len(keys) - hits)


@pytest.mark.parametrize("transaction", [True, False], ids=["transaction", "pipeline"])
def test_pipelined_lookups_are_counted_once_each(
    sync_client: redis.Redis, prefix: str, transaction: bool
) -> None:
    sync_client.set(f"{prefix}a", "1")
    collector.instrument_redis(sync_client, name="test-pipeline")
    before = counts("test-pipeline")

    with sync_client.pipeline(transaction=transaction) as pipe:
        pipe.get(f"{prefix}a")
        pipe.get(f"{prefix}absent")
        pipe.set(f"{prefix}b", "2")
        pipe.mget(f"{prefix}a", f"{prefix}b")
        results = pipe.execute()

    assert results == [b"1", None, True, [b"1", b"2"]]
    assert counted_since("test-pipeline", before) == (3, 1)


def test_other_commands_are_not_counted(sync_client: redis.Redis, prefix: str) -> None:
    collector.instrument_redis(sync_client, name="test-other")
    before = counts("test-other")

    sync_client.set(f"{prefix}a", "1")
    sync_client.incr(f"{prefix}n")
    sync_client.exists(f"{prefix}a", f"{prefix}absent")
    sync_client.hset(f"{prefix}h", "f", "1")
    sync_client.hgetall(f"{prefix}h")

    assert counted_since("test-other", before) == (0, 0)


def test_a_failing_command_raises_as_before_and_is_not_counted(sync_client: redis.Redis, prefix: str) -> None:
    sync_client.hset(f"{prefix}hash", "f", "1")
    sync_client.set(f"{prefix}string", "1")
    with pytest.raises(redis.ResponseError) as plain:
        sync_client.get(f"{prefix}hash")
    collector.instrument_redis(sync_client, name="test-wrongtype")
    before = counts("test-wrongtype")

    with pytest.raises(redis.ResponseError) as instrumented:
        sync_client.get(f"{prefix}hash")
    with sync_client.pipeline(transaction=False) as pipe:
        pipe.get(f"{prefix}hash")
        pipe.hget(f"{prefix}string", "f")
        errors = pipe.execute(raise_on_error=False)

    assert str(instrumented.value) == str(plain.value)
    assert all(isinstance(e, redis.ResponseError) for e in errors)
    assert counted_since("test-wrongtype", before) == (0, 0)


def test_redis_down_raises_the_same_error_and_counts_no_miss() -> None:
    def error_of(client: redis.Redis) -> BaseException:
        with pytest.raises(redis.ConnectionError) as raised:
            client.get("key")
        return raised.value

    plain = _closed_port_client(redis.Redis, Retry)
    down = redis.Redis(connection_pool=plain.connection_pool)
    collector.instrument_redis(down, name="test-down")
    before = counts("test-down")
    try:
        expected, got = error_of(plain), error_of(down)
        with pytest.raises(redis.ConnectionError):
            down.mget("a", "b")
    finally:
        collector.uninstrument_redis(down)

    assert type(got) is type(expected) and str(got) == str(expected)
    assert counted_since("test-down", before) == (0, 0)


def test_async_redis_down_raises_the_same_error_and_counts_no_miss() -> None:
    async def run() -> tuple[BaseException, BaseException, tuple[float, float]]:
        plain = _closed_port_client(redis.asyncio.Redis, AsyncRetry)
        down = redis.asyncio.Redis(connection_pool=plain.connection_pool)
        collector.instrument_redis(down, name="test-async-down")
        before = counts("test-async-down")
        errors = []
        try:
            for client in (plain, down):
                with pytest.raises(redis.ConnectionError) as raised:
                    await client.get("key")
                errors.append(raised.value)
        finally:
            collector.uninstrument_redis(down)
        return errors[0], errors[1], counted_since("test-async-down", before)

    expected, got, counted = asyncio.run(run())
    assert type(got) is type(expected) and str(got) == str(expected)
    assert counted == (0, 0)


def test_instrumenting_twice_counts_once(sync_client: redis.Redis, prefix: str) -> None:
    collector.instrument_redis(sync_client, name="test-twice")
    collector.instrument_redis(sync_client, name="test-twice")
    collector.instrument_redis(sync_client, name="test-twice-other-name")
    before, before_other = counts("test-twice"), counts("test-twice-other-name")

    sync_client.get(f"{prefix}absent")
    sync_client.mget(f"{prefix}absent", f"{prefix}absent:2")

    assert counted_since("test-twice", before) == (0, 3)
    assert counted_since("test-twice-other-name", before_other) == (0, 0)


def test_uninstrument_stops_counting_and_restores_the_callbacks(
    sync_client: redis.Redis, prefix: str
) -> None:
    original = dict(sync_client.response_callbacks)
    collector.instrument_redis(sync_client, name="test-undo")
    before = counts("test-undo")

    collector.uninstrument_redis(sync_client)
    sync_client.get(f"{prefix}absent")
    collector.uninstrument_redis(sync_client)  # a second undo does nothing

    assert dict(sync_client.response_callbacks) == original
    assert counted_since("test-undo", before) == (0, 0)
    collector.instrument_redis(sync_client, name="test-undo")  # and it can be attached again
    sync_client.get(f"{prefix}absent")
    assert counted_since("test-undo", before) == (0, 1)


def test_only_the_instrumented_client_is_counted(sync_client: redis.Redis, prefix: str) -> None:
    collector.instrument_redis(sync_client, name="test-per-client")
    same_pool = redis.Redis(connection_pool=sync_client.connection_pool)
    before = counts("test-per-client")

    same_pool.get(f"{prefix}absent")
    same_pool.mget(f"{prefix}absent")

    assert counted_since("test-per-client", before) == (0, 0)


def test_instrument_redis_rejects_what_is_not_a_redis_client() -> None:
    with pytest.raises(TypeError, match=r"redis\.Redis"):
        collector.instrument_redis(object())
    with pytest.raises(ValueError, match="non-empty"):
        collector.instrument_redis(redis.Redis.from_url(REDIS_URL), name="")


# Trackers for any other cache -----------------------------------------------------------------


def test_track_cache_block_counts_one_result_and_nothing_when_it_raises() -> None:
    local = {"a": 1, "b": 2}
    script = ["a", "x", "b", "a", "y", "b", "z", "a"]
    before = counts("test-with")

    for key in script:
        with collector.track_cache("test-with") as lookup:
            lookup.check(local.get(key))
    with collector.track_cache("test-with") as lookup:
        lookup.hit()
    with collector.track_cache("test-with"):
        pass  # ends without a hit: a miss
    with pytest.raises(KeyError), collector.track_cache("test-with") as lookup:
        lookup.hit()
        raise KeyError("the block failed")

    hits = sum(key in local for key in script)
    assert counted_since("test-with", before) == (hits + 1, len(script) - hits + 1)


def test_track_cache_decorator_counts_none_as_a_miss_for_sync_and_async_getters() -> None:
    local = {"a": "A"}

    @collector.track_cache("test-deco")
    def get(key: str) -> str | None:
        if key == "boom":
            raise RuntimeError("backend failed")
        return local.get(key)

    @collector.track_cache("test-deco")
    async def aget(key: str) -> str | None:
        await asyncio.sleep(0)
        return local.get(key)

    before = counts("test-deco")
    results = [get("a"), get("b"), asyncio.run(aget("a")), asyncio.run(aget("c")), asyncio.run(aget("a"))]
    with pytest.raises(RuntimeError):
        get("boom")

    assert results == ["A", None, "A", None, "A"]
    assert counted_since("test-deco", before) == (3, 2)
    assert get.__name__ == "get" and aget.__name__ == "aget"


def test_record_cache_counts_hits_and_misses() -> None:
    before = counts("test-record")
    collector.record_cache("test-record", True)
    collector.record_cache("test-record", False, count=4)
    assert counted_since("test-record", before) == (1, 4)


def test_cache_names_past_the_limit_share_one_series(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "_MAX_NAMES", len(cache_module._counters))
    before = counts("other")
    collector.record_cache(f"test-unbounded-{uuid.uuid4().hex}", False)
    assert counted_since("other", before) == (0, 1)


def test_counting_adds_a_span_hook_once_an_app_is_instrumented_and_uninstrument_removes_it() -> None:
    collector.record_cache("test-hook", True)
    assert cache_module._annotate_span not in routes.on_route_exit  # no app: no request spans
    app = FastAPI()
    collector.instrument(app)
    collector.record_cache("test-hook-2", True)
    assert routes.on_route_exit.count(cache_module._annotate_span) == 1
    collector.uninstrument(app)
    assert cache_module._annotate_span not in routes.on_route_exit


# cashews ------------------------------------------------------------------------------------------


def test_cashews_lookups_and_decorator_are_counted(prefix: str) -> None:
    async def run() -> tuple[tuple[float, float], tuple[float, float], list[Any]]:
        cache = Cache()
        cache.setup(REDIS_URL)
        try:
            collector.instrument_cashews(cache, name="test-cashews")
            collector.instrument_cashews(cache, name="test-cashews")
            before = counts("test-cashews")
            calls = 0

            @cache(ttl="1m", key=prefix + "deco:{n}")
            async def load(n: int) -> dict[str, int]:
                nonlocal calls
                calls += 1
                return {"n": n}

            await cache.set(prefix + "a", "A")
            seen = [
                await cache.get(prefix + "a"),
                await cache.get(prefix + "absent"),
                await cache.get(prefix + "absent", default="fallback"),
                await cache.get_many(prefix + "a", prefix + "absent"),
                [await load(n) for n in (1, 2, 1, 1, 2, 3)],
                calls,
            ]
            counted = counted_since("test-cashews", before)
            collector.uninstrument_cashews(cache)
            await cache.get(prefix + "absent")
            return counted, counted_since("test-cashews", before), seen
        finally:
            await cache.close()

    counted, after_undo, seen = asyncio.run(run())
    # a, absent, absent+default, get_many (1 hit, 1 miss), then the decorator: 3 loads, 3 cached.
    assert seen[-1] == 3
    assert counted == (1 + 1 + 3, 1 + 1 + 1 + 3)
    assert after_undo == counted


# Through a real server ----------------------------------------------------------------------------


def _requests(server: Any, paths: list[str]) -> list[Any]:
    with server.client() as client:
        return [client.get(path) for path in paths]


def test_read_through_endpoints_report_the_true_hit_ratio(serve: Callable[..., Any], prefix: str) -> None:
    server = serve("tests.apps.cache:app", env={"CACHE_APP_PREFIX": prefix, "TEST_REDIS_URL": REDIS_URL})
    rng = random.Random(7)
    ids = [rng.randint(1, 6) for _ in range(25)]
    misses = len(set(ids))  # the first read of each user misses and fills the cache

    for base in ("/users", "/sync/users"):
        responses = _requests(server, [f"{base}/{i}" for i in ids])
        assert [r.json()["cached"] for r in responses].count(True) == len(ids) - misses
    samples = server.metrics()
    spans = server.get("/spans").json()

    for name, route in (("users", "/users/{user_id}"), ("users-sync", "/sync/users/{user_id}")):
        hits = value(samples, METRIC, cache=name, result="hit")
        missed = value(samples, METRIC, cache=name, result="miss")
        assert (hits, missed) == (len(ids) - misses, misses)
        assert hits / (hits + missed) == (len(ids) - misses) / len(ids)
        on_spans = [s for s in spans if s["route"] == route]
        assert len(on_spans) == len(ids)
        assert sum(s["hits"] for s in on_spans) == hits and sum(s["misses"] for s in on_spans) == missed


def test_adapters_count_fastapi_cache_cashews_and_a_tracked_getter(
    serve: Callable[..., Any], prefix: str
) -> None:
    server = serve("tests.apps.cache:app", env={"CACHE_APP_PREFIX": prefix, "TEST_REDIS_URL": REDIS_URL})
    rng = random.Random(11)
    ids = [rng.randint(1, 4) for _ in range(12)]
    first_reads = len(set(ids))
    paths = {
        "fastapi-cache": [f"/fastapi-cache/items/{i}" for i in ids],
        "cashews": [f"/cashews/items/{i}" for i in ids],
        "local": [f"/local/{prefix}{i}" for i in ids],  # the app's in-process dict
    }

    headers = [r.headers.get("x-fastapi-cache") for r in _requests(server, paths["fastapi-cache"])]
    for name in ("cashews", "local"):
        assert all(r.status_code == 200 for r in _requests(server, paths[name]))
    samples = server.metrics()

    assert headers.count("MISS") == first_reads and headers.count("HIT") == len(ids) - first_reads
    for name in paths:
        counted = (
            value(samples, METRIC, cache=name, result="hit"),
            value(samples, METRIC, cache=name, result="miss"),
        )
        assert counted == (len(ids) - first_reads, first_reads), name


def test_redis_down_in_the_app_gives_its_own_error_and_counts_no_miss(
    serve: Callable[..., Any], prefix: str
) -> None:
    server = serve("tests.apps.cache:app", env={"CACHE_APP_PREFIX": prefix, "TEST_REDIS_URL": REDIS_URL})

    responses = _requests(server, ["/gone/users/1", "/gone/users/2"])
    samples = parse_metrics(server.get("/metrics").text)

    assert [(r.status_code, r.json()) for r in responses] == [(503, {"error": "cache unavailable"})] * 2
    assert value(samples, METRIC, cache="gone", result="miss") == 0
    assert value(samples, METRIC, cache="gone", result="hit") == 0
    assert (
        value(samples, "fastapi_request_duration_seconds_count", route="/gone/users/{user_id}", status="503")
        == 2
    )
    assert not [s for s in server.get("/spans").json() if s["route"] == "/gone/users/{user_id}"]
