"""Faults inside the collector are counted and the request goes on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

import collector
from collector import _faults
from collector import _routes as routes
from tests.conftest import value


def test_an_unusable_multiprocess_directory_is_counted_and_requests_succeed(
    serve: Any, tmp_path: Path
) -> None:
    not_a_directory = tmp_path / "metrics-dir"
    not_a_directory.write_text("a file where a directory should be")
    server = serve("tests.apps.core:app", env={"PROMETHEUS_MULTIPROC_DIR": str(not_a_directory)})
    assert server.get("/items/1").status_code == 200
    metrics = server.metrics()
    assert value(metrics, "fastapi_collector_errors_total", component="multiprocess") == 1
    assert value(metrics, "fastapi_request_duration_seconds_count", route="/items/{item_id}") == 1
    assert "is not a usable directory" in server.output()
    assert "a scrape shows one worker instead of the sum over all workers" in server.output()


def test_a_fault_in_a_request_hook_is_counted_and_the_response_is_intact() -> None:
    app = FastAPI()

    @app.get("/ok")
    async def ok() -> dict[str, bool]:
        return {"ok": True}

    collector.instrument(app)

    def broken_hook(ctx: Any) -> None:
        raise RuntimeError("a bug in the collector")

    routes.on_route_exit.append(broken_hook)
    before = _faults.fault_counts.get("route_exit", 0)
    try:
        with TestClient(app) as client:
            response = client.get("/ok")
    finally:
        routes.on_route_exit.remove(broken_hook)
        collector.uninstrument(app)
    assert response.status_code == 200 and response.json() == {"ok": True}
    assert _faults.fault_counts["route_exit"] == before + 1


def test_the_fault_log_is_rate_limited(caplog: Any) -> None:
    for _ in range(5):
        _faults.record("test_component", RuntimeError("boom"))
    assert sum("test_component" in r.getMessage() for r in caplog.records) == 1
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR") is None


def test_faults_recorded_before_the_counter_existed_are_counted_once_it_does() -> None:
    code = (
        "from collector import _faults\n"
        "_faults.record('early', RuntimeError('before the metrics'))\n"
        "from collector.metrics import COLLECTOR_ERRORS\n"
        "_faults.record('early', RuntimeError('after'))\n"
        "print(COLLECTOR_ERRORS.labels('early')._value.get())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "2.0"
