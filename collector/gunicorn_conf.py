"""A gunicorn config for multi-worker apps: ``gunicorn -c python:collector.gunicorn_conf app:app``.

Or import the hooks into your own config: ``from collector.gunicorn_conf import on_starting, child_exit``.
``PROMETHEUS_MULTIPROC_DIR`` must be set in the environment before gunicorn starts,
so that every worker writes its metrics there; this config empties it at start.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from collector.process import cpu_cores

worker_class = "uvicorn.workers.UvicornWorker"
# Tip 4: one worker per core unless told otherwise (-w or WEB_CONCURRENCY).
workers = int(os.environ.get("WEB_CONCURRENCY", cpu_cores()))


def on_starting(server: Any) -> None:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        server.log.warning("collector: PROMETHEUS_MULTIPROC_DIR is not set; each scrape sees one worker only")
        return
    if os.path.isdir(path):  # stale files of an earlier run would be summed in
        for entry in os.listdir(path):
            full = os.path.join(path, entry)
            if os.path.isdir(full):
                shutil.rmtree(full, ignore_errors=True)
            else:
                os.unlink(full)
    else:
        os.makedirs(path, exist_ok=True)


def when_ready(server: Any) -> None:
    port = int(os.environ.get("COLLECTOR_METRICS_PORT", "0") or 0)
    if port and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from collector import exposition

        exposition.start_server(port, os.environ.get("COLLECTOR_METRICS_ADDR", "0.0.0.0"))


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
