"""Diagnosis accuracy of ``collector doctor``: break one tip at a time in the sample app, ask the doctor.

    .venv/bin/python benchmarks/diagnosis.py --seconds 10 --rate 8 --output benchmarks/results/diagnosis-short

For each tip N: the sample app under its ``tip=N`` scenario (tip 4: one uvicorn process, every other
scenario: gunicorn with one worker per core), then the doctor in both modes over the same traffic:
two scrapes of ``/metrics`` ``--seconds`` apart, and a real Prometheus (1 s scrapes) over the same
window. Recorded: whether tip N is ranked first among the broken tips, whether the doctor names the
right route (or cache, mount) for it, and where it applies the right code location (tip 9: the
blocking call's stall location; tip 10: the hottest function of the slowest kept profile). Then
``fixed``: every tip broken there is a false alarm. Writes ``<output>.json`` and ``<output>.md``.

Each app gets ``--warmup`` seconds of ``fixed`` load first (pools open, caches fill). Tip 10 broken is a
slow route that nobody profiles, so ``tip=10`` runs on an app with profiling off; its code column comes
from the same scenario on the profiled app (the tip followed: the profile names the slow function).

The doctor is called in process (``collector._cli_doctor.build_report``, what the command runs).
Needs PostgreSQL and Redis (``--database-url``, ``--redis-url``) and ``/usr/bin/prometheus``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from collector._cli_doctor import build_report  # noqa: E402
from collector._doctor import Report, SourceError  # noqa: E402
from sample_app import seed  # noqa: E402
from sample_app.load import fill  # noqa: E402
from sample_app.load import run as drive  # noqa: E402
from sample_app.tips import features  # noqa: E402

TOKEN = "diagnosis-benchmark-0123456789"
# Where the doctor should point for each tip: the label that names the place, and its value(s).
WHERE: dict[int, tuple[str, tuple[str, ...]]] = {
    5: ("cache", ("shop",)),
    7: ("mount", ("/static",)),
}
# Features whose weight leaves them under the doctor's traffic guard at the benchmark's rate get one more
# request to their broken variant every this many seconds (tip 10: weight 0.1, 0.08/s at 8 req/s).
TOP_UP: dict[int, float] = {10: 4.0}
# Tip 10's quadratic scan must pass the 0.5 s p99 on an idle machine: 0.3 to 0.6 s a request at 4,000
# customers (seen on an idle machine), so the run uses more.
SAMPLE_SIZE = "6000"
# The code a right diagnosis names: tip 9 the stall location, tip 10 the slowest profile's hottest function.
CODE: dict[int, str] = {9: "exchange_rate_blocking", 10: "recommend_slowly"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Processes:
    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.running.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        self.running.remove(process)

    def stop_all(self) -> None:
        for process in list(self.running):
            self.stop(process)


def wait_http(url: str, process: subprocess.Popen[bytes], seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"error: {process.args[0]} exited early")
        try:
            if httpx.get(url, timeout=5).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"error: {url} did not answer in {seconds:.0f} s")


def start_shop(
    procs: Processes, tmp: Path, env: dict[str, str], port: int, gunicorn: bool, profile: bool = True
) -> Any:
    multiproc = tmp / "multiproc"
    multiproc.mkdir(exist_ok=True)
    for leftover in multiproc.glob("*.db"):  # a new app starts from zero, as in a new container
        leftover.unlink()
    environment = {**env, "COLLECTOR_PROFILE": "true" if profile else "false"}
    # Tip 10's code column reads a profile: on Python 3.11 the profiler runs only when asked for by
    # name (README, "Profiling on Python 3.11"); a benchmark run of minutes takes that risk.
    environment["COLLECTOR_PROFILE_ON_PYTHON311"] = "true"
    if gunicorn:
        environment["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc)
        command = [sys.executable, "-m", "sample_app.serve", "--port", str(port)]
    else:
        environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
        uvicorn = str(Path(sys.executable).with_name("uvicorn"))
        command = [uvicorn, "sample_app.main:app", "--port", str(port), "--no-access-log"]
    process = procs.start(command, environment, tmp / f"shop-{'gunicorn' if gunicorn else 'uvicorn'}.log")
    wait_http(f"http://127.0.0.1:{port}/good/popular-products", process)
    return process


def arguments(**kw: Any) -> argparse.Namespace:
    base = dict(prometheus=None, metrics_url=None, job=None, since="30m", interval=15.0)
    base.update(profiles_url=None, token=TOKEN, format="json")
    base.update(kw)
    return argparse.Namespace(**base)


def judge(tip: int | None, report: Report) -> dict[str, Any]:
    broken = [t.number for t in report.broken]
    row: dict[str, Any] = {"broken": broken, "first": broken[0] if broken else None}
    if tip is None:
        row["false_alarms"] = broken
        return row
    result = next(t for t in report.tips if t.number == tip)
    row["status"] = result.status
    row["why"] = result.why
    row["named_first"] = bool(broken) and broken[0] == tip
    label, wanted = WHERE.get(tip, ("route", tuple(p for f in features(tip) for p in f.bad)))
    if tip == 4:
        row["where"], row["right_where"] = "service", None
    else:
        row["where"] = result.top(label)
        row["right_where"] = row["where"] in wanted
    if tip == 9:
        row["code"] = result.top("location")
    elif tip == 10:
        row["code"] = hottest(report)
    if tip in CODE:
        row["right_code"] = bool(row["code"]) and CODE[tip] in str(row["code"])
    return row


def hottest(report: Report) -> str | None:
    """The slowest kept profile's hottest function, with its route."""
    slowest = report.profiles[0] if report.profiles else {}
    hot = slowest.get("hottest") or {}
    return f"{hot.get('function')} ({slowest.get('route')})" if hot else None


