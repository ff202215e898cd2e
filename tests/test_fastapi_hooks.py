"""FastAPI's phases timed per route on a real uvicorn server, on the oldest and newest FastAPI supported."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fastapi
import pytest
from fastapi import FastAPI
from fastapi import routing as fastapi_routing
from fastapi.dependencies import utils as dependency_utils

import collector
from tests.conftest import ROOT, Samples, Server, _wait_ready, free_port, value

APP = "tests.apps.pydantic_app:app"
OLDEST = "0.115.0"
OLD_VENV = Path("/tmp") / f"collector-fastapi-{OLDEST}"
DEPENDENCY_SECONDS = 0.05  # as tests/apps/pydantic_app.py sleeps in its dependency
ROWS = 3000  # rows its list routes return
BACKGROUND_SECONDS = 0.3  # its /background route's task sleeps that long


def _build_old_venv() -> Path:
    """A venv with the oldest supported FastAPI and the collector's other dependencies, built once."""
    ready = OLD_VENV / ".ready"
    if ready.exists():
        return OLD_VENV
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed: cannot build a venv with the oldest FastAPI")
    shutil.rmtree(OLD_VENV, ignore_errors=True)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [r for r in project["dependencies"] if not r.startswith("fastapi")]
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run([uv, "venv", "-q", "--python", python, str(OLD_VENV)], check=True, timeout=60)
    install = [uv, "pip", "install", "-q", "--python", str(OLD_VENV / "bin" / "python")]
    subprocess.run([*install, f"fastapi=={OLDEST}", "uvicorn", *requirements], check=True, timeout=120)
    ready.touch()
    return OLD_VENV


