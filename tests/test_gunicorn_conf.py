"""The gunicorn config on real gunicorn: fresh and guarded directories, recycled workers, bad settings."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, VENV_BIN, Samples, free_port, parse_metrics, value

ITEMS = "/items/{item_id}"


def _wait_for_workers(server: Any, count: int, timeout: float = 60) -> Samples:
    deadline = time.monotonic() + timeout
    metrics = server.metrics()
    while value(metrics, "fastapi_workers") != count and time.monotonic() < deadline:
        time.sleep(0.2)  # workers boot one after the other on a busy machine
        metrics = server.metrics()
    return metrics


def _gunicorn(env: dict[str, str], workers: int = 2) -> subprocess.CompletedProcess[str]:
    """Run gunicorn expected to refuse to start: its exit and what it printed."""
    cmd = [str(VENV_BIN / "gunicorn"), "tests.apps.core:app", "-c", "python:collector.gunicorn_conf"]
    cmd += ["-b", f"127.0.0.1:{free_port()}", "-w", str(workers)]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(
        cmd, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=90, check=False
    )


def _one_line(result: subprocess.CompletedProcess[str], start: str) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith(start)]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_fresh_directory_gives_one_scrape_summing_every_worker(serve: Any, tmp_path: Path) -> None:
    directory = tmp_path / "not" / "created" / "yet"
    env = {"PROMETHEUS_MULTIPROC_DIR": str(directory)}
    server = serve("tests.apps.core:app", server="gunicorn", workers=2, env=env)
    _wait_for_workers(server, 2)
    with server.client() as client:
        for i in range(20):
            assert client.get(f"/items/{i}", headers={"connection": "close"}).status_code == 200
    metrics = server.metrics()
    assert value(metrics, "fastapi_workers") == 2
    assert value(metrics, "fastapi_request_duration_seconds_count", route=ITEMS) == 20  # scrapes not counted
    assert value(metrics, "fastapi_collector_errors_total", component="multiprocess") == 0
    assert directory.is_dir()


def test_importing_the_config_loads_none_of_the_library(tmp_path: Path) -> None:
    directory = tmp_path / "fresh"
    code = (
        "import sys, collector.gunicorn_conf\n"
        "print(sorted(m for m in ('fastapi', 'prometheus_client', 'pydantic', 'collector.metrics')"
        " if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
    assert directory.is_dir()  # created at import, before a --preload app creates any metric


def test_a_directory_holding_anything_else_is_refused_and_left_untouched(tmp_path: Path) -> None:
    directory = tmp_path / "project"
    (directory / "src").mkdir(parents=True)
    (directory / "notes.txt").write_text("mine")
    (directory / "counter_123.db").write_bytes(b"\0" * 16)
    before = sorted(p.name for p in directory.rglob("*"))
    line = _one_line(_gunicorn({"PROMETHEUS_MULTIPROC_DIR": str(directory)}), "collector: ")
    assert "holds what is not a metric file (notes.txt, src/)" in line
    assert "nothing was deleted" in line
    assert sorted(p.name for p in directory.rglob("*")) == before
    assert (directory / "notes.txt").read_text() == "mine"


def test_an_earlier_runs_metric_files_are_removed_and_nothing_else_is_needed(tmp_path: Path) -> None:
    from collector import _multiprocess

    for name in ("counter_123.db", "gauge_livesum_123.db", "histogram_archive.db", "counter_archive.db.new"):
        (tmp_path / name).write_bytes(b"\0" * 16)
    _multiprocess.prepare_directory(str(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == [_multiprocess.LOCK]


@pytest.mark.parametrize(
    ("env", "start"),
    [
        (
            {"COLLECTOR_METRICS_PORT": "abc"},
            "collector: invalid settings: metrics_port (COLLECTOR_METRICS_PORT)",
        ),
        ({"PROMETHEUS_MULTIPROC_DIR": "/proc/collector-metrics"}, "collector: PROMETHEUS_MULTIPROC_DIR="),
        ({"COLLECTOR_METRICS_PORT": "9"}, "collector: COLLECTOR_METRICS_PORT with several workers needs"),
    ],
    ids=["bad port", "uncreatable directory", "port without a shared directory"],
)
def test_a_bad_setting_stops_the_master_with_one_line(env: dict[str, str], start: str) -> None:
    _one_line(_gunicorn(env), start)


def test_a_busy_metrics_port_stops_the_master_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
            "COLLECTOR_METRICS_PORT": str(port),
            "COLLECTOR_METRICS_ADDR": "127.0.0.1",
        }
        line = _one_line(_gunicorn(env), "collector: cannot serve metrics")
    assert f"127.0.0.1:{port}" in line


def _get_through_recycling(client: httpx.Client, path: str) -> httpx.Response:
    """A worker at its request limit drops connections it accepted but had not read: try again."""
    for _ in range(5):
        try:
            return client.get(path, headers={"connection": "close"})
        except httpx.TransportError:
            time.sleep(0.1)
    return client.get(path, headers={"connection": "close"})


def test_recycled_workers_fold_into_the_archive_and_totals_stay_exact(serve: Any, tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
        # --preload: a recycled worker is a fork, not a fresh import, so many recycles stay quick.
        "GUNICORN_CMD_ARGS": "--max-requests 4 --preload",
    }
    server = serve("tests.apps.core:app", server="gunicorn", workers=2, env=env)
    totals = []
    sent = 0
    with server.client() as client:
        for _ in range(8):  # 40 requests at 4 per worker: about ten workers recycled
            for _ in range(5):
                assert _get_through_recycling(client, f"/items/{sent}").status_code == 200
                sent += 1
            metrics = parse_metrics(_get_through_recycling(client, "/metrics").text)
            totals.append(value(metrics, "fastapi_request_duration_seconds_count", route=ITEMS))
    assert totals == sorted(totals)  # a counter never went down while workers were folded away
    assert totals[-1] == sent

    def dead_pids() -> set[int]:
        pids = {int(m.group(1)) for p in directory.iterdir() if (m := re.search(r"_(\d+)\.db$", p.name))}
        return {pid for pid in pids if not Path(f"/proc/{pid}").exists()}

    deadline = time.monotonic() + 30
    while dead_pids() and time.monotonic() < deadline:
        time.sleep(0.2)  # the master folds a worker right after reaping it
    assert dead_pids() == set()
    assert (directory / "counter_archive.db").exists() and (directory / "histogram_archive.db").exists()
    with server.client() as client:
        metrics = parse_metrics(_get_through_recycling(client, "/metrics").text)
    assert value(metrics, "fastapi_request_duration_seconds_count", route=ITEMS) == sent
    assert value(metrics, "fastapi_request_duration_seconds_bucket", route=ITEMS, le="+Inf") == sent
    assert "Maximum request limit" in server.output()  # workers really were recycled
