"""Serving metrics: on the app, on a port of their own, OpenMetrics with trace exemplars."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.conftest import free_port, parse_metrics, value


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
    with server.client() as client:
        for i in range(20):
            client.get(f"/items/{i}", headers={"connection": "close"})

    def scrape() -> Any:
        return parse_metrics(httpx.get(f"http://127.0.0.1:{port}/metrics").text)

    deadline = time.monotonic() + 15
    while value(scrape(), "fastapi_workers") < 2 and time.monotonic() < deadline:
        time.sleep(0.2)  # the second worker may still be booting
    metrics = scrape()
    assert value(metrics, "fastapi_request_duration_seconds_count", route="/items/{item_id}") == 21
    assert value(metrics, "fastapi_workers") == 2
