"""The request path on a real uvicorn server: counts by route template, bounds, faults."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import string
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import websockets

from tests.conftest import ROOT, Samples, Server, value

APP = "tests.apps.core:app"
DURATION = "fastapi_request_duration_seconds_count"
INCOMPLETE = "fastapi_responses_incomplete_total"
PROFILE_TOKEN = "a-profile-token-for-tests"


def _eventually(server: Server, done: Callable[[Samples], bool], timeout: float = 10.0) -> Samples:
    """The metrics once ``done`` holds for them (or the last ones read, when it never does)."""
    deadline = time.monotonic() + timeout
    metrics = server.metrics()
    while not done(metrics) and time.monotonic() < deadline:
        time.sleep(0.1)
        metrics = server.metrics()
    return metrics


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


def _request_series(samples: Any) -> set[Any]:
    """Series labelled by anything from the request; stall locations may appear under load and are bounded."""
    request_labels = {"route", "method", "status", "path", "mount"}
    return {k for k in samples if k[0].startswith("fastapi_") and request_labels & {n for n, _ in k[1]}}


def test_unknown_paths_share_one_label_and_add_no_series(serve: Any) -> None:
    server = serve(APP)
    server.get("/no/such/path")
    before = _request_series(server.metrics())
    total = 1_000  # every path is new: a leak would add a series per request, far past any noise
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
    assert _request_series(metrics) - before == set()
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


def test_background_task_is_timed_apart_from_the_request_it_follows(serve: Any) -> None:
    # The app has a BaseHTTPMiddleware too: it passes the last chunk on before the task runs.
    server = serve(APP)
    with server.client() as client:
        started = time.perf_counter()
        assert client.get("/background").json() == {"queued": True}
        waited = time.perf_counter() - started
    metrics = _eventually(
        server, lambda m: value(m, "fastapi_background_task_duration_seconds_count", route="/background") == 1
    )
    latency = value(metrics, "fastapi_request_duration_seconds_sum", route="/background")
    background = value(metrics, "fastapi_background_task_duration_seconds_sum", route="/background")
    middleware = value(metrics, "fastapi_middleware_duration_seconds_sum", route="/background")
    assert value(metrics, DURATION, route="/background", status="200") == 1
    assert latency < 0.1 and waited < 0.3  # what the client waited, not the task
    assert 0.3 - 0.002 <= background < 3.0
    assert 0 < middleware <= latency
    assert value(metrics, "fastapi_requests_in_progress", route="/background") == 0


def test_a_failing_background_task_leaves_its_complete_response_complete(serve: Any) -> None:
    server = serve(APP)
    assert server.get("/background-fail").json() == {"queued": True}
    metrics = _eventually(
        server,
        lambda m: value(m, "fastapi_background_task_duration_seconds_count", route="/background-fail") == 1,
    )
    assert value(metrics, DURATION, route="/background-fail", status="200") == 1
    assert value(metrics, INCOMPLETE) == 0


def test_requests_without_background_tasks_record_no_background_time(serve: Any) -> None:
    server = serve(APP)
    assert server.get("/items/1").status_code == 200
    assert value(server.metrics(), "fastapi_background_task_duration_seconds_count") == 0


def test_a_middleware_that_raises_is_counted_as_500(serve: Any) -> None:
    server = serve(APP)
    response = server.get("/items/1", headers={"x-explode": "1"})
    assert response.status_code == 500
    assert server.get("/items/2").status_code == 200
    metrics = server.metrics()
    assert value(metrics, DURATION, status="500") == 1
    assert value(metrics, DURATION, route="/items/{item_id}", status="200") == 1
    assert value(metrics, "fastapi_requests_in_progress") == 0
    assert value(metrics, INCOMPLETE) == 0


def test_a_handler_that_raises_is_counted_on_its_route(serve: Any) -> None:
    server = serve(APP)
    assert server.get("/raise").status_code == 500
    metrics = server.metrics()
    assert value(metrics, DURATION, route="/raise", status="500") == 1
    assert value(metrics, INCOMPLETE) == 0  # the 500 page went out whole


def test_streaming_response_is_timed_to_its_last_chunk(serve: Any) -> None:
    server = serve(APP)
    response = server.get("/stream", params={"chunks": 10})
    assert response.text.count("chunk") == 10
    metrics = server.metrics()
    assert value(metrics, DURATION, route="/stream", status="200") == 1
    assert value(metrics, "fastapi_request_duration_seconds_sum", route="/stream") >= 0.1


def test_client_disconnecting_mid_response_is_counted_incomplete_not_timed(serve: Any) -> None:
    server = serve(APP)
    with server.client() as client, client.stream("GET", "/stream", params={"chunks": 200}) as response:
        for _ in response.iter_bytes():
            break  # hang up after the first chunk
    metrics = _eventually(server, lambda m: value(m, INCOMPLETE, route="/stream") == 1)
    assert value(metrics, INCOMPLETE, route="/stream", reason="client_disconnect") == 1
    assert value(metrics, DURATION, route="/stream") == 0
    assert value(metrics, "fastapi_requests_in_progress", route="/stream") == 0
    assert server.get("/items/1").status_code == 200


def _abort_upload(server: Server, path: str, content_type: bytes) -> None:
    """Send the headers and half the announced body on a raw socket, then close it."""
    address = urlsplit(server.url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        head = b"POST " + path.encode() + b" HTTP/1.1\r\nHost: test\r\nContent-Type: " + content_type
        sock.sendall(head + b"\r\nContent-Length: 200000\r\n\r\n" + b"x" * 100_000)
        time.sleep(0.3)  # the app is reading the body, waiting for the rest


def test_aborted_uploads_are_client_disconnects_not_server_errors(serve: Any) -> None:
    server = serve(APP)
    with server.client() as client:  # complete uploads are requests like any other
        assert client.post("/upload", content=b"x" * 1000).json() == {"received": 1000}
        assert client.post("/items", json={"name": "a"}).status_code == 200
    _abort_upload(server, "/upload", b"application/octet-stream")  # the app reads the body itself
    _abort_upload(server, "/items", b"application/json")  # FastAPI reads it for a body parameter
    metrics = _eventually(server, lambda m: value(m, INCOMPLETE) == 2)
    assert value(metrics, INCOMPLETE, route="/upload", reason="client_disconnect") == 1
    assert value(metrics, INCOMPLETE, route="/items", reason="client_disconnect") == 1
    assert (
        value(metrics, DURATION, route="/upload")
        == value(metrics, DURATION, route="/upload", status="200")
        == 1
    )
    assert (
        value(metrics, DURATION, route="/items")
        == value(metrics, DURATION, route="/items", status="200")
        == 1
    )
    assert value(metrics, DURATION, status="500") == value(metrics, DURATION, status="400") == 0
    assert value(metrics, "fastapi_requests_in_progress") == 0


def test_an_app_that_sends_no_response_is_counted_as_500(serve: Any) -> None:
    server = serve(APP)
    assert server.get("/silent/anything").status_code == 500  # what uvicorn answers for it
    metrics = server.metrics()
    assert value(metrics, DURATION, route="/silent/{path}", status="500") == 1
    assert value(metrics, DURATION, status="0") == 0
    assert value(metrics, INCOMPLETE) == 0


def test_a_stream_failing_after_its_start_is_incomplete_and_keeps_its_status(serve: Any) -> None:
    server = serve(APP)
    # The client sees a cut-off body: an error, or (BaseHTTPMiddleware) a short body ended as if complete.
    with server.client() as client, contextlib.suppress(httpx.HTTPError):
        assert client.get("/stream-fail").content == b"first chunk\n"
    metrics = server.metrics()
    assert value(metrics, INCOMPLETE, route="/stream-fail", reason="app_error") == 1
    assert value(metrics, DURATION, route="/stream-fail", status="200") == 1
    assert value(metrics, INCOMPLETE, route="/stream") == 0
    assert server.get("/stream").status_code == 200  # a stream that completes is not incomplete
    assert value(server.metrics(), INCOMPLETE) == 1


def test_metrics_answer_under_uvicorn_root_path(serve: Any) -> None:
    # uvicorn --root-path /api: the proxy takes /api off, uvicorn puts it back into the path.
    env = {
        "UVICORN_ROOT_PATH": "/api",
        "COLLECTOR_PROFILE_ENDPOINT": "1",
        "COLLECTOR_PROFILE_TOKEN": PROFILE_TOKEN,
    }
    server = serve(APP, env=env)
    with server.client() as client:
        assert client.get("/items/1").status_code == 200
        for _ in range(3):
            response = client.get("/metrics")
            assert response.status_code == 200 and "fastapi_request_duration_seconds" in response.text
        assert client.get("/_collector/profiles").status_code == 401  # the collector's, token missing
        assert client.get("/_collector/profilesXYZ").status_code == 404  # the app's: not the prefix
    metrics = server.metrics()
    assert value(metrics, DURATION, route="/items/{item_id}", status="200") == 1
    assert value(metrics, DURATION, route="unmatched") == 1  # /_collector/profilesXYZ, not the scrapes
    assert value(metrics, DURATION) == 2


def test_metrics_answer_under_fastapi_root_path(serve: Any) -> None:
    # FastAPI(root_path="/api") behind a proxy that keeps the prefix in the path.
    server = serve("tests.apps.rooted:app", ready_path="/api/metrics")
    assert server.get("/api/items/7").status_code == 200
    metrics = server.metrics("/api/metrics")
    assert value(metrics, DURATION, route="/items/{item_id}", status="200") == 1
    assert value(metrics, DURATION) == 1


def test_metrics_of_an_instrumented_sub_app_answer_at_its_mount(serve: Any) -> None:
    server = serve("tests.apps.subapi:app", ready_path="/subapi/metrics")
    assert server.get("/subapi/things/3").status_code == 200
    assert server.get("/metrics").status_code == 404  # the outer app has no metrics of its own
    metrics = server.metrics("/subapi/metrics")
    assert value(metrics, DURATION, route="/things/{thing_id}", status="200") == 1
    assert value(metrics, DURATION) == 1


def test_excluded_paths_are_counted_apart_from_request_metrics(serve: Any) -> None:
    # Excluding /metrics too, as users of other exporters do, must not hide the metrics.
    env = {"COLLECTOR_EXCLUDE_PATHS": "/healthz,/readyz,/metrics", "UVICORN_ROOT_PATH": "/api"}
    server = serve(APP, env=env)
    with server.client() as client:
        for _ in range(5):
            assert client.get("/healthz").json() == {"ok": True}
        assert client.get("/items/1").status_code == 200
    metrics = server.metrics()
    assert value(metrics, "fastapi_requests_excluded_total", path="/healthz") == 5
    assert ("fastapi_requests_excluded_total", frozenset({("path", "/readyz")})) in metrics
    assert value(metrics, "fastapi_requests_excluded_total", path="/metrics") == 0
    assert value(metrics, DURATION, route="/healthz") == 0
    assert value(metrics, "fastapi_middleware_duration_seconds_count", route="/healthz") == 0
    assert value(metrics, DURATION) == 1


def test_latency_buckets_are_set_from_the_environment(serve: Any) -> None:
    server = serve(APP, env={"COLLECTOR_LATENCY_BUCKETS": "0.05, 0.3,1.5"})
    server.get("/items/1")
    metrics = server.metrics()
    bounds = {
        labels["le"]
        for labels in (dict(ls) for (n, ls) in metrics if n == "fastapi_request_duration_seconds_bucket")
    }
    assert bounds == {"0.05", "0.3", "1.5", "+Inf"}


@pytest.mark.parametrize(
    ("buckets", "reason"),
    [("0.5,0.1", "increasing order"), ("0.1,-1", "positive"), ("0.1,fast", "comma-separated numbers")],
)
def test_bad_latency_buckets_stop_the_import_with_one_clear_error(buckets: str, reason: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLLECTOR_LATENCY_BUCKETS": buckets}
    result = subprocess.run(
        [sys.executable, "-c", "import collector.metrics"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "COLLECTOR_LATENCY_BUCKETS" in result.stderr and reason in result.stderr


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
