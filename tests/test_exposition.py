"""Serving metrics: on the app, on a port of their own, OpenMetrics with trace exemplars."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

import collector
from collector import _exposition as exposition
from collector import _faults
from tests.conftest import ROOT, free_port, parse_metrics, value


def test_metrics_are_served_on_the_app_and_not_counted(serve: Any) -> None:
    server = serve("tests.apps.core:app")
    for _ in range(3):
        response = server.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    assert value(parse_metrics(response.text), "fastapi_request_duration_seconds_count") == 0


def test_metrics_on_a_separate_port_leave_the_app_path_alone(serve: Any) -> None:
    port = free_port()
    server = serve("tests.apps.core:app", env={"COLLECTOR_METRICS_PORT": str(port)}, ready_path="/items/0")
    assert server.get("/metrics").status_code == 404
    metrics = parse_metrics(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
    assert value(metrics, "fastapi_request_duration_seconds_count", route="/items/{item_id}") == 1
    assert value(metrics, "fastapi_request_duration_seconds_count", route="unmatched", status="404") == 1


def test_openmetrics_scrape_carries_trace_id_exemplars(serve: Any) -> None:
    server = serve("tests.apps.traced:app")
    server.get("/items/1")
    response = server.get("/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    lines = [
        line
        for line in response.text.splitlines()
        if line.startswith("fastapi_request_duration_seconds_bucket") and "# {" in line
    ]
    assert len(lines) == 1
    trace_id = lines[0].split('trace_id="')[1].split('"')[0]
    assert len(trace_id) == 32 and int(trace_id, 16) != 0


def test_gunicorn_master_serves_the_separate_port_for_all_workers(serve: Any, multiproc_dir: str) -> None:
    port = free_port()
    env = {"PROMETHEUS_MULTIPROC_DIR": multiproc_dir, "COLLECTOR_METRICS_PORT": str(port)}
    server = serve("tests.apps.core:app", server="gunicorn", workers=2, env=env, ready_path="/items/0")

    def scrape() -> Any:
        return parse_metrics(httpx.get(f"http://127.0.0.1:{port}/metrics").text)

    deadline = time.monotonic() + 60
    while value(scrape(), "fastapi_workers") < 2 and time.monotonic() < deadline:
        time.sleep(0.2)  # the second worker may still be booting
    # Readiness probes that timed out while the workers booted are served later: count from here.
    before = value(scrape(), "fastapi_request_duration_seconds_count", route="/items/{item_id}")
    with server.client() as client:
        for i in range(20):
            client.get(f"/items/{i}", headers={"connection": "close"})
    metrics = scrape()
    assert value(metrics, "fastapi_request_duration_seconds_count", route="/items/{item_id}") == before + 20
    assert value(metrics, "fastapi_workers") == 2


class _Raising:
    def describe(self) -> list[Any]:
        return []  # registering would otherwise read it

    def collect(self) -> Any:
        raise RuntimeError("a broken metric source")


class _Slow:
    """A metric source that takes a while and counts how often it is read."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.reads = 0

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        self.reads += 1
        time.sleep(self.seconds)
        return []


@pytest.fixture
def registered() -> Iterator[Callable[[Any], None]]:
    added: list[Any] = []

    def register(source: Any) -> None:
        REGISTRY.register(source)
        added.append(source)

    yield register
    for source in added:
        REGISTRY.unregister(source)


def _items_app(**settings: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def get_item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    collector.instrument(app, **settings)
    return app


def test_a_metric_source_that_raises_is_left_out_and_counted(registered: Callable[[Any], None]) -> None:
    registered(_Raising())
    before = _faults.fault_counts.get("exposition", 0)
    with TestClient(_items_app()) as client:
        client.get("/items/1")
        first = client.get("/metrics")
        second = client.get("/metrics")
    assert first.status_code == 200 and second.status_code == 200
    metrics = parse_metrics(second.text)
    assert value(metrics, "fastapi_request_duration_seconds_count", route="/items/{item_id}") >= 1
    assert value(metrics, "fastapi_collector_errors_total", component="exposition") >= 1
    assert _faults.fault_counts["exposition"] == before + 2


def test_concurrent_scrapes_share_one_rendering_off_the_event_loop(registered: Callable[[Any], None]) -> None:
    slow = _Slow(1.0)  # long enough that all eight scrapes arrive while it renders, even on a busy machine
    registered(slow)
    app = _items_app(metrics_cache_ttl=0)

    async def scenario() -> tuple[list[int], list[str]]:
        finished: list[str] = []
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:

            async def scrape() -> int:
                response = await client.get("/metrics")
                finished.append("scrape")
                return response.status_code

            async def request() -> None:
                await asyncio.sleep(0.05)  # while the first rendering runs
                await client.get("/items/1")
                finished.append("request")

            results = await asyncio.gather(*(scrape() for _ in range(8)), request())
        return [code for code in results if code is not None], finished

    codes, finished = asyncio.run(scenario())
    assert codes == [200] * 8
    assert slow.reads == 1  # eight scrapes arrived while one rendering ran: they shared it
    assert finished[0] == "request"  # the loop answered a request while the scrape rendered


def test_scrapes_within_the_cache_ttl_share_a_rendering(
    registered: Callable[[Any], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exposition, "_shared", exposition._Shared())  # no rendering of earlier tests
    slow = _Slow(0.0)
    registered(slow)
    with TestClient(_items_app(metrics_cache_ttl=30)) as client:
        bodies = {client.get("/metrics").text for _ in range(3)}
    assert slow.reads == 1 and len(bodies) == 1


@pytest.mark.parametrize("separate_port", [False, True], ids=["on the app", "on its own port"])
def test_the_metrics_token_is_required_when_set(serve: Any, separate_port: bool) -> None:
    token = "s3cret-token-of-32-characters-xx"
    env = {"COLLECTOR_METRICS_TOKEN": token}
    url = None
    if separate_port:
        port = free_port()
        env["COLLECTOR_METRICS_PORT"] = str(port)
        url = f"http://127.0.0.1:{port}/metrics"
    server = serve("tests.apps.core:app", env=env, ready_path="/items/0")
    url = url or server.url + "/metrics"
    missing = httpx.get(url)
    wrong = httpx.get(url, headers={"authorization": "Bearer " + "x" * len(token)})
    right = httpx.get(url, headers={"authorization": f"Bearer {token}"})
    assert missing.status_code == 401 and wrong.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert token not in missing.text
    assert right.status_code == 200
    assert (
        value(parse_metrics(right.text), "fastapi_request_duration_seconds_count", route="/items/{item_id}")
        >= 1
    )


def test_a_busy_metrics_port_stops_the_app_with_one_line(tmp_path: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "COLLECTOR_METRICS_PORT": str(port)}
        cmd = [sys.executable, "-m", "uvicorn", "tests.apps.core:app", "--port", str(free_port())]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    lines = [
        line for line in result.stderr.splitlines() if line.startswith("collector: cannot serve metrics")
    ]
    assert len(lines) == 1 and f":{port}" in lines[0]
    assert "Traceback" not in result.stderr


def test_an_address_that_cannot_be_bound_stops_the_app_with_one_line() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "COLLECTOR_METRICS_PORT": str(free_port()),
        "COLLECTOR_METRICS_ADDR": "192.0.2.1",  # TEST-NET-1: never an address of this machine
    }
    cmd = [sys.executable, "-m", "uvicorn", "tests.apps.core:app", "--port", str(free_port())]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "collector: cannot serve metrics on 192.0.2.1:" in result.stderr
    assert "Traceback" not in result.stderr