def attempt(tip: int | None, args: argparse.Namespace) -> dict[str, Any]:
    try:
        return judge(tip, build_report(args))
    except SourceError as exc:  # recorded as a miss: on a loaded machine a scrape can time out
        return {"error": str(exc), "broken": [], "named_first": False, "false_alarms": []}


@contextlib.contextmanager
def topped_up(shop: str, tip: int | None) -> Iterator[None]:
    """While inside: one more request to the tip's broken feature every ``TOP_UP[tip]`` seconds."""
    if tip not in TOP_UP:
        yield
        return
    stop = threading.Event()
    rng = random.Random(17)
    counts = seed.counts(int(SAMPLE_SIZE))

    def send() -> None:
        with httpx.Client(base_url=shop, timeout=60) as client:
            while not stop.wait(TOP_UP[tip]):
                for feature in features(tip):
                    with contextlib.suppress(httpx.HTTPError):
                        client.get(fill(rng.choice(feature.bad), rng, counts))

    sender = threading.Thread(target=send)
    sender.start()
    try:
        yield
    finally:
        stop.set()
        sender.join()


def measure(
    scenario: str, shop: str, metrics: str, prometheus: str, seconds: float, rate: float
) -> dict[str, Any]:
    tip = int(scenario.split("=")[1]) if scenario.startswith("tip=") else None
    drive(shop, scenario, 3, rate, seed=7)  # every series exists before the first scrape
    profiles = f"{shop}/_collector/profiles"
    local: list[dict[str, Any]] = []
    scrapes = arguments(metrics_url=metrics, interval=seconds, profiles_url=profiles)
    scraper = threading.Thread(target=lambda: local.append(attempt(tip, scrapes)))
    with topped_up(shop, tip):
        scraper.start()
        time.sleep(1)
        drive(shop, scenario, max(1.0, seconds - 2), rate, seed=11)
        scraper.join()
    window = arguments(prometheus=prometheus, job="shop", since=f"{round(seconds)}s", profiles_url=profiles)
    return {"scenario": scenario, "scrapes": local[0], "prometheus": attempt(tip, window)}


def profiled_code(shop: str, metrics: str, seconds: float, rate: float) -> str | None:
    """Tip 10 followed: with profiling on, the doctor's slowest profile names the slow code."""
    with topped_up(shop, 10):
        drive(shop, "tip=10", seconds, rate, seed=13)
    profiles = f"{shop}/_collector/profiles"
    report = build_report(arguments(metrics_url=metrics, interval=1.0, profiles_url=profiles))
    return hottest(report)


def _mark(value: Any) -> str:
    return (
        {True: "yes", False: "**no**", None: "n/a"}.get(value, str(value))
        if isinstance(value, bool | None)
        else str(value)
    )


