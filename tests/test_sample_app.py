"""The sample shop: each tip's bad path moves that tip's signal and its good twin does not, on the
embedded default (SQLite, in-process cache) and on PostgreSQL + Redis; scenarios break only their tip."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from sample_app import load, report, seed
from sample_app.tips import FEATURES
from tests.conftest import (
    POSTGRES_URL,
    REDIS_URL,
    ROOT,
    VENV_BIN,
    Samples,
    Server,
    _wait_ready,
    free_port,
    scrape_until,
)
from tests.conftest import value as metric

SIZE = "2000"  # the default: tip 10's slow scan needs the data to be slow
ENV = {
    "SAMPLE_SIZE": SIZE,
    "COLLECTOR_INTERNALS_SAMPLE_RATIO": "1",  # time every request's validation (tip 3)
    "COLLECTOR_TRACING": "off",
    # Stall locations are kept first come: on a loaded machine, stray stalls could take every slot.
    "COLLECTOR_STALL_LOCATIONS_MAX": "1000",
    # The heaviest customers' slow scans take 0.18 to 0.32 s on an idle machine, their SQL twins about
    # 0.01 s: a profile threshold between the two, well clear of both.
    "COLLECTOR_PROFILE_THRESHOLD": "0.1",
    # Tip 10's tests read profiles; on 3.11 the profiler runs only when asked for by name (a short,
    # light run: the heap corruption it risks there needs minutes of sampling under load).
    "COLLECTOR_PROFILE_ON_PYTHON311": "true",
}


def _start(env: dict[str, str], log: Path, gunicorn_workers: int = 0) -> Server:
    """The app under uvicorn (or gunicorn, as the serve module runs it); slow starts are allowed."""
    port = free_port()
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **ENV, **env}
    for name in ("DATABASE_URL", "REDIS_URL"):
        if name not in env:
            environment.pop(name, None)
    if gunicorn_workers:
        cmd = [
            sys.executable,
            "-m",
            "sample_app.serve",
            "--port",
            str(port),
            "--workers",
            str(gunicorn_workers),
        ]
    else:
        cmd = [str(VENV_BIN / "uvicorn"), "sample_app.main:app", "--port", str(port), "--no-access-log"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log, environment)
    _wait_ready(server, "/health", timeout=90)
    return server


def _stop(server: Server) -> None:
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)


def _flush_redis() -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    client.close()


@pytest.fixture(scope="module", params=["embedded", "postgres_redis"])
def shop(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp(request.param)
    env = {"SAMPLE_WORK_DIR": str(work)}
    if request.param == "postgres_redis":
        env |= {"DATABASE_URL": POSTGRES_URL, "REDIS_URL": REDIS_URL}
        _flush_redis()
    server = _start(env, work / "server.log")
    yield server
    _stop(server)


def _get_all(server: Server, paths: list[str], concurrency: int = 1) -> list[httpx.Response]:
    with server.client() as client, ThreadPoolExecutor(concurrency) as pool:
        responses = list(pool.map(client.get, paths))
    assert all(r.status_code == 200 for r in responses), [(r.url, r.status_code) for r in responses][:3]
    return responses


def _delta(server: Server, paths: list[str], concurrency: int = 1) -> Callable[..., float]:
    """Drive ``paths``; returns ``d(name, **labels)``: how much that metric moved."""
    before = server.metrics()
    _get_all(server, paths, concurrency)
    after = server.metrics()
    return lambda name, **labels: metric(after, name, **labels) - metric(before, name, **labels)


def _mean(d: Callable[..., float], base: str, **labels: str) -> float:
    count = d(base + "_count", **labels)
    assert count > 0, (base, labels)
    return d(base + "_sum", **labels) / count


def test_sync_view_fills_the_thread_pool_and_async_twin_does_not(shop: Server) -> None:
    bad = _delta(shop, [f"/bad/orders/{i}/shipping-quote" for i in range(1, 61)], concurrency=60)
    good = _delta(shop, [f"/good/orders/{i}/shipping-quote" for i in range(1, 61)], concurrency=60)
    assert bad("fastapi_threadpool_queue_seconds_count") >= 60
    assert bad("fastapi_threadpool_queue_seconds_sum") > 0.01  # 60 blocking calls for 40 tokens
    assert good("fastapi_threadpool_queue_seconds_count") < 10
    kinds = shop.metrics()
    assert metric(kinds, "fastapi_route_handlers", route="/bad/orders/{order_id}/shipping-quote", kind="sync")
    assert metric(
        kinds, "fastapi_route_handlers", route="/good/orders/{order_id}/shipping-quote", kind="async"
    )


def test_engine_per_request_creates_resources_per_request_and_shared_engine_does_not(shop: Server) -> None:
    bad = _delta(shop, [f"/bad/products/{i}" for i in range(1, 21)])
    good = _delta(shop, [f"/good/products/{i}" for i in range(1, 21)])
    assert bad("fastapi_resources_created_total", kind="db_engine") >= 19
    assert bad("fastapi_resources_created_total", kind="db_connection") >= 19
    assert good("fastapi_resources_created_total") <= 2


def test_nested_response_model_costs_validation_and_bytes_and_lean_twin_does_not(shop: Server) -> None:
    bad = _delta(shop, ["/bad/orders"] * 10)
    good = _delta(shop, ["/good/orders"] * 10)
    bad_validation = _mean(bad, "fastapi_validation_duration_seconds", route="/bad/orders", phase="response")
    good_validation = _mean(
        good, "fastapi_validation_duration_seconds", route="/good/orders", phase="response"
    )
    assert bad_validation > 3 * good_validation
    bad_size = _mean(bad, "fastapi_response_size_bytes", route="/bad/orders")
    assert bad_size > 5 * _mean(good, "fastapi_response_size_bytes", route="/good/orders")


def test_one_millisecond_expiry_misses_every_time_and_five_minutes_hits(shop: Server) -> None:
    bad = _delta(shop, ["/bad/popular-products"] * 20)
    good = _delta(shop, ["/good/popular-products"] * 20)
    # Near 0 against near 1. On an oversubscribed machine a 1 ms entry is now and then read before Redis
    # sees it expire (16 misses of 20 were seen beside stress-ng), so the broken side is bounded, not exact.
    assert bad("fastapi_cache_requests_total", cache="shop", result="miss") >= 14
    assert bad("fastapi_cache_requests_total", cache="shop", result="hit") <= 6
    assert good("fastapi_cache_requests_total", cache="shop", result="hit") >= 19


def test_lazy_loading_is_an_n_plus_one_on_its_route_and_selectinload_is_not(shop: Server) -> None:
    bad = _delta(shop, ["/bad/orders/recent"] * 5)
    good = _delta(shop, ["/good/orders/recent"] * 5)
    assert bad("fastapi_db_n_plus_one_total", route="/bad/orders/recent") == 5
    assert good("fastapi_db_n_plus_one_total") == 0
    bad_queries = _mean(bad, "fastapi_db_queries_per_request", route="/bad/orders/recent")
    assert bad_queries > 5 * _mean(good, "fastapi_db_queries_per_request", route="/good/orders/recent")


def test_pool_of_one_makes_requests_wait_and_right_sized_pool_does_not(shop: Server) -> None:
    paths = [f"/{{}}/orders/{1 + i % 50}/invoice" for i in range(40)]
    bad = _delta(shop, [p.format("bad") for p in paths], concurrency=8)
    good = _delta(shop, [p.format("good") for p in paths], concurrency=8)
    bad_wait = bad("fastapi_db_pool_wait_seconds_sum", pool="tiny")
    assert bad_wait > 0.2  # 40 requests queue for one connection held ~20 ms each
    assert good("fastapi_db_pool_wait_seconds_sum", pool="main") < bad_wait / 4


def test_static_files_served_by_the_app_count_bytes_and_cdn_twin_does_not(shop: Server) -> None:
    bad = _delta(shop, ["/bad/storefront", "/static/catalog.js", "/static/catalog.css"])
    good = _delta(shop, ["/good/storefront"] * 3)
    assert bad("fastapi_static_bytes_total", mount="/static") == (192 + 48) * 1024
    assert bad("fastapi_static_responses_total", mount="/static") == 2
    assert good("fastapi_static_bytes_total") == 0


def test_base_http_middleware_stack_costs_more_than_pure_asgi_twin(shop: Server) -> None:
    _get_all(shop, ["/bad/account/customers/1", "/good/account/customers/1"] * 5)  # warm both
    route = "/{}/account/customers/{{customer_id}}"
    bad = _delta(shop, [f"/bad/account/customers/{i}" for i in range(1, 81)])
    good = _delta(shop, [f"/good/account/customers/{i}" for i in range(1, 81)])
    bad_mean = _mean(bad, "fastapi_middleware_duration_seconds", route=route.format("bad"))
    assert bad_mean > 1.3 * _mean(good, "fastapi_middleware_duration_seconds", route=route.format("good"))


def test_blocking_call_in_async_view_stalls_the_loop_at_its_location_and_to_thread_does_not(
    shop: Server,
) -> None:
    where = "fastapi_event_loop_stalls_total"
    bad = _delta(shop, [f"/bad/orders/{i}/total/GBP" for i in range(1, 6)])
    good = _delta(shop, [f"/good/orders/{i}/total/GBP" for i in range(1, 6)])
    after = shop.metrics()
    location = next(ls for _, ls in _stall_locations(after) if "clients.py:exchange_rate_blocking" in ls)
    assert location.startswith("sample_app/clients.py:exchange_rate_blocking:")
    assert bad(where, location=location) >= 4
    assert good(where, location=location) == 0
    assert (
        bad("fastapi_event_loop_stalled_requests_total", route="/bad/orders/{order_id}/total/{currency}") >= 4
    )


def _stall_locations(samples: Samples) -> list[tuple[str, str]]:
    return [(n, dict(ls)["location"]) for (n, ls) in samples if n == "fastapi_event_loop_stalls_total"]


def _heaviest_customers(count: int) -> list[int]:
    """The customers whose recommendations scan the most: their bad requests are surely slow."""
    data = seed.generate(42, int(SIZE))
    buyer = {o["id"]: o["customer_id"] for o in data.orders}
    lines: dict[int, int] = {}
    for line in data.lines:
        lines[buyer[line["order_id"]]] = lines.get(buyer[line["order_id"]], 0) + 1
    return sorted(lines, key=lambda c: -lines[c])[:count]


def test_slow_recommendations_are_profiled_and_fast_twin_is_not(shop: Server) -> None:
    bad = _delta(shop, [f"/bad/customers/{i}/recommendations" for i in _heaviest_customers(4)])
    good = _delta(shop, [f"/good/customers/{i}/recommendations" for i in range(1, 11)])
    assert bad("fastapi_profiles_captured_total", route="/bad/customers/{customer_id}/recommendations") >= 3
    assert good("fastapi_profiles_captured_total", route="/good/customers/{customer_id}/recommendations") <= 2


def test_twins_answer_the_same(shop: Server) -> None:
    for feature in FEATURES:
        if feature.tip in (3, 7):  # their responses differ on purpose: the model, the asset URLs
            continue
        for i in range(2):
            path = load.fill(feature.bad[0], random.Random(i), seed.counts(int(SIZE)))
            good_path = path.replace("/bad/", "/good/", 1)
            bad_body, good_body = (r.json() for r in _get_all(shop, [path, good_path]))
            assert bad_body == good_body, path


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/bad/orders/abc/invoice", 422),
        ("/good/orders/0/invoice", 422),
        ("/good/orders?limit=0", 422),
        ("/bad/orders?limit=x", 422),
        ("/good/orders/1/total/XXX", 422),
        ("/bad/account/customers/-1", 422),
        ("/good/orders/by-reference/" + "x" * 30, 422),
        ("/bad/orders/99999999999999999999/shipping-quote", 422),
        ("/good/products/999999", 404),
        ("/bad/orders/by-reference/nope", 404),
        ("/bad/customers/999999/recommendations", 200),  # nobody: no recommendations, not an error
        ("/static/../main.py", 404),
        ("/nowhere", 404),
    ],
)
def test_malformed_requests_get_fastapis_own_client_errors(shop: Server, path: str, status: int) -> None:
    response = shop.get(path)
    assert response.status_code == status, response.text
    with shop.client() as client:
        assert client.post("/good/orders").status_code == 405


# Scenarios: tip=N breaks tip N only, fixed breaks none.


def _broken(before: Samples, after: Samples) -> set[int]:
    """Which tips a run broke, from what the collector's metrics did during it."""
    d = lambda name, **labels: metric(after, name, **labels) - metric(before, name, **labels)  # noqa: E731
    routes = {dict(ls)["route"] for n, ls in after if n == "fastapi_request_duration_seconds_count"}
    requests = {r: d("fastapi_request_duration_seconds_count", route=r) for r in routes}
    sync = {
        dict(ls)["route"]
        for (n, ls), v in after.items()
        if n == "fastapi_route_handlers" and v and dict(ls)["kind"] == "sync"
    }
    broken = set()
    if sum(requests[r] for r in sync if r in requests) > 0:
        broken.add(1)
    if d("fastapi_resources_created_total", kind="db_engine") >= 2:
        broken.add(2)
    sizes = [  # static files are tip 7's
        d("fastapi_response_size_bytes_sum", route=r) / requests[r]
        for r in routes
        if requests[r] >= 1 and not r.startswith("/static")
    ]
    if max(sizes, default=0) > 30_000:
        broken.add(3)
    hits, misses = (d("fastapi_cache_requests_total", result=x) for x in ("hit", "miss"))
    if hits + misses >= 3 and hits < misses:
        broken.add(5)
    if d("fastapi_db_n_plus_one_total") > 0 or d("fastapi_db_pool_wait_seconds_count", pool="tiny") > 0:
        broken.add(6)
    if d("fastapi_static_bytes_total") > 0:
        broken.add(7)
    # Latency-borne signals are judged against the other routes of the same run: a loaded
    # machine slows every route alike, a broken tip slows its own.
    middleware = sorted(
        d("fastapi_middleware_duration_seconds_sum", route=r) / requests[r]
        for r in routes
        if requests[r] >= 5
    )
    if middleware and middleware[-1] > 4 * middleware[len(middleware) // 2]:
        broken.add(8)
    stalls = [(ls, v) for (n, ls), v in after.items() if n == "fastapi_event_loop_stalls_total"]
    if any(
        "exchange_rate_blocking" in dict(ls)["location"]
        and v - before.get(("fastapi_event_loop_stalls_total", ls), 0)
        for ls, v in stalls
    ):
        broken.add(9)
    profiles = {r: d("fastapi_profiles_captured_total", route=r) for r in routes if requests[r] >= 1}
    for route, captured in profiles.items():
        others = sum(profiles.values()) - captured, sum(requests.values()) - requests[route]
        share_elsewhere = others[0] / others[1] if others[1] else 0.0
        if captured >= 2 and captured / requests[route] >= max(0.5, 3 * share_elsewhere):
            broken.add(10)
    return broken


@pytest.fixture(scope="module")
def embedded_shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("scenarios")
    server = _start({"SAMPLE_WORK_DIR": str(work)}, work / "server.log")
    load.run(server.url, "mixed", 3.0, 30.0, seed=1)  # warm-up: first queries compile, lazy imports run
    yield server
    _stop(server)


# Middleware time and profiles of slow requests follow latency: a machine under heavy load (or tip 9's
# stalls) moves them on every route, so other scenarios are not judged on them; their own are.
LATENCY_BORNE = {8, 10}


# tip=9 first: on a loaded machine, stray stalls elsewhere could take up the bounded location labels.
@pytest.mark.parametrize(
    "scenario", ["tip=9", "fixed", "tip=4", *(f"tip={n}" for n in (1, 2, 3, 5, 6, 7, 8, 10))]
)
def test_scenario_breaks_its_tip_only(embedded_shop: Server, scenario: str) -> None:
    tip = int(scenario.split("=")[1]) if "=" in scenario else None
    # Tip 10's feature is a tenth of a scenario's traffic: a faster run so that it comes up.
    seconds, rate = (3.0, 60.0) if tip == 10 else (3.0, 30.0)
    before = embedded_shop.metrics()
    counts = load.run(embedded_shop.url, scenario, seconds, rate, seed=7)
    after = embedded_shop.metrics()
    assert counts.errors == 0, counts.statuses
    bad_paths = [p for f in FEATURES if f.tip == tip for p in f.bad]
    assert not bad_paths or any(counts.by_path.get(p) for p in bad_paths), counts.by_path
    expected = {tip} if tip not in (None, 4) else set()
    broken = _broken(before, after)
    assert broken - LATENCY_BORNE == expected - LATENCY_BORNE, counts.by_path
    if tip == 8:
        assert 8 in broken
    if tip == 10:  # a handful of requests: their own route is where to look
        route = "/bad/customers/{customer_id}/recommendations"
        assert metric(after, "fastapi_profiles_captured_total", route=route) > metric(
            before, "fastapi_profiles_captured_total", route=route
        )


def test_antipatterns_summary_names_the_tips_routes_and_locations(tmp_path: Path) -> None:
    server = _start({"SAMPLE_WORK_DIR": str(tmp_path)}, tmp_path / "server.log")
    try:
        counts = load.run(server.url, "antipatterns", 5.0, 40.0, seed=3)
        lines = report.summarize(server.get("/metrics").text)
    finally:
        _stop(server)
    assert counts.requests > 50
    assert len(lines) == 10
    flagged = {int(line.split()[2]) for line in lines if line.startswith("!")}
    assert {2, 5, 6, 7, 9} <= flagged
    summary = "\n".join(lines)
    assert "sample_app/clients.py:exchange_rate_blocking:" in summary
    assert "N+1 requests on /bad/orders/recent" in summary


# Load generator: scenarios as data, bounds, targets.


def test_scenario_plans_send_bad_paths_only_for_their_tip() -> None:
    every_bad = {p for f in FEATURES for p in f.bad}
    assert {p for p, _ in load.plan("antipatterns")} == every_bad
    assert not {p for p, _ in load.plan("fixed")} & every_bad
    assert {p for p, _ in load.plan("tip=6")} & every_bad == {
        p for f in FEATURES if f.tip == 6 for p in f.bad
    }
    assert load.plan("tip=4") == load.plan("fixed")
    mixed = {p for p, _ in load.plan("mixed")}
    assert every_bad <= mixed and {p for p, _ in load.plan("fixed")} <= mixed
    for name in ("antipatterns", "fixed", "mixed", "tip=1"):
        assert sum(w for _, w in load.plan(name)) == pytest.approx(sum(f.weight for f in FEATURES))


@pytest.mark.parametrize(
    "args",
    [
        ["--url", "http://example.com"],
        ["--url", "http://10.0.0.1:8000"],
        ["--url", "ftp://127.0.0.1"],
        ["--seconds", "0"],
        ["--rate", "-5"],
        ["--concurrency", "0"],
        ["--seconds", "nan"],
        ["--scenario", "tip=11"],
        ["--scenario", "everything"],
    ],
)
def test_load_generator_refuses_bad_input_in_one_line(args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sample_app.load", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ")


def test_load_generator_cli_drives_a_scenario_and_reports_counts(embedded_shop: Server) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sample_app.load",
            "--url",
            embedded_shop.url,
            "--scenario",
            "fixed",
            "--seconds",
            "2",
            "--rate",
            "20",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("fixed: ") and " 0 errors" in result.stdout
    assert "tip 4 is broken" in result.stderr  # one uvicorn process on a multi-core machine
    assert "requests" in result.stderr  # the progress line


# Data and serving.


def test_same_seed_gives_the_same_data_and_another_seed_does_not() -> None:
    assert seed.generate(42, 200).digest() == seed.generate(42, 200).digest()
    assert seed.generate(42, 200).digest() != seed.generate(43, 200).digest()


def test_seeded_databases_hold_the_generated_rows(tmp_path: Path) -> None:
    async def dump(name: str) -> list[Any]:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / name}")
        assert await seed.prepare(engine, 5, 150, tmp_path)
        assert not await seed.prepare(engine, 5, 150, tmp_path)  # already there: left alone
        async with engine.connect() as conn:
            rows = [
                list(r)
                for t in ("customers", "orders", "order_lines")
                for r in await conn.execute(text(f"SELECT * FROM {t} ORDER BY id"))
            ]
        await engine.dispose()
        return rows

    first, second = asyncio.run(dump("a.db")), asyncio.run(dump("b.db"))
    assert first == second
    data = seed.generate(5, 150)
    assert len(first) == len(data.customers) + len(data.orders) + len(data.lines)


