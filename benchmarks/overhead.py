"""Throughput and p99 latency cost of the collector, beside bare FastAPI and the popular alternatives.

    .venv/bin/python benchmarks/overhead.py [--rounds 8] [--duration 5] [--scenario trivial|realistic]

Every variant of ``benchmarks/apps.py`` runs in its own uvicorn process (one worker, uvloop, no
access log) pinned to core 0; ``wrk`` runs pinned to core 1. All servers start once and are warmed
up; each round then measures every variant once, in a freshly shuffled order, so that drift in the
machine's load hits all variants alike. A variant's cost is the median over rounds of its paired
ratio to bare FastAPI in the same round (``collector_asyncpg``'s to ``bare_asyncpg``, the same
endpoint on raw asyncpg, ``apps.BASELINE``). Results go to ``benchmarks/results/<scenario>.json`` and
``.png``; a Markdown table is printed and written to ``benchmarks/results/<scenario>.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import apps

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
VENV_BIN = Path(sys.executable).parent
SERVER_CORE = "0"
CLIENT_CORE = "1"
CONNECTIONS = 32
PATH = "/items/42"
# Collector metrics-only, as a fraction of bare FastAPI's requests per second (the targets).
TARGET_RATIO = {"trivial": 0.90, "realistic": 0.95}
TARGET_P99_DELTA_MS = 1.0
PACKAGES = (
    "fastapi",
    "starlette",
    "pydantic",
    "uvicorn",
    "uvloop",
    "httptools",
    "prometheus-client",
    "prometheus-fastapi-instrumentator",
    "opentelemetry-api",
    "opentelemetry-sdk",
    "opentelemetry-instrumentation-fastapi",
    "sqlalchemy",
    "asyncpg",
    "fastapi-collector",
)


@dataclass
class Server:
    variant: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Measurement:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    # Server CPU time (user + system) per request served, from /proc: less noisy than req/s.
    cpu_us_per_request: float | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def start_server(variant: str, scenario: str, logs: Path, extra_env: dict[str, str]) -> Server:
    port = free_port()
    env = {
        **os.environ,
        **extra_env,
        **apps.VARIANT_ENV[variant],
        "BENCH_VARIANT": variant,
        "BENCH_SCENARIO": scenario,
        "PYTHONPATH": str(ROOT),
    }
    cmd = ["taskset", "-c", SERVER_CORE, str(VENV_BIN / "uvicorn"), "apps:create_app", "--factory"]
    cmd += ["--app-dir", str(HERE), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    cmd += ["--loop", "uvloop", "--no-access-log", "--log-level", "warning"]
    log = logs / f"{variant}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Server(variant, port, process, log)


def wait_ready(server: Server, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.variant} server exited:\n{server.log.read_text(errors='replace')}")
        try:
            info: dict[str, Any] = get_json(server.url + "/_bench")
            with urllib.request.urlopen(server.url + PATH, timeout=5) as response:
                if response.status == 200:
                    return info
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{server.variant} server not ready after {timeout}s:\n{server.log.read_text()}")


def stop_servers(servers: list[Server]) -> None:
    for server in servers:
        if server.process.poll() is None:
            os.killpg(server.process.pid, signal.SIGTERM)
    for server in servers:
        try:
            server.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(5)


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS_MS[unit]


def parse_wrk(output: str) -> Measurement:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    total = re.search(r"(\d+) requests in", output)
    if not (rps and p50 and p99 and total):
        raise RuntimeError(f"cannot read wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return Measurement(
        rps=float(rps.group(1)),
        p50_ms=_ms(p50.group(1)),
        p99_ms=_ms(p99.group(1)),
        requests=int(total.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


def run_wrk(server: Server, duration: float) -> Measurement:
    if server.process.poll() is not None:
        raise RuntimeError(f"{server.variant} server died:\n{server.log.read_text(errors='replace')}")
    cmd = ["taskset", "-c", CLIENT_CORE, "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration:g}s", "--latency"]
    cmd.append(server.url + PATH)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30, check=True)
    return parse_wrk(done.stdout)


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a process so far, or None where /proc cannot tell."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_pids() -> list[int]:
    pids = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "postgres":
                pids.append(int(comm.parent.name))
        except OSError:
            continue
    return pids


def pin_postgres(core: str) -> tuple[str, Any]:
    """Move the local PostgreSQL's processes (and so its future backends) onto ``core``.

    Returns what was done, for the results, and a function that puts them back.
    """
    pids = postgres_pids()
    if not pids:
        return "not pinned: no local postgres process found", lambda: None
    try:
        before = os.sched_getaffinity(min(pids))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # a backend that just ended
                os.sched_setaffinity(pid, {int(core)})
    except PermissionError:
        return "not pinned: no permission to change postgres's CPU affinity", lambda: None

    def restore() -> None:
        for pid in postgres_pids():
            try:
                os.sched_setaffinity(pid, before)
            except OSError:
                continue

    return f"pinned to core {core} with wrk ({len(pids)} processes; restored afterwards)", restore


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.splitlines()
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": wrk[0] if wrk else None,
        "packages": versions,
        "load_average_at_start": list(os.getloadavg()),
    }


def summarise(variants: list[str], rounds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    summary: dict[str, dict[str, float]] = {}
    for variant in variants:
        runs = [r["results"][variant] for r in rounds]
        base = [r["results"][apps.BASELINE.get(variant, "bare")] for r in rounds]
        ratios = [run["rps"] / b["rps"] for b, run in zip(base, runs, strict=True)]
        deltas = [run["p99_ms"] - b["p99_ms"] for b, run in zip(base, runs, strict=True)]
        cpu = [
            b["cpu_us_per_request"] / run["cpu_us_per_request"]
            for b, run in zip(base, runs, strict=True)
            if run.get("cpu_us_per_request") and b.get("cpu_us_per_request")
        ]
        summary[variant] = {
            "median_rps": statistics.median(run["rps"] for run in runs),
            "median_p50_ms": statistics.median(run["p50_ms"] for run in runs),
            "median_p99_ms": statistics.median(run["p99_ms"] for run in runs),
            "median_ratio_to_bare": statistics.median(ratios),
            "min_ratio_to_bare": min(ratios),
            "max_ratio_to_bare": max(ratios),
            "median_p99_delta_ms": statistics.median(deltas),
        }
        if cpu:
            summary[variant]["median_cpu_us_per_request"] = statistics.median(
                run["cpu_us_per_request"] for run in runs if run.get("cpu_us_per_request")
            )
            summary[variant]["median_cpu_ratio_to_bare"] = statistics.median(cpu)
    return summary


def markdown_table(scenario: str, summary: dict[str, dict[str, float]]) -> str:
    lines = [
        "| variant | median req/s | ratio to bare (paired median) | ratio range | median p99 (ms) "
        "| p99 - bare (paired median, ms) | server CPU µs/request "
        "| bare's CPU/request ÷ this (paired median) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for variant, s in summary.items():
        cpu = s.get("median_cpu_us_per_request")
        cpu_ratio = s.get("median_cpu_ratio_to_bare")
        name = f"{variant} (to {apps.BASELINE[variant]})" if variant in apps.BASELINE else variant
        lines.append(
            f"| {name} | {s['median_rps']:.0f} | {s['median_ratio_to_bare']:.2f} "
            f"| {s['min_ratio_to_bare']:.2f} to {s['max_ratio_to_bare']:.2f} | {s['median_p99_ms']:.2f} "
            f"| {s['median_p99_delta_ms']:+.2f} | {'n/a' if cpu is None else f'{cpu:.0f}'} "
            f"| {'n/a' if cpu_ratio is None else f'{cpu_ratio:.2f}'} |"
        )
    ours = summary.get("collector")
    if ours is None:
        return "\n".join(lines) + "\n"
    target = TARGET_RATIO[scenario]
    verdict = (
        f"collector (metrics only): ratio {ours['median_ratio_to_bare']:.2f} vs target ≥ {target:.2f} "
        f"({'met' if ours['median_ratio_to_bare'] >= target else 'NOT met'}); "
        f"p99 {ours['median_p99_delta_ms']:+.2f} ms vs target ≤ +{TARGET_P99_DELTA_MS:.0f} ms "
        f"({'met' if ours['median_p99_delta_ms'] <= TARGET_P99_DELTA_MS else 'NOT met'})"
    )
    return "\n".join(lines) + "\n\n" + verdict + "\n"


def chart(scenario: str, summary: dict[str, dict[str, float]], rounds: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    ratios = [summary[n]["median_ratio_to_bare"] for n in names]
    low = [r - summary[n]["min_ratio_to_bare"] for n, r in zip(names, ratios, strict=True)]
    high = [summary[n]["max_ratio_to_bare"] - r for n, r in zip(names, ratios, strict=True)]
    colours = [
        "#7f7f7f" if n.startswith("bare") else "#1f77b4" if n.startswith("collector") else "#ff7f0e"
        for n in names
    ]
    target = TARGET_RATIO[scenario]

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    left.bar(names, ratios, color=colours, yerr=[low, high], capsize=4)
    left.axhline(target, color="red", linestyle="--", label=f"target {target:.2f} (collector, metrics only)")
    for i, n in enumerate(names):
        left.text(i, summary[n]["max_ratio_to_bare"] + 0.02, f"{ratios[i]:.2f}", ha="center", va="bottom")
    left.set_ylim(0, max(1.3, max(summary[n]["max_ratio_to_bare"] for n in names) + 0.3))
    left.set_ylabel("requests/s as a fraction of bare (paired median)")
    left.set_title("Throughput vs bare FastAPI (whiskers: min to max over rounds)")
    left.legend(loc="upper right", framealpha=1)

    p99 = [summary[n]["median_p99_ms"] for n in names]
    right.bar(names, p99, color=colours)
    right.set_ylim(0, max(p99) * 1.3)
    bare_p99 = summary["bare"]["median_p99_ms"]
    right.axhline(bare_p99 + TARGET_P99_DELTA_MS, color="red", linestyle="--", label="bare + 1 ms")
    for i, v in enumerate(p99):
        right.text(i, v, f"{v:.1f}", ha="center", va="bottom")
    right.set_ylabel("p99 latency (ms, median over rounds)")
    right.set_title(f"p99 latency, wrk -c{CONNECTIONS}")
    right.legend(loc="upper right", framealpha=1)

    for axis in (left, right):
        axis.tick_params(axis="x", rotation=20)
    fig.suptitle(f"Overhead, scenario '{scenario}', {rounds} interleaved rounds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of wrk per measurement")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of wrk per variant before round 1")
    parser.add_argument("--scenario", choices=apps.SCENARIOS, default="trivial")
    parser.add_argument(
        "--variants", default=",".join(apps.VARIANTS), help="comma-separated; bare is always in"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for the round orders")
    parser.add_argument(
        "--postgres-url", default=os.environ.get("BENCH_POSTGRES_URL", apps.DEFAULT_POSTGRES_URL)
    )
    parser.add_argument(
        "--postgres-core",
        default=CLIENT_CORE,
        help="core for the local PostgreSQL during the run (realistic scenario), 'shared' to leave it alone",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="folder for <scenario>.json/.png/.md")
    parser.add_argument(
        "--replot", action="store_true", help="redraw .png and .md from <scenario>.json, no run"
    )
    args = parser.parse_args()
    args.variant_list = ["bare"] + [v for v in args.variants.split(",") if v and v != "bare"]
    for variant in list(args.variant_list):  # a paired variant brings its baseline
        if apps.BASELINE.get(variant, "bare") not in args.variant_list:
            args.variant_list.append(apps.BASELINE[variant])
    unknown = set(args.variant_list) - set(apps.VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    if args.rounds < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("--rounds and --duration must be positive")
    if (os.cpu_count() or 1) < 2:
        parser.error("needs two cores: the server on core 0, wrk on core 1")
    for tool, package in (("wrk", "wrk"), ("taskset", "util-linux")):
        if not args.replot and shutil.which(tool) is None:
            parser.error(f"{tool} not found: install Debian's {package} package (apt-get install {package})")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)
    return args


def measure_round(
    i: int, rounds: int, variants: list[str], args: argparse.Namespace, logs: Path, shuffler: random.Random
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One round: fresh servers for every variant, warmed up, then measured once each in a random order.

    Fresh processes each round: two processes of the very same app can differ by 10 % or more
    for their whole life (memory layout), which interleaving alone does not average out.
    """
    servers: list[Server] = []
    try:
        for variant in variants:
            servers.append(
                start_server(variant, args.scenario, logs, {"BENCH_POSTGRES_URL": args.postgres_url})
            )
        setup = {s.variant: wait_ready(s) for s in servers}
        if args.warmup:
            for server in servers:
                run_wrk(server, args.warmup)
        order = servers[:]
        shuffler.shuffle(order)
        results: dict[str, dict[str, Any]] = {}
        for server in order:
            time.sleep(0.5)  # let the previous server's background work settle
            cpu_before = cpu_seconds(server.process.pid)
            m = run_wrk(server, args.duration)
            cpu_after = cpu_seconds(server.process.pid)
            if cpu_before is not None and cpu_after is not None and m.requests:
                m.cpu_us_per_request = (cpu_after - cpu_before) / m.requests * 1e6
            if m.non_2xx or m.socket_errors:
                raise RuntimeError(
                    f"{server.variant}: {m.non_2xx} non-2xx responses, {m.socket_errors} errors"
                )
            results[server.variant] = m.__dict__
            cpu = f"{m.cpu_us_per_request:7.0f}" if m.cpu_us_per_request is not None else "    n/a"
            print(
                f"  round {i}/{rounds}  {server.variant:<18} {m.rps:9.0f} req/s  p99 {m.p99_ms:7.2f} ms"
                f"  cpu {cpu} us/req",
                flush=True,
            )
        final = {s.variant: {**setup[s.variant], **get_json(s.url + "/_bench")} for s in servers}
    finally:
        stop_servers(servers)
    done = {
        "round": i,
        "order": [s.variant for s in order],
        "load_average_1m": os.getloadavg()[0],
        "results": results,
    }
    return done, final


