"""Objects meant to be made once per process, counted as they are made, on a real uvicorn server."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx
from fastapi import FastAPI
from prometheus_client import REGISTRY

import collector
from tests.conftest import ROOT, value

APP = "tests.apps.resources_app:app"
CREATED = "fastapi_resources_created_total"


def test_a_client_built_per_request_counts_one_per_request_and_a_shared_one_none(serve: Any) -> None:
    server = serve(APP)
    with server.client() as client:
        start = server.metrics()
        assert value(start, CREATED, kind="http_client") >= 1  # the shared client, made at import
        for _ in range(5):
            assert client.get("/shared/httpx").json() == {"closed": False}
        after_shared = server.metrics()
        for _ in range(7):
            assert client.get("/per-request/httpx").status_code == 200
        after_per_request = server.metrics()
    assert value(after_shared, CREATED, kind="http_client") == value(start, CREATED, kind="http_client")
    grown = value(after_per_request, CREATED, kind="http_client") - value(
        after_shared, CREATED, kind="http_client"
    )
    assert grown == 7


def test_aiohttp_sessions_and_redis_clients_imported_after_instrument_are_counted(serve: Any) -> None:
    server = serve(APP)
    with server.client() as client:
        assert client.get("/imported-after-instrument").json() == ["aiohttp", "httpx", "redis"]
        before = server.metrics()
        for _ in range(4):
            assert client.get("/per-request/aiohttp").json() == {"closed": False}
            assert client.get("/per-request/redis").json() == {"pong": True}
        after = server.metrics()
    for kind in ("aiohttp_session", "redis_client"):
        assert value(after, CREATED, kind=kind) - value(before, CREATED, kind=kind) == 4, kind


def test_instrument_imports_no_client_library_the_app_does_not_use() -> None:
    script = (
        "import sys\n"
        "from fastapi import FastAPI\n"
        "import collector\n"
        "collector.instrument(FastAPI())\n"
        "print(sorted(n for n in ('aiohttp', 'redis') if n in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def _created() -> float:
    return REGISTRY.get_sample_value(CREATED, {"kind": "http_client"}) or 0.0


def test_counting_is_installed_once_and_removed_by_uninstrument() -> None:
    original = httpx.Client.__init__
    app = FastAPI()
    collector.instrument(app)
    collector.instrument(app)
    start = _created()
    httpx.Client().close()
    assert _created() - start == 1  # one count per client: wrapped once
    collector.uninstrument(app)
    assert httpx.Client.__init__ is original
    httpx.Client().close()
    assert _created() - start == 1
