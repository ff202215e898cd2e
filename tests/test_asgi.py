"""The request path on a real uvicorn server: counts by route template, bounds, faults."""

from __future__ import annotations

import asyncio
import random
import string
import threading
import time
from typing import Any

import httpx
import websockets

from tests.conftest import value

APP = "tests.apps.core:app"
DURATION = "fastapi_request_duration_seconds_count"


def test_requests_are_counted_by_route_template_across_routers_and_mounts(serve: Any) -> None:
    server = serve(APP)
    sent = {"/api/users/{user_id}": 7, "/sub/things/{thing_id}": 4, "/items/{item_id}": 3}
    with server.client() as client:
        for i in range(sent["/api/users/{user_id}"]):
            assert client.get(f"/api/users/{i}").status_code == 200
        for i in range(sent["/sub/things/{thing_id}"]):
            assert client.get(f"/sub/things/{i}").status_code == 200
        for i in range(sent["/items/{item_id}"]):
            assert client.get(f"/items/{i}").status_code == 200
    metrics = server.metrics()
    for route, count in sent.items():
        assert value(metrics, DURATION, method="GET", route=route, status="200") == count
    assert value(metrics, DURATION) == sum(sent.values())  # /metrics itself is left out
    assert value(metrics, "fastapi_requests_in_progress") == 0


def test_route_handlers_report_async_and_sync_kinds(serve: Any) -> None:
    metrics = serve(APP).metrics()
    assert value(metrics, "fastapi_route_handlers", route="/api/users/{user_id}", kind="async") == 1
    assert value(metrics, "fastapi_route_handlers", route="/sub/things/{thing_id}", kind="sync") == 1
    assert value(metrics, "fastapi_route_handlers", route="/sync-sleep", kind="sync", method="GET") == 1
    assert value(metrics, "fastapi_route_handlers", route="/metrics") == 0


def test_unknown_paths_share_one_label_and_add_no_series(serve: Any) -> None:
    server = serve(APP)
    server.get("/no/such/path")
    before = {k for k in server.metrics() if k[0].startswith("fastapi_")}
    total = 10_000
    answered = attempts = 0

    async def flood() -> None:
        nonlocal answered, attempts
        limits = httpx.Limits(max_connections=20)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as client:

            async def worker() -> None:
                nonlocal answered, attempts
                rng = random.Random()
                while answered < total and attempts < total + 100:
                    attempts += 1
                    path = "/" + "".join(rng.choices(string.ascii_letters + string.digits, k=12))
                    try:
                        await client.get(path)
                    except httpx.TransportError:
                        continue  # a kept-alive connection closed under the client: try another path
                    answered += 1

            await asyncio.gather(*(worker() for _ in range(20)))

    asyncio.run(flood())
    metrics = server.metrics()
    after = {k for k in metrics if k[0].startswith("fastapi_")}
    assert after - before == set()
    assert answered >= total
    # A request whose connection broke may or may not have reached the app.
    assert answered + 1 <= value(metrics, DURATION, route="unmatched", status="404") <= attempts + 1


def test_unknown_methods_share_one_label(serve: Any) -> None:
    server = serve(APP)
    with server.client() as client:
        for verb in ("PROPFIND", "MKCOL", "LOCK"):  # methods the HTTP parser accepts
            client.request(verb, "/items/1")
    metrics = server.metrics()
    assert value(metrics, DURATION, method="other", route="/items/{item_id}") == 3


def test_middleware_inventory_flags_base_http_middleware(serve: Any) -> None:
    metrics = serve(APP).metrics()
    assert value(metrics, "fastapi_middlewares", name="timing_header", kind="base_http") == 1
    assert value(metrics, "fastapi_middlewares", name="ExplodingMiddleware", kind="asgi") == 1


def test_middleware_time_is_recorded_per_route(serve: Any) -> None:
    server = serve(APP)
    for _ in range(5):
        server.get("/items/1")
    metrics = server.metrics()
    assert value(metrics, "fastapi_middleware_duration_seconds_count", route="/items/{item_id}") == 5
    total = value(metrics, "fastapi_request_duration_seconds_sum", route="/items/{item_id}")
    middleware = value(metrics, "fastapi_middleware_duration_seconds_sum", route="/items/{item_id}")
    assert 0 < middleware < total


