"""Workers and cores under gunicorn with uvicorn workers and PROMETHEUS_MULTIPROC_DIR."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from collector._process import cpu_cores
from tests.conftest import series, value

APP = "tests.apps.core:app"


def _wait_for(predicate: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_one_scrape_sums_every_live_worker(serve: Any, multiproc_dir: str) -> None:
    server = serve(APP, server="gunicorn", workers=3, env={"PROMETHEUS_MULTIPROC_DIR": multiproc_dir})
    assert _wait_for(lambda: value(server.metrics(), "fastapi_workers") == 3)
    sent = 150
    with server.client() as client:
        for i in range(sent):
            # A new connection each time so that gunicorn spreads requests over workers.
            assert client.get(f"/items/{i}", headers={"connection": "close"}).status_code == 200
    metrics = server.metrics()
    assert value(metrics, "fastapi_request_duration_seconds_count", route="/items/{item_id}") == sent
    assert value(metrics, "fastapi_workers") == 3
    assert value(metrics, "fastapi_cpu_cores") == cpu_cores()
    assert len(series(metrics, "fastapi_worker_cpu_utilization")) == 3
    # The route inventory is reported once, not once per worker.
    assert value(metrics, "fastapi_route_handlers", route="/items/{item_id}") == 1


def test_a_dead_worker_is_marked_dead_and_its_counts_are_kept(serve: Any, multiproc_dir: str) -> None:
    server = serve(APP, server="gunicorn", workers=2, env={"PROMETHEUS_MULTIPROC_DIR": multiproc_dir})

    def worker_pids() -> set[str]:
        return {s["pid"] for s in series(server.metrics(), "fastapi_worker_cpu_utilization")}

    assert _wait_for(lambda: len(worker_pids()) == 2)
    sent = 40
    with server.client() as client:
        for i in range(sent):
            client.get(f"/items/{i}", headers={"connection": "close"})
    victim = sorted(worker_pids())[0]
    os.kill(int(victim), signal.SIGKILL)
    assert _wait_for(lambda: victim not in worker_pids() and len(worker_pids()) == 2)
    metrics = server.metrics()
    assert value(metrics, "fastapi_workers") == 2
    assert value(metrics, "fastapi_request_duration_seconds_count", route="/items/{item_id}") == sent


def test_worker_cpu_utilization_shows_a_busy_worker(serve: Any) -> None:
    server = serve(APP)
    for _ in range(3):
        server.get("/blocking")  # 0.3 s each of time.sleep: wall time, not CPU
    server.get("/items/1")
    metrics = server.metrics()
    assert len(series(metrics, "fastapi_worker_cpu_utilization")) == 1
    assert 0 <= value(metrics, "fastapi_worker_cpu_utilization") < 1.5
    assert value(metrics, "fastapi_workers") == 1