def write_report(output: Path, scenario: str, summary: dict[str, dict[str, float]], rounds: int) -> str:
    table = markdown_table(scenario, summary)
    (output / f"{scenario}.md").write_text(table)
    chart(scenario, summary, rounds, output / f"{scenario}.png")
    return table


def main() -> int:
    args = parse_args()
    if args.replot:
        saved = json.loads((args.output / f"{args.scenario}.json").read_text())
        print(write_report(args.output, args.scenario, saved["summary"], saved["settings"]["rounds"]))
        return 0
    variants: list[str] = args.variant_list
    # Stoppable however it was started (a background job ignores SIGINT): servers are killed in `finally`.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    estimate = args.rounds * (8 + len(variants) * (args.warmup + args.duration + 0.6)) + 10
    print(
        f"overhead: scenario {args.scenario}, {len(variants)} variants, {args.rounds} rounds x "
        f"{args.duration:g} s, about {estimate / 60:.1f} min",
        flush=True,
    )
    if args.scenario == "realistic":
        asyncio.run(apps.seed(args.postgres_url))

    info = machine_info()
    started = datetime.datetime.now(datetime.UTC)
    postgres, unpin = "not used", None
    if args.scenario == "realistic":
        if args.postgres_core == "shared":
            postgres = "not pinned: shares both cores"
        else:
            postgres, unpin = pin_postgres(args.postgres_core)
        print(f"  postgres: {postgres}", flush=True)
    rounds: list[dict[str, Any]] = []
    final: dict[str, Any] = {}
    shuffler = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="overhead-") as logs:
        try:
            for i in range(1, args.rounds + 1):
                done, final = measure_round(i, args.rounds, variants, args, Path(logs), shuffler)
                rounds.append(done)
        finally:
            if unpin is not None:
                unpin()

    summary = summarise(variants, rounds)
    info["load_average_at_end"] = list(os.getloadavg())
    server_setup = {
        v: {
            "pid_last_round": final[v]["pid"],
            "instrument_engine_used": final[v]["instrument_engine"],
            "spans_exported": final[v]["spans_exported"],
        }
        for v in variants
    }
    result = {
        "scenario": args.scenario,
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "benchmarks/overhead.py", *sys.argv[1:]]),
        "settings": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "seed": args.seed,
            "path": PATH,
            "wrk": f"taskset -c {CLIENT_CORE} wrk -t1 -c{CONNECTIONS} -d{args.duration:g}s --latency",
            "server": f"taskset -c {SERVER_CORE} uvicorn --workers 1 --loop uvloop --no-access-log",
            "postgres": postgres,
            "span_export": "BatchSpanProcessor (SDK defaults) into an in-process exporter that counts, drops",
        },
        "machine": info,
        "variants": {v: {"description": apps.VARIANTS[v], "env": apps.VARIANT_ENV[v]} for v in variants},
        "server_setup": server_setup,
        "rounds": rounds,
        "summary": summary,
        "targets": {
            "collector_ratio_to_bare_at_least": TARGET_RATIO[args.scenario],
            "collector_p99_delta_ms_at_most": TARGET_P99_DELTA_MS,
        },
    }
    for variant in ("collector_tracing", "otel"):
        if variant in server_setup and not server_setup[variant]["spans_exported"]:
            print(f"warning: {variant} exported no spans", file=sys.stderr)

    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f"{args.scenario}.json").write_text(json.dumps(result, indent=2) + "\n")
    table = write_report(args.output, args.scenario, summary, args.rounds)
    print()
    print(table)
    if "collector" in server_setup and args.scenario == "realistic":
        print(f"collector.instrument_engine used: {server_setup['collector']['instrument_engine_used']}")
    print(f"written: {args.output}/{args.scenario}.json, .png, .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
