"""What each tip's fix changes on the sample shop, beside the effect the article claims for it.

    .venv/bin/python benchmarks/tips.py [--rounds 5] [--duration 5] [--concurrency 8]
                                        [--backend embedded|postgres] [--note "..."]

One uvicorn process serves the sample app (``sample_app.main``); tip 4 adds a gunicorn server with a
worker per core (``python -m sample_app.serve``). For every feature of ``sample_app.tips.FEATURES``,
each round drives its bad path and its good path, in a freshly shuffled order, for ``--duration``
seconds each with ``--concurrency`` closed-loop clients (ids drawn as the load generator draws them),
so that drift in the machine's load hits both alike. Per run: client-side p50 and p99 latency,
throughput, queries per request (the collector's ``fastapi_db_queries_per_request`` on the route)
and server CPU per request (the server's processes, from ``/proc``). A figure is the median over rounds.
Results go to ``benchmarks/results/tips.json``, ``tips.md`` and ``tips.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from sample_app import load, seed  # noqa: E402
from sample_app.tips import FEATURES  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
VENV_BIN = Path(sys.executable).parent
TICKS = os.sysconf("SC_CLK_TCK")
WORKERS_PATHS = ("/good/orders/recent", "/good/products/{product_id}", "/good/popular-products")

# What the article says each fix does ("10 Ways to Make FastAPI Blazing Fast").
CLAIMS = {
    1: "async views raise CPU utilisation 3 to 5 times",
    2: "reusing engines and clients cuts initialisation overhead by over 90 %",
    3: "validation/serialization can be 40 % of latency; lean models 20 to 30 % faster",
    4: "throughput grows linearly with the number of cores",
    5: "latency from hundreds of milliseconds to milliseconds",
    6: "pools, indexes and no N+1 cut database latency by over 60 %",
    7: "the app serves static files over 10 times less efficiently than Nginx",
    8: "lean middleware cuts request-chain latency by 15 to 20 %",
    9: "to_thread lets the loop serve other requests (no figure)",
    10: "profiling finds the bottleneck (no figure)",
}


@dataclass
class Run:
    requests: int
    errors: int
    seconds: float
    p50: float
    p99: float
    queries: float | None
    cpu: float

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, command: list[str], env: dict[str, str], port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(
                    f"error: the server exited with {self.process.returncode}: {' '.join(command)}"
                )
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise SystemExit(f"error: the server did not start: {' '.join(command)}")

    def cpu_seconds(self) -> float:
        """User + system CPU of every process in the server's session (gunicorn's workers too)."""
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == self.process.pid:  # the process group: start_new_session made it
                total += int(fields[11]) + int(fields[12])
        return total / TICKS

    def queries(self, route: str) -> tuple[float, float]:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        total = count = 0.0
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.labels.get("route") == route and s.name == "fastapi_db_queries_per_request_sum":
                    total += s.value
                if s.labels.get("route") == route and s.name == "fastapi_db_queries_per_request_count":
                    count += s.value
        return total, count

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


async def _drive(
    url: str, paths: tuple[str, ...], seconds: float, concurrency: int, counts: dict[str, int]
) -> Run:
    latencies: list[float] = []
    errors = 0
    rng = random.Random()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                path = load.fill(rng.choice(paths), rng, counts)
                start = time.perf_counter()
                try:
                    ok = (await client.get(path)).status_code < 400
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - start)
                errors += not ok

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()

    def pick(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

    return Run(len(latencies), errors, elapsed, pick(0.50), pick(0.99), None, 0.0)


def measure(server: Server, paths: tuple[str, ...], args: argparse.Namespace, counts: dict[str, int]) -> Run:
    route = paths[0]
    q0, n0 = server.queries(route)
    cpu0 = server.cpu_seconds()
    run = asyncio.run(_drive(server.url, paths, args.duration, args.concurrency, counts))
    run.cpu = (server.cpu_seconds() - cpu0) / max(1, run.requests)
    q1, n1 = server.queries(route)
    run.queries = (q1 - q0) / (n1 - n0) if n1 > n0 else None
    return run


def median(runs: list[Run], attr: str) -> float | None:
    values = [v for v in (getattr(r, attr) for r in runs) if v is not None]
    return statistics.median(values) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per variant per round")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--backend", choices=("embedded", "postgres"), default="embedded")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--note", default="", help="a line about the run, written in the table")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0 or args.concurrency < 1:
        print("error: --rounds, --duration and --concurrency must be positive", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="tips-bench-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SAMPLE_WORK_DIR": str(work), "COLLECTOR_TRACING": "off"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if args.backend == "postgres":
        env |= {"DATABASE_URL": args.postgres_url, "REDIS_URL": args.redis_url}
    single_port, multi_port = free_port(), free_port()
    uvicorn = [
        str(VENV_BIN / "uvicorn"),
        "sample_app.main:app",
        "--port",
        str(single_port),
        "--no-access-log",
    ]
    single = Server(uvicorn, env, single_port)
    multi_env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(work / "metrics")}
    multi = Server(
        [sys.executable, "-m", "sample_app.serve", "--port", str(multi_port)], multi_env, multi_port
    )
    counts = seed.counts(int(env.get("SAMPLE_SIZE", "2000")))

    pairs: list[tuple[str, int, Server, tuple[str, ...], Server, tuple[str, ...]]] = [
        (f.name.split(":")[0], f.tip, single, f.bad, single, f.good) for f in FEATURES
    ]
    pairs.insert(3, ("workers: one process vs one per core", 4, single, WORKERS_PATHS, multi, WORKERS_PATHS))
    runs: dict[str, dict[str, list[Run]]] = {name: {"bad": [], "good": []} for name, *_ in pairs}
    try:
        for _name, _, bad_server, bad_paths, good_server, good_paths in pairs:  # warm-up, not measured
            asyncio.run(_drive(bad_server.url, bad_paths, 0.5, 2, counts))
            asyncio.run(_drive(good_server.url, good_paths, 0.5, 2, counts))
        for round_no in range(1, args.rounds + 1):
            order = list(pairs)
            random.shuffle(order)
            for name, _, bad_server, bad_paths, good_server, good_paths in order:
                variants = [("bad", bad_server, bad_paths), ("good", good_server, good_paths)]
                random.shuffle(variants)
                for variant, server, paths in variants:
                    runs[name][variant].append(measure(server, paths, args, counts))
            print(f"round {round_no}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        single.stop()
        multi.stop()

    rows = []
    for name, tip, *_ in pairs:
        row: dict[str, Any] = {"tip": tip, "feature": name, "claim": CLAIMS[tip]}
        for variant in ("bad", "good"):
            rs = runs[name][variant]
            row[variant] = {
                "p50_ms": 1000 * (median(rs, "p50") or 0),
                "p99_ms": 1000 * (median(rs, "p99") or 0),
                "throughput": statistics.median(r.throughput for r in rs),
                "queries": median(rs, "queries"),
                "cpu_ms": 1000 * (median(rs, "cpu") or 0),
                "errors": sum(r.errors for r in rs),
                "runs": [asdict(r) for r in rs],
            }
        rows.append(row)
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "rounds": args.rounds,
        "duration": args.duration,
        "concurrency": args.concurrency,
        "backend": args.backend,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "note": args.note,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tips.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (RESULTS / "tips.md").write_text(table(meta, rows))
    chart(rows, RESULTS / "tips.png", meta)
    print(table(meta, rows))
    return 0


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        "# What each tip's fix changes on the sample shop",
        "",
        f"{meta['date']}, {meta['backend']} backend, {meta['cores']} cores, {meta['rounds']} interleaved "
        f"rounds of {meta['duration']:g} s per variant, {meta['concurrency']} closed-loop clients; "
        "medians over rounds.",
        "" if not meta["note"] else f"\n**{meta['note']}**\n",
        "| tip | feature | p50 ms bad → good | p99 ms bad → good | req/s bad → good | queries/req bad → good "
        "| CPU ms/req bad → good | the article claims |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        b, g = row["bad"], row["good"]
        lines.append(
            f"| {row['tip']} | {row['feature']} | {_fmt(b['p50_ms'])} → {_fmt(g['p50_ms'])} "
            f"| {_fmt(b['p99_ms'])} → {_fmt(g['p99_ms'])} "
            f"| {_fmt(b['throughput'])} → {_fmt(g['throughput'])} "
            f"| {_fmt(b['queries'])} → {_fmt(g['queries'])} "
            f"| {_fmt(b['cpu_ms'], 2)} → {_fmt(g['cpu_ms'], 2)} | {row['claim']} |"
        )
    return "\n".join(lines) + "\n"


def chart(rows: list[dict[str, Any]], path: Path, meta: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['tip']}: {r['feature'][:28]}" for r in rows]
    throughput = [
        r["good"]["throughput"] / r["bad"]["throughput"] if r["bad"]["throughput"] else 0 for r in rows
    ]
    p99 = [r["bad"]["p99_ms"] / r["good"]["p99_ms"] if r["good"]["p99_ms"] else 0 for r in rows]
    fig, ax = plt.subplots(figsize=(10, 6))
    y = range(len(rows))
    ax.barh([i - 0.2 for i in y], throughput, height=0.4, label="throughput, good / bad")
    ax.barh([i + 0.2 for i in y], p99, height=0.4, label="p99 latency, bad / good")
    ax.axvline(1.0, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio (> 1: the fix helps), log scale")
    ax.set_title(
        f"What each tip's fix changes ({meta['backend']}, {meta['rounds']} rounds x {meta['duration']:g} s)"
    )
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
