"""Every worker's values: folding dead workers into the archive, and files that cannot be read."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

from collector import _multiprocess
from tests.conftest import Samples, value

_WORKER = """
from prometheus_client import Counter, Gauge, Histogram
Counter("jobs", "Jobs.", ["kind"]).labels("a").inc({jobs})
Histogram("job_seconds", "Job time.", buckets=(0.1, 1.0)).observe({seconds})
Gauge("cores", "Cores.", multiprocess_mode="max").set({cores})
Gauge("busy", "Busy.", multiprocess_mode="livesum").set(1)
import os; print(os.getpid())
"""


def _worker(directory: Path, jobs: int, seconds: float, cores: int) -> int:
    """A real process writing its metric files, as a gunicorn worker does; its pid."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    code = _WORKER.format(jobs=jobs, seconds=seconds, cores=cores)
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return int(result.stdout)


def _samples(directory: Path) -> Samples:
    samples: Samples = {}
    for metric in _multiprocess.collect(str(directory)):
        for sample in metric.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def test_dead_workers_fold_into_one_archive_per_kind_with_exact_values(tmp_path: Path) -> None:
    _multiprocess.prepare_directory(str(tmp_path))
    pids = [_worker(tmp_path, 3, 0.05, 2), _worker(tmp_path, 4, 0.5, 4), _worker(tmp_path, 5, 5.0, 1)]
    live = _worker(tmp_path, 1, 0.05, 2)
    before = _samples(tmp_path)
    for pid in pids:
        _multiprocess.archive_dead(pid, str(tmp_path))
    after = _samples(tmp_path)
    assert value(after, "jobs_total", kind="a") == value(before, "jobs_total", kind="a") == 13
    assert value(after, "job_seconds_count") == 4
    assert value(after, "job_seconds_bucket", le="0.1") == 2
    assert value(after, "job_seconds_bucket", le="1.0") == 3
    assert value(after, "job_seconds_sum") == before[("job_seconds_sum", frozenset())]
    assert value(after, "cores") == 4  # the highest any worker set, dead ones included
    names = sorted(p.name for p in tmp_path.glob("*.db"))
    assert names == sorted(
        [
            "counter_archive.db",
            "gauge_max_archive.db",
            "histogram_archive.db",
            f"counter_{live}.db",
            f"gauge_livesum_{live}.db",
            f"gauge_max_{live}.db",
            f"histogram_{live}.db",
        ]
    )


def _truncate(path: Path) -> None:
    """A file whose first entry claims more bytes than the file holds."""
    path.write_bytes(struct.pack("ii", 64, 0) + struct.pack("i", 1000) + b"\0" * 52)


def test_a_truncated_file_is_left_out_and_the_rest_served(tmp_path: Path) -> None:
    _multiprocess.prepare_directory(str(tmp_path))
    _worker(tmp_path, 3, 0.05, 2)
    _truncate(tmp_path / "counter_999999.db")
    from collector import _faults

    before = _faults.fault_counts.get("exposition", 0)
    assert value(_samples(tmp_path), "jobs_total") == 3
    assert _faults.fault_counts["exposition"] == before + 1


def test_a_truncated_worker_file_under_gunicorn_gives_200_and_is_counted(
    serve: Any, multiproc_dir: str
) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": multiproc_dir}
    server = serve("tests.apps.core:app", server="gunicorn", workers=2, env=env)
    server.get("/items/1")
    _truncate(Path(multiproc_dir) / "counter_999999.db")
    server.metrics()  # the first scrape counts the fault in the worker's own file, read by the next
    metrics = server.metrics()
    assert value(metrics, "fastapi_request_duration_seconds_count", route="/items/{item_id}") >= 1
    assert value(metrics, "fastapi_collector_errors_total", component="exposition") >= 1