def test_background_tasks_under_base_http_middleware_stay_in_the_endpoint_time(serve: Any) -> None:
    # BaseHTTPMiddleware holds the last chunk back until the endpoint's background tasks are done.
    server = serve(APP)
    assert server.get("/background").json() == {"queued": True}
    time.sleep(0.5)  # the response may go out before the task has run
    metrics = server.metrics()
    total = value(metrics, "fastapi_request_duration_seconds_sum", route="/background")
    middleware = value(metrics, "fastapi_middleware_duration_seconds_sum", route="/background")
    assert total >= 0.3 - 0.002
    assert 0 < middleware < total - 0.25


def test_a_middleware_that_raises_is_counted_as_500(serve: Any) -> None:
    server = serve(APP)
    response = server.get("/items/1", headers={"x-explode": "1"})
    assert response.status_code == 500
    assert server.get("/items/2").status_code == 200
    metrics = server.metrics()
    assert value(metrics, DURATION, status="500") == 1
    assert value(metrics, DURATION, route="/items/{item_id}", status="200") == 1
    assert value(metrics, "fastapi_requests_in_progress") == 0


def test_a_handler_that_raises_is_counted_on_its_route(serve: Any) -> None:
    server = serve(APP)
    assert server.get("/raise").status_code == 500
    assert value(server.metrics(), DURATION, route="/raise", status="500") == 1


def test_streaming_response_is_timed_to_its_last_chunk(serve: Any) -> None:
    server = serve(APP)
    response = server.get("/stream", params={"chunks": 10})
    assert response.text.count("chunk") == 10
    metrics = server.metrics()
    assert value(metrics, DURATION, route="/stream", status="200") == 1
    assert value(metrics, "fastapi_request_duration_seconds_sum", route="/stream") >= 0.1


def test_client_disconnecting_mid_response_leaves_consistent_metrics(serve: Any) -> None:
    server = serve(APP)
    with server.client() as client, client.stream("GET", "/stream", params={"chunks": 200}) as response:
        for _ in response.iter_bytes():
            break  # hang up after the first chunk
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        metrics = server.metrics()
        if value(metrics, DURATION, route="/stream") == 1:
            break
        time.sleep(0.1)
    assert value(metrics, DURATION, route="/stream") == 1
    assert value(metrics, "fastapi_requests_in_progress", route="/stream") == 0
    assert server.get("/items/1").status_code == 200


def test_websocket_passes_through_untouched(serve: Any) -> None:
    server = serve(APP)

    async def talk() -> str:
        async with websockets.connect(server.url.replace("http", "ws") + "/ws") as ws:
            await ws.send("hello")
            return str(await ws.recv())

    assert asyncio.run(talk()) == "HELLO"
    metrics = server.metrics()
    assert value(metrics, DURATION, route="/ws") == 0
    assert value(metrics, DURATION) == 0


def test_requests_in_progress_counts_the_slow_one(serve: Any) -> None:
    server = serve(APP)
    thread = threading.Thread(target=server.get, args=("/async-sleep",), kwargs={"params": {"seconds": 1.0}})
    thread.start()
    try:
        deadline = time.monotonic() + 5
        seen = 0.0
        while time.monotonic() < deadline and not seen:
            seen = value(server.metrics(), "fastapi_requests_in_progress", route="/async-sleep")
            time.sleep(0.05)
        assert seen == 1
    finally:
        thread.join()
    assert value(server.metrics(), "fastapi_requests_in_progress", route="/async-sleep") == 0


def test_requests_in_progress_under_gunicorn_sums_the_workers(serve: Any, multiproc_dir: str) -> None:
    # Multi-process mode: each worker writes its count on its heartbeat, the scrape sums the live ones.
    env = {"PROMETHEUS_MULTIPROC_DIR": multiproc_dir, "COLLECTOR_PROCESS_SAMPLE_INTERVAL": "0.1"}
    server = serve(APP, server="gunicorn", workers=2, env=env)
    threads = [
        threading.Thread(target=server.get, args=("/async-sleep",), kwargs={"params": {"seconds": 1.5}})
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 5
        seen = 0.0
        while time.monotonic() < deadline and seen < 2:
            seen = value(server.metrics(), "fastapi_requests_in_progress", route="/async-sleep")
            time.sleep(0.05)
        assert seen == 2
    finally:
        for thread in threads:
            thread.join()
    time.sleep(0.5)
    assert value(server.metrics(), "fastapi_requests_in_progress", route="/async-sleep") == 0
