"""Real servers for the tests: uvicorn and gunicorn processes on free loopback ports."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
# Tests read what they just caused: scrapes are not shared across time unless a test asks for it.
os.environ.setdefault("COLLECTOR_METRICS_CACHE_TTL", "0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, /, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def scrape_until(scrape: Callable[[], Samples], name: str, wanted: float, timeout: float = 60.0) -> Samples:
    """Scrape until ``name`` sums to ``wanted`` (e.g. every gunicorn worker booted), or the timeout."""
    deadline = time.monotonic() + timeout
    samples = scrape()
    while value(samples, name) != wanted and time.monotonic() < deadline:
        time.sleep(0.5)
        samples = scrape()
    return samples


def series(samples: Samples, name: str, /) -> list[dict[str, str]]:
    return [dict(ls) for (n, ls) in samples if n == name]


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)  # type: ignore[arg-type]

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        with self.client() as c:
            return c.get(path, **kwargs)  # type: ignore[arg-type]

    def metrics(self, path: str = "/metrics") -> Samples:
        response = self.get(path)
        assert response.status_code == 200, response.text
        return parse_metrics(response.text)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _wait_ready(server: Server, path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited {server.process.returncode}:\n{server.output()}")
        try:
            if httpx.get(server.url + path, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server not ready after {timeout}s:\n{server.output()}")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
    """``serve("tests.apps.basic:app", server="uvicorn", workers=1, loop="asyncio", env={...})``."""
    started: list[Server] = []

    def start(
        target: str,
        *,
        server: str = "uvicorn",
        workers: int = 1,
        loop: str = "asyncio",
        env: dict[str, str] | None = None,
        ready_path: str = "/metrics",
    ) -> Server:
        port = free_port()
        environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        if server == "uvicorn":
            cmd = [str(VENV_BIN / "uvicorn"), target, "--host", "127.0.0.1", "--port", str(port)]
            cmd += ["--loop", loop, "--no-access-log", "--workers", str(workers)]
        else:
            cmd = [str(VENV_BIN / "gunicorn"), target, "-c", "python:collector.gunicorn_conf"]
            cmd += ["-b", f"127.0.0.1:{port}", "-w", str(workers), "-k", "uvicorn.workers.UvicornWorker"]
        log = tmp_path / f"server-{port}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                cmd, cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        srv = Server(f"http://127.0.0.1:{port}", process, log, environment)
        started.append(srv)
        _wait_ready(srv, ready_path)
        return srv

    yield start
    for srv in started:
        if srv.process.poll() is None:
            os.killpg(srv.process.pid, signal.SIGTERM)
            try:
                srv.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(srv.process.pid, signal.SIGKILL)
                srv.process.wait(5)


@pytest.fixture
def multiproc_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="collector-mp-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


# Every test leaves the interpreter as it found it, once its apps are uninstrumented: nothing in the
# collector's patch ledger, and each attribute the collector patches is the very object it was.
_PATCHED: tuple[tuple[str, str, str], ...] = (
    ("anyio.to_thread", "", "run_sync"),
    ("starlette.routing", "Route", "handle"),
    ("starlette.routing", "Mount", "handle"),
    ("starlette.routing", "Host", "handle"),
    ("starlette.routing", "WebSocketRoute", "handle"),
    ("starlette.responses", "FileResponse", "__call__"),
    ("starlette.responses", "JSONResponse", "render"),
    ("fastapi.routing", "", "solve_dependencies"),
    ("fastapi.routing", "", "serialize_response"),
    ("fastapi.dependencies.utils", "", "request_body_to_args"),
    ("sqlalchemy.engine", "Engine", "__init__"),
    ("httpx", "Client", "__init__"),
    ("httpx", "AsyncClient", "__init__"),
    ("redis", "Redis", "__init__"),
    ("redis.asyncio", "Redis", "__init__"),
    ("asyncpg.connection", "Connection", "execute"),
    ("asyncpg.connection", "Connection", "__init__"),
    ("asyncpg.pool", "Pool", "_acquire"),
    ("psycopg", "Cursor", "execute"),
    ("psycopg_pool", "ConnectionPool", "getconn"),
)


def _patched_attributes() -> dict[str, object]:
    """The owner's own value of each patched attribute, for the modules imported so far."""
    found: dict[str, object] = {}
    for module_name, class_name, name in _PATCHED:
        module = sys.modules.get(module_name)
        if module is None:
            continue
        owner = getattr(module, class_name) if class_name else module
        found[f"{module_name}.{class_name + '.' if class_name else ''}{name}"] = vars(owner).get(name)
    found["sys.meta_path collector finders"] = tuple(
        finder for finder in sys.meta_path if type(finder).__module__.startswith("collector")
    )
    return found


@pytest.fixture(autouse=True)
def interpreter_restored() -> Iterator[None]:
    from collector import _patches

    before = _patched_attributes()
    yield
    import collector

    # Apps a test attached in-process are detached here, as the app's shutdown would: what must hold
    # is that detaching the last one leaves the interpreter exactly as it was.
    for app in list(collector._apps):
        collector.uninstrument(app)
    left = [entry.describe() for entry in _patches.active()]
    after = _patched_attributes()
    _patches.undo_all()  # one leaking test must not fail every test after it
    assert left == [], f"patches left in the ledger: {left}"
    changed = [
        name
        for name, value in after.items()
        if name in before
        and before[name] is not value
        and not (isinstance(value, tuple) and before[name] == value)
    ]
    changed += [
        name
        for name, value in after.items()
        if name not in before
        and getattr(getattr(value, "__code__", None), "co_filename", "").startswith(str(ROOT / "collector"))
    ]
    assert changed == [], f"attributes not restored: {changed}"
