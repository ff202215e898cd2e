"""A gunicorn config for multi-worker apps: ``gunicorn -c python:collector.gunicorn_conf app:app``.

Or import the hooks into your own config:
``from collector.gunicorn_conf import on_starting, when_ready, child_exit``.
``PROMETHEUS_MULTIPROC_DIR`` must be set in the environment before gunicorn starts, so that every
worker writes its metrics there. Importing this module prepares that directory, before any metric
exists (an app loaded with ``--preload`` creates its metrics next): it is created when missing, or
emptied of an earlier run's metric files; a directory holding anything else stops gunicorn. The
import stays light: the library is loaded by the workers, not here.
"""

from __future__ import annotations

import os
from typing import Any

from collector import _faults, _multiprocess

_directory = _multiprocess.directory()
if _directory is not None:
    _multiprocess.prepare_directory(_directory)

worker_class = "uvicorn.workers.UvicornWorker"
# Tip 4: one worker per core unless told otherwise (-w or WEB_CONCURRENCY).
# (gunicorn itself reads WEB_CONCURRENCY, and rejects a bad one, before this config.)
workers = int(os.environ.get("WEB_CONCURRENCY") or _multiprocess.cpu_cores())


def on_starting(server: Any) -> None:
    """Stop at start-up on a bad ``COLLECTOR_*`` variable: in a worker it would only be respawned."""
    from collector._settings import load

    settings = load()
    if _directory is None:
        server.log.warning("collector: PROMETHEUS_MULTIPROC_DIR is not set; each scrape sees one worker only")
        if settings.metrics_port and server.num_workers > 1:
            raise SystemExit(
                "collector: COLLECTOR_METRICS_PORT with several workers needs PROMETHEUS_MULTIPROC_DIR"
            )


def when_ready(server: Any) -> None:
    """Serve every worker's metrics from the master when ``COLLECTOR_METRICS_PORT`` is set."""
    if _directory is None:
        return
    from collector import _exposition as exposition
    from collector._settings import load

    settings = load()
    if settings.metrics_port:
        exposition.start_server(settings)


def child_exit(server: Any, worker: Any) -> None:
    """Fold the dead worker's metric files into the archive: totals stay, files do not pile up."""
    if _directory is None:
        return
    try:
        _multiprocess.archive_dead(worker.pid, _directory)
    except Exception as exc:  # the master must outlive a fault in its bookkeeping
        _faults.record("multiprocess", exc)
