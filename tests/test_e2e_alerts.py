"""End to end: the sample app breaks every tip, then follows it; Prometheus and Alertmanager see both.

The sample app runs under gunicorn with 2 workers on real PostgreSQL and Redis; during
``antipatterns`` a second instance, one uvicorn process (tip 4's broken variant), is scraped beside it.
A real Prometheus scrapes every second and evaluates the project's rules, generated from the catalogue
with a short rate window and every ``for`` at 0s (the committed files are not touched); a real
Alertmanager routes with the committed tree to a webhook receiver in this test. Each tip's alert must
be pending or firing under ``antipatterns`` and reach the ticket receiver; none may be active once
``fixed`` has filled the window. The test prints tip / alert / state per scenario and the value each
alert's signal had, the numbers the runbooks' thresholds are chosen from. The scenario mix is
topped up where a broken state needs more traffic or concurrency than it sends (``EXTRA``). On a
machine whose cores are busy with other work, waits, stalls and latencies inflate under ``fixed`` too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from collector import catalogue
from collector.catalogue import rules, tips
from collector.catalogue import yaml as catalogue_yaml
from tests.conftest import POSTGRES_URL, REDIS_URL, ROOT, VENV_BIN, free_port

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
ALERTMANAGER = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
pytestmark = pytest.mark.skipif(
    not (os.access(PROMETHEUS, os.X_OK) and os.access(ALERTMANAGER, os.X_OK)),
    reason="needs prometheus and prometheus-alertmanager",
)

WINDOW = "20s"  # the rate window of the test's rules; the committed rules use tips.RULE_WINDOW
SETTLE = 25.0  # seconds after a switch before the window holds only the new scenario (20 s + lags)
ANTIPATTERNS_SECONDS = 45.0
FIXED_SECONDS = 45.0
RATE = 4.0  # requests per second: each feature above the traffic guard, light enough for a shared machine
SAMPLE_SIZE = "3000"  # customers: tip 10's quadratic scan takes about a second, its fix milliseconds


@dataclass(frozen=True)
class Extra:
    """Requests the scenario mix does not send at RATE: ``burst`` at once every ``every`` seconds to
    the feature whose paths contain ``path``, its bad variant under antipatterns, its good under fixed."""

    path: str
    every: float
    burst: int
    why: str


EXTRA = (
    Extra("/recommendations", 6.0, 1, "tip 10's feature has weight 0.1: under the traffic guard at RATE"),
    Extra("/total/", 2.0, 1, "a blocked loop's share grows with the rate of the blocking route"),
    Extra("/invoice", 4.0, 6, "a pool of one connection queues only when requests overlap"),
    Extra("/shipping-quote", 10.0, 90, "tip 9's exhausted pool: more sync requests than 2 x 40 tokens"),
)


@dataclass
class Webhook:
    """An HTTP server recording Alertmanager's notifications: (receiver path, status, alertname)."""

    received: list[tuple[str, str, str]] = field(default_factory=list)

    def start(self) -> tuple[ThreadingHTTPServer, int]:
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                for alert in body["alerts"]:
                    received.append((self.path.strip("/"), alert["status"], alert["labels"]["alertname"]))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server, server.server_address[1]

    def firing(self, receiver: str) -> set[str]:
        return {name for path, status, name in self.received if path == receiver and status == "firing"}


def short_rules(folder: Path) -> list[str]:
    """The catalogue's rules with the short window and every ``for`` at 0s, written under ``folder``."""
    paths = []
    for path, document in rules.documents(window=WINDOW).items():
        for group in document["groups"]:
            for rule in group["rules"]:  # type: ignore[attr-defined]
                if "for" in rule:
                    rule["for"] = "0s"
        target = folder / Path(path).name
        target.write_text(catalogue_yaml.dump(document))
        paths.append(str(target))
    return paths


def prometheus_config(rule_files: list[str], targets: list[str], alertmanager: str) -> dict[str, Any]:
    """The committed prometheus.yml with this test's targets, rules and a 1 s interval."""
    config: dict[str, Any] = yaml.safe_load((ROOT / "prometheus/prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = rule_files
    config["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": [alertmanager]}]
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == tips.SCRAPE_JOB]
    jobs[0]["static_configs"] = [{"targets": targets}]
    config["scrape_configs"] = jobs
    return config


def alertmanager_config(webhook_port: int) -> dict[str, Any]:
    """The committed alertmanager.yml, its receivers pointed at the test's webhook, waits at 1 s."""
    config: dict[str, Any] = yaml.safe_load((ROOT / "prometheus/alertmanager.yml").read_text())
    for route in (config["route"], *config["route"].get("routes", ())):
        route.update(group_wait="1s", group_interval="1s")
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = f"http://127.0.0.1:{webhook_port}/{receiver['name']}"
    return config


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def wait_until(ready: Callable[[], bool], daemon: Daemon | None, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon is not None and daemon.process.poll() is not None:
            raise RuntimeError(f"{what} exited:\n{daemon.log.read_text(errors='replace')[-3000:]}")
        try:
            if ready():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready after {timeout:g} s")


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(name: str, *cmd: str, env: dict[str, str] | None = None) -> Daemon:
        log = tmp_path / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        started.append(Daemon(process, log))
        return started[-1]

    yield start
    for daemon in reversed(started):
        daemon.stop()


class Prometheus:
    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=10)

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = self.client.get("/api/v1/query", params={"query": expr})
        response.raise_for_status()
        return response.json()["data"]["result"]  # type: ignore[no-any-return]

    def alerts(self) -> list[dict[str, Any]]:
        response = self.client.get("/api/v1/alerts")
        response.raise_for_status()
        return response.json()["data"]["alerts"]  # type: ignore[no-any-return]