def _start(python: Path, log: Path) -> Server:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [str(python), "-m", "uvicorn", APP, "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(f"http://127.0.0.1:{port}", process, log, env)
    try:
        _wait_ready(server, "/metrics")
    except BaseException:
        _stop(server)
        raise
    return server


def _stop(server: Server) -> None:
    os.killpg(server.process.pid, signal.SIGTERM)
    server.process.wait(10)


@pytest.fixture(scope="module", params=["newest", "oldest"])
def app_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The test app on uvicorn, under the project's FastAPI or under the oldest supported one."""
    python = Path(sys.executable) if request.param == "newest" else _build_old_venv() / "bin" / "python"
    version = subprocess.run(
        [str(python), "-c", "import fastapi; print(fastapi.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert version == (fastapi.__version__ if request.param == "newest" else OLDEST)
    server = _start(python, tmp_path_factory.mktemp(request.param) / "server.log")
    yield server
    _stop(server)


def _growth(server: Server, before: Samples) -> Callable[..., float]:
    """How much a metric grew since ``before``: the tests share one server per FastAPI version."""
    after = server.metrics()
    return lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)


def _rows(n: int) -> list[dict[str, Any]]:
    return [{"id": i, "name": f"row {i}", "tags": ["a", "b"], "score": 0.5} for i in range(n)]


def test_dependency_time_is_the_dependencies_own_time_not_validation(app_server: Server) -> None:
    before = app_server.metrics()
    with app_server.client() as client:
        for i in range(3):
            assert client.get(f"/slow-dependency/{i}").status_code == 200
    grown = _growth(app_server, before)
    route = "/slow-dependency/{item_id}"
    assert grown("fastapi_dependency_duration_seconds_count", route=route) == 3
    dependency = grown("fastapi_dependency_duration_seconds_sum", route=route)
    # The loop's timers may fire up to a millisecond early (uvloop rounds to milliseconds).
    assert 3 * (DEPENDENCY_SECONDS - 0.002) <= dependency < 3 * (DEPENDENCY_SECONDS + 0.2)
    # No body: the path parameter's few microseconds of validation stay in the dependency time.
    assert grown("fastapi_validation_duration_seconds_count", route=route, phase="request") == 0


def test_request_body_validation_is_timed_apart_from_dependencies(app_server: Server) -> None:
    before = app_server.metrics()
    with app_server.client() as client:
        for _ in range(3):
            response = client.post("/rows/upload", json=_rows(ROWS))
            assert response.json() == {"count": ROWS}
        assert client.post("/rows/upload", json=[{"id": "not a number"}]).status_code == 422
    grown = _growth(app_server, before)
    route = "/rows/upload"
    validation = grown("fastapi_validation_duration_seconds_sum", route=route, phase="request")
    assert grown("fastapi_validation_duration_seconds_count", route=route, phase="request") == 4
    assert validation > 0
    # No dependencies on this route: what is left of solving them is bookkeeping, far below validation.
    assert grown("fastapi_dependency_duration_seconds_sum", route=route) < validation / 3


def test_response_validation_and_serialization_are_split_and_only_observed_when_they_run(
    app_server: Server,
) -> None:
    before = app_server.metrics()
    with app_server.client() as client:
        for _ in range(3):
            assert len(client.get("/rows").json()) == ROWS
            assert len(client.get("/rows-untyped").json()) == ROWS
        assert client.get("/raw").status_code == 200
    grown = _growth(app_server, before)
    for phase_metric, labels in (
        ("fastapi_validation_duration_seconds", {"route": "/rows", "phase": "response"}),
        ("fastapi_serialization_duration_seconds", {"route": "/rows"}),
        ("fastapi_serialization_duration_seconds", {"route": "/rows-untyped"}),
    ):
        assert grown(phase_metric + "_count", **labels) == 3, (phase_metric, labels)
        assert grown(phase_metric + "_sum", **labels) > 0, (phase_metric, labels)
    # No response model on /rows-untyped, no model and no JSON on /raw: those phases did not run.
    assert grown("fastapi_validation_duration_seconds_count", route="/rows-untyped", phase="response") == 0
    assert grown("fastapi_validation_duration_seconds_count", route="/raw", phase="response") == 0
    assert grown("fastapi_serialization_duration_seconds_count", route="/raw") == 0


def test_response_size_is_the_body_bytes_sent(app_server: Server) -> None:
    before = app_server.metrics()
    with app_server.client() as client:
        rows_bytes = len(client.get("/rows").content)
        assert len(client.get("/raw").content) == 1234
        assert client.head("/raw").content == b""
        assert len(client.get("/stream", params={"chunks": 4}).content) == 400
    grown = _growth(app_server, before)
    size = "fastapi_response_size_bytes"
    assert grown(size + "_sum", route="/rows") == rows_bytes
    assert grown(size + "_count", route="/raw") == 2
    assert grown(size + "_sum", route="/raw") == 1234  # the HEAD sent no body
    assert grown(size + "_sum", route="/stream") == 400
    assert grown(size + "_bucket", route="/raw", le="1000.0") == 1


def _hooked() -> tuple[Any, ...]:
    routing, utils = vars(fastapi_routing), vars(dependency_utils)
    return (
        routing["solve_dependencies"],
        routing["serialize_response"],
        utils["request_body_to_args"],
    )


def _timed_count(route: str) -> float:
    from collector.metrics import RESPONSE_SIZE

    samples = RESPONSE_SIZE.collect()[0].samples
    return sum(s.value for s in samples if s.name.endswith("_count") and s.labels["route"] == route)


def test_internals_are_timed_on_about_the_ratio_of_requests() -> None:
    from fastapi.testclient import TestClient

    app = FastAPI()

    @app.get("/items/{item_id}")
    async def get_item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    collector.instrument(app, internals_sample_ratio=0.25)
    before = _timed_count("/items/{item_id}")
    with TestClient(app) as client:
        for i in range(400):
            client.get(f"/items/{i}")
    # Gaps are random with mean 4: 100 expected, with a standard deviation of 5.
    assert 70 <= _timed_count("/items/{item_id}") - before <= 130
    collector.uninstrument(app)


def test_load_that_alternates_routes_still_times_each_route() -> None:
    from fastapi.testclient import TestClient

    app = FastAPI()

    @app.get("/first")
    async def first() -> dict[str, int]:
        return {"n": 1}

    @app.get("/second")
    async def second() -> dict[str, int]:
        return {"n": 2}

    collector.instrument(app, internals_sample_ratio=0.5)
    before = (_timed_count("/first"), _timed_count("/second"))
    with TestClient(app) as client:
        for _ in range(100):
            client.get("/first")
            client.get("/second")
    # Every second request, strictly, would time only one of the two routes.
    assert _timed_count("/first") - before[0] >= 10
    assert _timed_count("/second") - before[1] >= 10
    collector.uninstrument(app)


def _app_reporting_hooks(ratio: float) -> FastAPI:
    """An app whose endpoint tells how many times each of FastAPI's hooked functions is wrapped."""
    app = FastAPI()

    def depth(f: Any) -> int:
        return 0 if getattr(f, "__wrapped__", None) is None else 1 + depth(f.__wrapped__)

    @app.get("/hooked")
    async def hooked() -> list[int]:
        return [depth(f) for f in _hooked()]

    collector.instrument(app, internals_sample_ratio=ratio)
    return app


def test_hooks_are_set_only_while_a_timed_request_is_in_flight() -> None:
    from fastapi._compat import ModelField
    from fastapi.testclient import TestClient
    from starlette.responses import JSONResponse

    before = _hooked()
    render = vars(JSONResponse)["render"]
    timed_app = _app_reporting_hooks(1.0)
    untimed_app = _app_reporting_hooks(0.0)
    collector.instrument(timed_app)  # a second instrument() of the same app changes nothing
    try:
        assert _hooked() == before  # installed, not yet set: no timed request in flight
        wrapped = vars(JSONResponse)["render"]  # methods: wrapped from the start, once
        assert wrapped.__wrapped__ is not None and not hasattr(wrapped.__wrapped__, "__wrapped__")
        # ModelField is not: its serializers are wrapped on a field instance, only while timed.
        assert not any(hasattr(vars(ModelField)[name], "__wrapped__") for name in ("serialize", "validate"))
        with TestClient(timed_app) as timed, TestClient(untimed_app) as untimed:
            for _ in range(3):
                assert timed.get("/hooked").json() == [1, 1, 1]  # wrapped once, for two apps
                assert _hooked() == before  # taken off as the timed request ended
                assert untimed.get("/hooked").json() == [0, 0, 0]
    finally:
        collector.uninstrument(timed_app)
        collector.uninstrument(untimed_app)
    assert _hooked() == before
    assert vars(JSONResponse)["render"] is render


def test_unsupported_fastapi_fails_at_attach_and_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from collector import _patches

    before = _hooked()
    assert _patches.active() == []  # the suite's fixture restores the interpreter after every test
    monkeypatch.setattr(fastapi, "__version__", "0.99.1")
    app = FastAPI()
    with pytest.raises(RuntimeError, match=r"FastAPI 0\.99\.1 is not supported"):
        collector.instrument(app)
    assert _hooked() == before
    assert getattr(app, "_collector_runtime", None) is None


def test_hooks_stay_set_until_the_last_overlapping_timed_request_ends() -> None:
    import asyncio

    import httpx

    app = _app_reporting_hooks(1.0)
    before = _hooked()

    @app.get("/hooked-after/{seconds}")
    async def hooked_after(seconds: float) -> list[int]:
        await asyncio.sleep(seconds)
        return [int(getattr(f, "__wrapped__", None) is not None) for f in _hooked()]

    async def overlapping() -> list[list[int]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            responses = await asyncio.gather(
                *(client.get(f"/hooked-after/{s}") for s in (0.0, 0.05, 0.1, 0.15))
            )
        return [r.json() for r in responses]

    try:
        assert asyncio.run(overlapping()) == [[1, 1, 1]] * 4
        assert _hooked() == before
    finally:
        collector.uninstrument(app)


def test_background_tasks_are_not_counted_as_middleware_time(app_server: Server) -> None:
    before = app_server.metrics()
    with app_server.client() as client:
        for _ in range(2):
            assert client.get("/background").json() == {"queued": True}
    time.sleep(BACKGROUND_SECONDS + 0.2)  # the response goes out before the task has run
    grown = _growth(app_server, before)
    total = grown("fastapi_request_duration_seconds_sum", route="/background")
    middleware = grown("fastapi_middleware_duration_seconds_sum", route="/background")
    assert grown("fastapi_middleware_duration_seconds_count", route="/background") == 2
    assert total < BACKGROUND_SECONDS  # a request's latency ends at its last chunk, before its task runs
    assert 0 < middleware < 0.05


def test_uninstrument_during_a_timed_request_swaps_fastapis_functions_back_for_good() -> None:
    from collector import _fastapi_hooks as fastapi_hooks

    before = _hooked()
    app = FastAPI()
    collector.instrument(app)
    fastapi_hooks.timed_begin()  # a timed request is in flight: the wrappers are swapped in
    assert _hooked() != before
    collector.uninstrument(app)
    assert _hooked() == before
    fastapi_hooks.timed_end()  # the request in flight ends, another timed one starts
    fastapi_hooks.timed_begin()
    assert _hooked() == before
    fastapi_hooks.timed_end()
