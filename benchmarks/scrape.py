"""What a scrape of ``/metrics`` costs, and what a flood of scrapes costs the app.

    .venv/bin/python benchmarks/scrape.py [--rounds 5] [--duration 5] [--series 100,1000,5000]
                                          [--workers 1,2,4] [--flood-series 50]

1. **One scrape against series and workers.** For each number of label sets of
   ``fastapi_request_duration_seconds`` (18 samples each) and each number of workers, a fresh
   process fills the metrics (with several workers, each worker is a real process writing its
   multiprocess files) and times ``exposition.render`` (median of ``--repeats``).
2. **The app while /metrics is flooded.** Three uvicorn servers of the same app (``--flood-series``
   label sets filled in), each pinned to core 0: ``old`` renders every scrape on the event loop, as
   before (``metrics_cache_ttl=0`` and the benchmark-only switch ``exposition._render_on_loop``);
   ``new`` renders off the loop and shares renderings (the defaults); ``old_again`` is ``old`` in
   processes of its own, the control that shows the noise floor. Each round starts fresh servers,
   warms them up, and measures each once in a shuffled order: wrk with 32 connections on
   ``/items/42`` while a second wrk keeps 8 connections on ``/metrics``, both pinned to core 1. The
   result is the median over rounds of each variant's requests per second divided by ``old``'s in
   the same round.

Results go to ``benchmarks/results/scrape.json`` and ``scrape.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import overhead

HERE = Path(__file__).resolve().parent
FLOOD_CONNECTIONS = 8
VARIANTS = ("old", "new", "old_again")
VARIANT_ENV = {
    "old": {"COLLECTOR_METRICS_CACHE_TTL": "0", "BENCH_RENDER_ON_LOOP": "1"},
    "new": {},
    "old_again": {"COLLECTOR_METRICS_CACHE_TTL": "0", "BENCH_RENDER_ON_LOOP": "1"},
}


def fill(series: int) -> None:
    """``series`` label sets of the request histogram, as an app with that many routes and statuses has."""
    from collector.metrics import REQUEST_DURATION

    for i in range(series):
        REQUEST_DURATION.labels("GET", f"/route/{i // 4}", str(200 + i % 4)).observe(0.01)


def create_app() -> Any:
    """The benchmarked app: ``/items/{item_id}`` with the collector; run by uvicorn ``--factory``."""
    from fastapi import FastAPI
    from pydantic import BaseModel

    import collector
    from collector import _exposition as exposition

    class Item(BaseModel):
        id: int
        name: str

    app = FastAPI()

    @app.get("/items/{item_id}", response_model=Item)
    async def get_item(item_id: int) -> Item:
        return Item(id=item_id, name="item")

    collector.instrument(app, tracing="off")
    exposition._render_on_loop = os.environ.get("BENCH_RENDER_ON_LOOP") == "1"
    fill(int(os.environ.get("BENCH_SERIES", "0")))
    return app


def render_cost_child(series: int, workers: int, repeats: int) -> None:
    """Run in a fresh process: fill, then time renderings; prints one JSON line."""
    directory = None
    if workers > 1:
        directory = tempfile.mkdtemp(prefix="scrape-bench-")
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
        for _ in range(workers):  # each a real process writing its own files, as a worker does
            subprocess.run([sys.executable, __file__, "--fill", str(series)], env=env, check=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    else:
        fill(series)
    from collector import _exposition as exposition

    times = []
    body = b""
    for _ in range(repeats):
        start = time.perf_counter()
        body, _ = exposition.render(None)
        times.append(time.perf_counter() - start)
    samples = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    print(json.dumps({"median_ms": statistics.median(times) * 1000, "samples": samples, "bytes": len(body)}))
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


def render_costs(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for workers in args.worker_counts:
        for series in args.series_counts:
            cmd = [sys.executable, __file__, "--render-cost", str(series), str(workers), str(args.repeats)]
            env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
            env["PYTHONPATH"] = str(overhead.ROOT)
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=True)
            row = {"series": series, "workers": workers, **json.loads(done.stdout.strip().splitlines()[-1])}
            print(
                f"  render  {workers} worker(s) x {series:6d} label sets  {row['samples']:8d} samples"
                f"  {row['median_ms']:8.2f} ms",
                flush=True,
            )
            results.append(row)
    return results


def start_server(variant: str, series: int, logs: Path) -> overhead.Server:
    port = overhead.free_port()
    env = {
        **os.environ,
        **VARIANT_ENV[variant],
        "BENCH_SERIES": str(series),
        "PYTHONPATH": str(overhead.ROOT),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    cmd = ["taskset", "-c", overhead.SERVER_CORE, str(overhead.VENV_BIN / "uvicorn"), "scrape:create_app"]
    cmd += ["--factory", "--app-dir", str(HERE), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", "1", "--loop", "uvloop", "--no-access-log", "--log-level", "warning"]
    log = logs / f"{variant}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            cmd, cwd=overhead.ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return overhead.Server(variant, port, process, log)


def wait_ready(server: overhead.Server, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.variant} exited:\n{server.log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(server.url + overhead.PATH, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{server.variant} not ready after {timeout}s")


def wrk(url: str, connections: int, duration: float) -> subprocess.Popen[str]:
    cmd = ["taskset", "-c", overhead.CLIENT_CORE, "wrk", "-t1", f"-c{connections}", f"-d{duration:g}s"]
    cmd += ["--latency", url]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def measure_flooded(server: overhead.Server, duration: float) -> dict[str, float]:
    flood = wrk(server.url + "/metrics", FLOOD_CONNECTIONS, duration)
    app = wrk(server.url + overhead.PATH, overhead.CONNECTIONS, duration)
    app_out, _ = app.communicate(timeout=duration + 60)
    flood_out, _ = flood.communicate(timeout=duration + 60)
    m, scrapes = overhead.parse_wrk(app_out), overhead.parse_wrk(flood_out)
    if m.non_2xx or scrapes.non_2xx:
        raise RuntimeError(f"{server.variant}: {m.non_2xx} and {scrapes.non_2xx} non-2xx responses")
    # Timeouts are kept, not fatal: a stalled app is what the old path is measured for.
    return {
        "rps": m.rps,
        "p99_ms": m.p99_ms,
        "socket_errors": m.socket_errors,
        "scrapes_per_second": scrapes.rps,
    }


def flood_rounds(args: argparse.Namespace, logs: Path) -> list[dict[str, Any]]:
    shuffler = random.Random(args.seed)
    rounds = []
    for i in range(1, args.rounds + 1):
        servers: list[overhead.Server] = []
        try:
            servers = [start_server(v, args.flood_series, logs) for v in VARIANTS]
            for server in servers:
                wait_ready(server)
                if args.warmup:
                    measure_flooded(server, args.warmup)
            order = servers[:]
            shuffler.shuffle(order)
            results = {}
            for server in order:
                time.sleep(0.5)
                results[server.variant] = r = measure_flooded(server, args.duration)
                print(
                    f"  round {i}/{args.rounds}  {server.variant:<10} {r['rps']:8.0f} req/s"
                    f"  p99 {r['p99_ms']:8.2f} ms  while {r['scrapes_per_second']:7.1f} scrapes/s",
                    flush=True,
                )
        finally:
            overhead.stop_servers(servers)
        rounds.append({"round": i, "order": [s.variant for s in order], "results": results})
    return rounds


def summarise(rounds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    summary = {}
    for variant in VARIANTS:
        runs = [r["results"][variant] for r in rounds]
        # A round where the old path served nothing at all has no ratio; its req/s are still shown.
        ratios = [
            run["rps"] / r["results"]["old"]["rps"]
            for r, run in zip(rounds, runs, strict=True)
            if r["results"]["old"]["rps"] > 0
        ] or [float("nan")]
        summary[variant] = {
            "median_rps": statistics.median(run["rps"] for run in runs),
            "median_p99_ms": statistics.median(run["p99_ms"] for run in runs),
            "median_scrapes_per_second": statistics.median(run["scrapes_per_second"] for run in runs),
            "socket_errors": sum(run["socket_errors"] for run in runs),
            "median_ratio_to_old": statistics.median(ratios),
            "min_ratio_to_old": min(ratios),
            "max_ratio_to_old": max(ratios),
        }
    return summary


def markdown(
    costs: list[dict[str, Any]], summary: dict[str, dict[str, float]], args: argparse.Namespace
) -> str:
    lines = [
        "## One scrape (render only, median)",
        "",
        "| workers | label sets | samples | bytes | ms per scrape |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {c['workers']} | {c['series']} | {c['samples']} | {c['bytes']} | {c['median_ms']:.2f} |"
        for c in costs
    ]
    lines += [
        "",
        f"## The app while {FLOOD_CONNECTIONS} connections flood /metrics "
        f"({args.flood_series} label sets, {args.rounds} rounds of {args.duration:g} s)",
        "",
        "| variant | median req/s | ratio to old (paired median) | ratio range | median p99 (ms) "
        "| scrapes/s | app requests timed out |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for variant, s in summary.items():
        lines.append(
            f"| {variant} | {s['median_rps']:.0f} | {s['median_ratio_to_old']:.2f} "
            f"| {s['min_ratio_to_old']:.2f} to {s['max_ratio_to_old']:.2f} | {s['median_p99_ms']:.1f} "
            f"| {s['median_scrapes_per_second']:.0f} | {s['socket_errors']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of wrk per flooded measurement")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--series", default="100,1000,5000", help="label sets for the render costs")
    parser.add_argument("--workers", default="1,2,4", help="worker counts for the render costs")
    parser.add_argument("--repeats", type=int, default=20, help="renderings timed per configuration")
    parser.add_argument("--flood-series", type=int, default=50, help="label sets in the flooded servers")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--output", type=Path, default=overhead.RESULTS)
    parser.add_argument("--fill", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--render-cost", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.series_counts = [int(n) for n in args.series.split(",") if n]
    args.worker_counts = [int(n) for n in args.workers.split(",") if n]
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)
    if args.fill is None and args.render_cost is None:
        for tool, package in (("wrk", "wrk"), ("taskset", "util-linux")):
            if shutil.which(tool) is None:
                parser.error(f"{tool} not found: install Debian's {package} package")
    return args


def main() -> int:
    args = parse_args()
    if args.fill is not None:
        fill(args.fill)
        return 0
    if args.render_cost is not None:
        render_cost_child(*args.render_cost)
        return 0
    signal.signal(signal.SIGTERM, overhead._terminate)
    started = time.time()
    costs = render_costs(args)
    with tempfile.TemporaryDirectory(prefix="scrape-bench-logs-") as logs:
        rounds = flood_rounds(args, Path(logs))
    summary = summarise(rounds)
    report = markdown(costs, summary, args)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "scrape.md").write_text(report)
    result = {
        "machine": overhead.machine_info(),
        "arguments": {k: v for k, v in vars(args).items() if k not in ("output", "fill", "render_cost")},
        "seconds": round(time.time() - started),
        "render_costs": costs,
        "rounds": rounds,
        "summary": summary,
    }
    (args.output / "scrape.json").write_text(json.dumps(result, indent=2, default=str))
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