def seed_database(env: dict[str, str]) -> None:
    """Load the shop's data once before the workers start (as ``python -m sample_app.serve`` does)."""
    code = (
        "import asyncio, sys\n"
        "from sqlalchemy.ext.asyncio import create_async_engine\n"
        "from sample_app import seed\n"
        "from sample_app.config import Config\n"
        "config = Config.from_env()\n"
        "async def main():\n"
        "    engine = create_async_engine(config.database_url)\n"
        "    await seed.prepare(engine, config.seed, config.size, config.work_dir)\n"
        "    await engine.dispose()\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True, timeout=120)


@dataclass
class Phase:
    """What one scenario showed: the highest state of each alert, and each alert's signal values."""

    states: dict[str, str] = field(default_factory=dict)
    signals: dict[str, list[str]] = field(default_factory=dict)
    served: int = 0  # the scenario's requests answered below 400

    def observe(self, alerts: list[dict[str, Any]]) -> None:
        for alert in alerts:
            name = alert["labels"]["alertname"]
            if self.states.get(name) != "firing":
                self.states[name] = alert["state"]


def signal_values(prometheus: Prometheus, seconds: float) -> dict[str, list[str]]:
    """Each tip alert's recorded signal over the last ``seconds``, per series: its worst value (the
    highest, or the lowest for a ``<`` check), the numbers the runbooks' thresholds are chosen from."""
    out = {}
    for _, alert in catalogue.alerts():
        record = alert.check.signal.record(WINDOW)
        worst = "max_over_time" if alert.check.comparator == ">" else "min_over_time"
        values = []
        query = f'{worst}({record}{{job="{tips.SCRAPE_JOB}"}}[{round(seconds)}s:1s])'
        for sample in prometheus.query(query):
            labels = {k: v for k, v in sample["metric"].items() if k not in ("__name__", "job")}
            where = ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"
            values.append(f"{where}: {float(sample['value'][1]):.4g}")
        out[alert.name] = sorted(values)
    return out


def drive(
    prometheus: Prometheus,
    url: str,
    scenario: str,
    seconds: float,
    phase: Phase,
    previous: Phase | None = None,
) -> None:
    """Run the load in a thread; meanwhile record alert states, those of the first SETTLE seconds
    (while the window still holds the previous scenario's requests) for the ``previous`` phase."""
    settle = SETTLE if previous is not None else 0.0
    from sample_app import load
    from sample_app.tips import FEATURES

    outcome: dict[str, Any] = {}
    variant = "bad" if scenario == "antipatterns" else "good"

    async def extra(plan: Extra) -> None:
        paths = [p for f in FEATURES for p in getattr(f, variant) if any(plan.path in q for q in f.bad)]
        rng = random.Random(plan.path)
        limits = httpx.Limits(max_connections=plan.burst, max_keepalive_connections=plan.burst)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
            counts = (await client.get("/")).json()["counts"]

            async def one() -> None:
                with contextlib.suppress(httpx.HTTPError):  # the scenario's own counts judge the app
                    await client.get(load.fill(rng.choice(paths), rng, counts))

            sent = []
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                sent += [asyncio.create_task(one()) for _ in range(plan.burst)]
                await asyncio.sleep(plan.every)
            await asyncio.gather(*sent)

    async def both() -> None:
        results = await asyncio.gather(
            load.drive(url, scenario, seconds, RATE, concurrency=64, seed=11), *(extra(e) for e in EXTRA)
        )
        outcome["counts"] = results[0]

    def run() -> None:
        try:
            asyncio.run(both())
        except Exception as exc:  # reported below, in the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    start = time.monotonic()
    thread.start()
    while thread.is_alive():
        elapsed = time.monotonic() - start
        (phase if elapsed >= settle or previous is None else previous).observe(prometheus.alerts())
        if elapsed >= seconds and not phase.signals:  # the window still holds the scenario's load
            phase.signals = signal_values(prometheus, seconds - settle)
        thread.join(1.0)
    assert "error" not in outcome, outcome.get("error")
    phase.signals = phase.signals or signal_values(prometheus, seconds - settle)
    counts = outcome["counts"]
    phase.served = counts.requests - counts.errors
    print(f"\n{scenario}: {counts.requests} requests, {counts.errors} errors in {counts.seconds:.1f} s")


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_each_tips_alert_fires_under_antipatterns_reaches_alertmanager_and_none_under_fixed(
    multiproc_dir: str, daemons: Callable[..., Daemon], tmp_path: Path
) -> None:
    env = {
        "DATABASE_URL": POSTGRES_URL,
        "REDIS_URL": REDIS_URL,
        "SAMPLE_WORK_DIR": str(tmp_path / "sample"),
        # The sample app profiles slow requests by default; tip 10's broken state is slow and unprofiled.
        "COLLECTOR_PROFILE": "false",
        # Every request's internals timed, so tip 3 and tip 8 have data in a 10 s window.
        "COLLECTOR_INTERNALS_SAMPLE_RATIO": "1",
        "SAMPLE_SIZE": SAMPLE_SIZE,
    }
    began = time.monotonic()

    def mark(what: str) -> None:
        print(f"[{time.monotonic() - began:5.1f} s] {what}", flush=True)

    app_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    app_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    seed_database(app_env)
    app_port, one_port = free_port(), free_port()
    app = daemons(
        "gunicorn",
        str(VENV_BIN / "gunicorn"),
        "sample_app.main:app",
        "-c",
        "python:collector.gunicorn_conf",
        "-b",
        f"127.0.0.1:{app_port}",
        "-w",
        "2",
        env={**app_env, "PROMETHEUS_MULTIPROC_DIR": multiproc_dir},
    )
    one_process = daemons(  # tip 4 broken: one process on a 2-core machine
        "uvicorn",
        str(VENV_BIN / "uvicorn"),
        "sample_app.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(one_port),
        "--no-access-log",
        env=app_env,
    )
    app_url, one_url = f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{one_port}"
    for url, daemon in ((app_url, app), (one_url, one_process)):
        wait_until(lambda url=url: httpx.get(url + "/").status_code == 200, daemon, url, timeout=120)

    mark("sample app up")
    webhook = Webhook()
    hook_server, hook_port = webhook.start()
    am_port, prom_port = free_port(), free_port()
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(alertmanager_config(hook_port)))
    alertmanager = daemons(
        "alertmanager",
        ALERTMANAGER,
        f"--config.file={tmp_path / 'alertmanager.yml'}",
        f"--storage.path={tmp_path / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{am_port}",
        "--cluster.listen-address=",
    )
    rule_dir = tmp_path / "rules"
    rule_dir.mkdir()
    targets = [url.removeprefix("http://") for url in (app_url, one_url)]
    config = prometheus_config(short_rules(rule_dir), targets, f"127.0.0.1:{am_port}")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    check = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    prom_daemon = daemons(
        "prometheus",
        PROMETHEUS,
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'prom-data'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
        "--enable-feature=exemplar-storage",
    )
    prometheus = Prometheus(f"http://127.0.0.1:{prom_port}")
    wait_until(
        lambda: httpx.get(f"http://127.0.0.1:{am_port}/-/ready").status_code == 200,
        alertmanager,
        "alertmanager",
    )
    wait_until(
        lambda: len(prometheus.query(f'up{{job="{tips.SCRAPE_JOB}"}} == 1')) == 2, prom_daemon, "prometheus"
    )
    mark("prometheus and alertmanager up")
    try:
        antipatterns, fixed = Phase(), Phase()
        drive(prometheus, app_url, "antipatterns", ANTIPATTERNS_SECONDS, antipatterns)
        mark("antipatterns done")
        one_process.stop()  # tip 4 followed: every instance runs one worker a core
        drained = f'sum(fastapi_requests_in_progress{{job="{tips.SCRAPE_JOB}"}}) < 1'
        wait_until(lambda: bool(prometheus.query(drained)), None, "the broken requests to finish", 60)
        drive(prometheus, app_url, "fixed", FIXED_SECONDS, fixed, antipatterns)
        mark("fixed done")
        time.sleep(2.0)  # the last group's notification
    finally:
        hook_server.shutdown()

    tickets = webhook.firing("ticket")
    rows = [("tip", "alert", "antipatterns", "fixed", "at the ticket receiver")]
    for tip, alert in catalogue.alerts():
        reached = "yes" if alert.name in tickets else "no"
        rows.append(
            (
                str(tip.number),
                alert.name,
                antipatterns.states.get(alert.name, "inactive"),
                fixed.states.get(alert.name, "inactive"),
                reached,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print()
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print("\nsignal per alert: antipatterns | fixed")
    for _, alert in catalogue.alerts():
        print(f"{alert.name}: {antipatterns.signals[alert.name]} | {fixed.signals[alert.name]}")
    others = sorted(set(antipatterns.states) - {a.name for _, a in catalogue.alerts()})
    print(f"\nother alerts under antipatterns: {others}; pages: {sorted(webhook.firing('pager'))}")

    for phase, seconds in ((antipatterns, ANTIPATTERNS_SECONDS), (fixed, FIXED_SECONDS)):
        assert phase.served > seconds * RATE * 0.5, "the app did not keep up: the verdicts are not about it"
    expected = {alert.name for _, alert in catalogue.alerts()}
    assert {name for name in expected if antipatterns.states.get(name) in ("pending", "firing")} == expected
    assert expected <= tickets
    assert not {name for name in (a.name for _, a in catalogue.alerts()) if name in fixed.states}