def test_serve_runs_gunicorn_with_a_worker_per_core(tmp_path: Path) -> None:
    cores = os.cpu_count() or 1
    env = {"SAMPLE_WORK_DIR": str(tmp_path), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    server = _start(env, tmp_path / "server.log", gunicorn_workers=cores)
    try:
        samples = scrape_until(server.metrics, "fastapi_workers", cores)  # workers boot one after another
        index = json.loads(server.get("/").text)
    finally:
        _stop(server)
    assert metric(samples, "fastapi_workers") == metric(samples, "fastapi_cpu_cores") == cores
    assert index["counts"]["customers"] == int(SIZE)


def test_demo_ends_by_itself_with_the_summary_and_the_full_stack_pointer() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    result = subprocess.run(
        ["./scripts/demo", "--seconds", "5", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    # Which tips break within 5 s depends on how much load a busy machine lets through (a slow route
    # may finish no request in the window), so: the report, with most tips broken, each with its fix.
    summary = re.search(r"collector doctor: (\d+) of 10 tips broken", result.stdout)
    assert summary is not None, result.stdout[-3000:]
    broken = int(summary.group(1))
    assert broken >= 5, result.stdout[-3000:]
    assert result.stdout.count("BROKEN   Tip") == broken
    assert result.stdout.count("Fix: ") >= broken
    assert "docker compose up" in result.stdout


def test_demo_says_so_when_the_app_dies_during_the_load() -> None:
    """An app that dies mid-demo (here of SIGSEGV) is reported with its exit status and log, not a report."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    demo = subprocess.Popen(
        ["./scripts/demo", "--seconds", "8", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen = []
        assert demo.stdout is not None
        for line in demo.stdout:  # the app is up once the demo starts driving the load
            seen.append(line)
            if "driving the" in line:
                break
        assert "driving the" in "".join(seen), "".join(seen)
        found = subprocess.run(
            ["pgrep", "-f", f"uvicorn sample_app.main:app --host 127.0.0.1 --port {port} "],
            capture_output=True,
            text=True,
            check=False,
        )
        pids = [int(pid) for pid in found.stdout.split()]
        assert len(pids) == 1, found
        os.kill(pids[0], signal.SIGSEGV)
        out, err = demo.communicate(timeout=120)
        out = "".join(seen) + out
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()
    assert demo.returncode == 1, out[-2000:] + err[-2000:]
    assert "the sample app stopped during the load (exit status 139" in err
    assert "Fatal Python error: Segmentation fault" in err  # faulthandler's stacks, from the app's log
    assert "doctor's report" not in out
