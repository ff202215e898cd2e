"""Instructions per request of each variant, counted by valgrind: the noise-free side of the overhead.

    .venv/bin/python benchmarks/instructions.py [--scenario realistic] [--requests 400]

Requests per second on a shared 2-core machine move by 10 % and more between two processes of
the very same app; the instructions a server executes per request do not. Each variant of
``benchmarks/apps.py`` runs in its own uvicorn process (one worker, uvloop, httptools) under
``valgrind --tool=callgrind`` with instrumentation off; after start-up and a warm-up, counting is
switched on (``callgrind_control``), a fixed number of keep-alive requests is sent from 4
client threads, and the count is dumped. Variants run side by side (counts do not depend on
timing). What the count leaves out: the kernel (socket and scheduler work, the same for every
variant) and cache behaviour; it is the user-space work the instrumentation adds.

Time-driven work is slowed down with the rest under valgrind (50 to 100 times), so the collector's
heartbeat and watchdog would be counted that many times too often against each request: the collector
variants run with ``COLLECTOR_HEARTBEAT_INTERVAL=1`` here (25 ms by default; its cost at full
speed is about 40 wake-ups a second, not per request). Results go to
``benchmarks/results/instructions-<scenario>.json`` and a table is printed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import apps

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
PATH = "/items/42"
CLIENTS = 4


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def send_requests(port: int, count: int) -> None:
    """``count`` GET requests over ``CLIENTS`` keep-alive connections; every one must answer 200."""
    errors: list[str] = []

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            for _ in range(n):
                conn.request("GET", PATH)
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    errors.append(f"status {response.status}")
                    return
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(count // CLIENTS,)) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"requests failed: {errors[0]}")


def wait_ready(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text(errors='replace')}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", PATH)
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{log.read_text(errors='replace')}")


def control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=120)


def count(variant: str, scenario: str, requests: int, warmup: int, work: Path) -> dict[str, Any]:
    """Instructions per request of one variant's server."""
    port = free_port()
    out = work / f"{variant}.callgrind"
    log = work / f"{variant}.log"
    env = {
        **os.environ,
        **apps.VARIANT_ENV[variant],
        "BENCH_VARIANT": variant,
        "BENCH_SCENARIO": scenario,
        "PYTHONPATH": str(ROOT),
        "COLLECTOR_HEARTBEAT_INTERVAL": "1",
    }
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}.%p"]
    cmd += [str(VENV_BIN / "uvicorn"), "apps:create_app", "--factory", "--app-dir", str(HERE)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop", "--http", "httptools"]
    cmd += ["--no-access-log", "--log-level", "warning"]
    with log.open("wb") as sink:
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_ready(port, process, log)
        send_requests(port, warmup)
        pid = str(process.pid)
        control("-i", "on", pid)
        time.sleep(1)
        control("-z", pid)
        started = time.monotonic()
        send_requests(port, requests)
        seconds = time.monotonic() - started
        control("-d", pid)
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    dumps = sorted(work.glob(f"{variant}.callgrind.{process.pid}.*"))
    if not dumps:
        raise RuntimeError(f"{variant}: callgrind wrote no dump")
    total = 0
    for line in dumps[0].read_text(errors="replace").splitlines():
        if line.startswith("summary:"):
            total = int(line.split()[1])
            break
    served = requests // CLIENTS * CLIENTS
    return {"instructions": total, "requests": served, "per_request": total / served, "seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", choices=apps.SCENARIOS, default="realistic")
    parser.add_argument("--variants", default="collector", help="comma-separated; bare is always in")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=60)
    parser.add_argument("--output", type=Path, default=HERE / "results")
    args = parser.parse_args()
    variants = ["bare"] + [v for v in args.variants.split(",") if v and v != "bare"]
    unknown = set(variants) - set(apps.VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} not found: install Debian's valgrind package")
    if args.scenario == "realistic":
        import asyncio

        asyncio.run(apps.seed())
    print(
        f"instructions: {len(variants)} variants side by side under callgrind, "
        f"{args.requests} requests each (a few minutes)",
        flush=True,
    )
    with (
        tempfile.TemporaryDirectory(prefix="instructions-") as tmp,
        ThreadPoolExecutor(len(variants)) as pool,
    ):
        futures = {
            v: pool.submit(count, v, args.scenario, args.requests, args.warmup, Path(tmp)) for v in variants
        }
        results = {}
        for variant, future in futures.items():
            results[variant] = future.result()
            print(
                f"  {variant:<18} {results[variant]['per_request']:12,.0f} instructions/request", flush=True
            )
    bare = results["bare"]["per_request"]
    lines = [
        "| variant | instructions per request | added to bare | ratio to bare |",
        "|---|---:|---:|---:|",
    ]
    for variant, r in results.items():
        r["ratio_to_bare"] = r["per_request"] / bare
        added = r["per_request"] - bare
        lines.append(f"| {variant} | {r['per_request']:,.0f} | {added:+,.0f} | {r['ratio_to_bare']:.3f} |")
    table = "\n".join(lines) + "\n"
    args.output.mkdir(parents=True, exist_ok=True)
    record = {
        "scenario": args.scenario,
        "command": " ".join([".venv/bin/python", "benchmarks/instructions.py", *sys.argv[1:]]),
        "python": platform.python_version(),
        "requests": args.requests,
        "results": results,
    }
    (args.output / f"instructions-{args.scenario}.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.output / f"instructions-{args.scenario}.md").write_text(table)
    print()
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