def table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"# Diagnosis accuracy ({meta['label']})",
        "",
        f"{meta['when']}, {meta['machine']}; load {meta['seconds']:g} s per scenario at "
        f"{meta['rate']:g} req/s; "
        "sample app on PostgreSQL and Redis, gunicorn one worker per core (tip 4: one uvicorn process); "
        f"Prometheus scraping every {meta['scrape']} s.",
        "",
        "| scenario | mode | broken (ranked) | named first | where | right | code | right |",
        "|---|---|---|---|---|---|---|---|",
    ]
    totals = {"scrapes": [0, 0], "prometheus": [0, 0]}
    for row in rows:
        for mode in ("scrapes", "prometheus"):
            r = row[mode]
            broken = ", ".join(map(str, r["broken"])) or "none"
            if row["scenario"] == "fixed":
                totals[mode][1] = len(r["false_alarms"])
                lines.append(
                    f"| fixed | {mode} | {broken} | | | | | false alarms: {len(r['false_alarms'])} |"
                )
                continue
            totals[mode][0] += bool(r["named_first"])
            if "error" in r:
                lines.append(
                    f"| {row['scenario']} | {mode} | could not read: {r['error']} | **no** | | | | |"
                )
                continue
            lines.append(
                f"| {row['scenario']} | {mode} | {broken} | {_mark(r['named_first'])} | `{r['where']}` | "
                f"{_mark(r['right_where'])} | {('`' + str(r.get('code')) + '`') if 'code' in r else ''} | "
                f"{_mark(r.get('right_code')) if 'right_code' in r else ''} |"
            )
    tips = sum(1 for row in rows if row["scenario"] != "fixed")
    lines += [""]
    for mode, (first, alarms) in totals.items():
        lines.append(f"- {mode}: {first} of {tips} tips named first; {alarms} false alarms under `fixed`.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured load per scenario")
    parser.add_argument("--rate", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of fixed load before measuring")
    parser.add_argument("--scrape", type=int, default=1, help="Prometheus scrape interval, seconds")
    parser.add_argument("--tips", default="1,2,3,4,5,6,7,8,9,10")
    parser.add_argument(
        "--database-url", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15"))
    parser.add_argument("--label", default="full run")
    parser.add_argument("--output", default="benchmarks/results/diagnosis")
    args = parser.parse_args(argv)
    tips = [int(t) for t in args.tips.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="diagnosis-"))
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": args.database_url,
        "REDIS_URL": args.redis_url,
        "SAMPLE_SIZE": SAMPLE_SIZE,
        # Windows of seconds, not the half hour a doctor reads in production: time every request's
        # validation and serialization (tip 3) instead of one in ten.
        "COLLECTOR_INTERNALS_SAMPLE_RATIO": "1",
        "SAMPLE_WORK_DIR": str(tmp / "work"),
        "COLLECTOR_METRICS_PORT": str(metrics_port),
        "COLLECTOR_METRICS_ADDR": "127.0.0.1",
        "COLLECTOR_PROFILE_ENDPOINT": "true",
        "COLLECTOR_PROFILE_TOKEN": TOKEN,
    }
    config = tmp / "prometheus.yml"
    config.write_text(
        f"global: {{scrape_interval: {args.scrape}s, scrape_timeout: {args.scrape}s}}\n"
        "scrape_configs:\n  - job_name: shop\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n"
    )
    procs = Processes()
    prometheus_port = free_port()
    prometheus = f"http://127.0.0.1:{prometheus_port}"
    rows: list[dict[str, Any]] = []
    shop, metrics = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        prom = procs.start(
            [
                "/usr/bin/prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
            ],
            env,
            tmp / "prometheus.log",
        )
        wait_http(prometheus + "/-/ready", prom)
        scenarios = [f"tip={t}" for t in tips if t not in (4, 10)] + ["fixed"]
        app = start_shop(procs, tmp, env, port, gunicorn=True)
        # Warm-up: pools open their connections and caches fill before the first measured window.
        drive(shop, "fixed", args.warmup, args.rate, seed=5)
        time.sleep(args.seconds)  # the warm-up leaves Prometheus' window of the first scenario
        for scenario in scenarios:
            print(f"{scenario} ...", file=sys.stderr, flush=True)
            rows.append(measure(scenario, shop, metrics, prometheus, args.seconds, args.rate))
        if 10 in tips:
            code = profiled_code(shop, metrics, args.seconds, args.rate)
        procs.stop(app)
        if 10 in tips:
            # Tip 10 broken is a slow route that nobody profiles: the same app with profiling off.
            print("tip=10 ...", file=sys.stderr, flush=True)
            app = start_shop(procs, tmp, env, port, gunicorn=True, profile=False)
            drive(shop, "fixed", args.warmup, args.rate, seed=5)
            time.sleep(args.seconds)
            row = measure("tip=10", shop, metrics, prometheus, args.seconds, args.rate)
            for mode in ("scrapes", "prometheus"):
                row[mode]["code"] = code
                row[mode]["right_code"] = bool(code) and CODE[10] in str(code)
            rows.insert(len(rows) - 1, row)
            procs.stop(app)
        if 4 in tips:
            print("tip=4 ...", file=sys.stderr, flush=True)
            app = start_shop(procs, tmp, env, port, gunicorn=False)
            drive(shop, "fixed", args.warmup, args.rate, seed=5)
            time.sleep(args.seconds)
            rows.insert(3, measure("tip=4", shop, metrics, prometheus, args.seconds, args.rate))
    finally:
        procs.stop_all()
    meta = {
        "label": args.label,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}",
        "seconds": args.seconds,
        "rate": args.rate,
        "scrape": args.scrape,
    }
    output = ROOT / args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    output.with_suffix(".md").write_text(table(rows, meta))
    print(table(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
