"""Load for the sample app: a scenario of its routes, bounded in duration and rate, on this machine only.

    python -m sample_app.load --scenario antipatterns --seconds 30 --rate 20
    python -m sample_app.load --scenario tip=6            # only tip 6 broken, every other tip followed

Scenarios: ``antipatterns`` (every tip broken), ``fixed`` (every tip followed), ``tip=N`` (only
tip N broken), ``mixed`` (both variants of every feature, half each). Tip 4 is how the app is
served, not a route: ``tip=4`` sends the ``fixed`` requests, and the generator says when the app
runs fewer workers than cores. Requests arrive at random (Poisson) at ``--rate`` per second, at
most ``--concurrency`` at once; a live line shows elapsed time, requests, errors and the rate.

As a library: ``plan(scenario)`` is the scenario as data, ``run(url, scenario, seconds, rate)``
drives it and returns the counts.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from sample_app.tips import FEATURES, PER_PROCESS, Feature

SCENARIOS = ("antipatterns", "fixed", "mixed", "tip=N")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_SECONDS, MAX_RATE, MAX_CONCURRENCY = 3600.0, 1000.0, 256
REQUEST_TIMEOUT = 10.0
CURRENCIES = ("EUR", "USD", "GBP", "JPY", "CHF")

Plan = tuple[tuple[str, float], ...]
Progress = Callable[[float, int, int, float], None]


class LoadError(ValueError):
    """Input the load generator refuses: its message is one line."""


def _tip_of(scenario: str) -> int | None:
    match = re.fullmatch(r"tip=(\d+)", scenario)
    if match is None:
        return None
    tip = int(match.group(1))
    if not 1 <= tip <= 10:
        raise LoadError(f"scenario {scenario!r}: tips are numbered 1 to 10")
    return tip


def _split(paths: tuple[str, ...], weight: float) -> list[tuple[str, float]]:
    return [(path, weight / len(paths)) for path in paths]


def plan(scenario: str) -> Plan:
    """The scenario's request paths (templates) and their weights, which sum to the features' weights."""
    broken: Callable[[Feature], bool]
    if scenario == "mixed":
        return tuple(
            entry for f in FEATURES for entry in _split(f.bad, f.weight / 2) + _split(f.good, f.weight / 2)
        )
    if scenario == "antipatterns":
        broken = lambda f: True  # noqa: E731
    elif scenario == "fixed":
        broken = lambda f: False  # noqa: E731
    else:
        tip = _tip_of(scenario)
        if tip is None:
            raise LoadError(f"unknown scenario {scenario!r}: use one of {', '.join(SCENARIOS)}")
        broken = lambda f: f.tip == tip  # noqa: E731
    return tuple(entry for f in FEATURES for entry in _split(f.bad if broken(f) else f.good, f.weight))


def check_target(url: str) -> str:
    """``url`` without a trailing slash, if it is http(s) on this machine; else ``LoadError``."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        raise LoadError(f"bad URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or host not in LOCAL_HOSTS:
        raise LoadError(
            f"refusing {url!r}: the load generator only targets this machine (127.0.0.1, localhost)"
        )
    return url.rstrip("/")


def check_bounds(seconds: float, rate: float, concurrency: int) -> None:
    for name, number, limit in (
        ("seconds", seconds, MAX_SECONDS),
        ("rate", rate, MAX_RATE),
        ("concurrency", concurrency, MAX_CONCURRENCY),
    ):
        if not 0 < number <= limit:  # also refuses NaN
            raise LoadError(f"--{name} must be above 0 and at most {limit:g}, not {number:g}")


def fill(template: str, rng: random.Random, counts: dict[str, int]) -> str:
    """A request path for ``template``, with ids drawn within the app's data."""
    values = {
        "order_id": rng.randint(1, counts["orders"]),
        "customer_id": rng.randint(1, counts["customers"]),
        "product_id": rng.randint(1, counts["products"]),
        "currency": rng.choice(CURRENCIES),
    }
    values["reference"] = f"ord-{rng.randint(1, counts['orders']):07d}"  # lower case: the app normalises it
    return template.format(**values)


@dataclass
class Counts:
    requests: int = 0  # answered, whatever the status
    errors: int = 0  # status 400 and above, or no answer
    seconds: float = 0.0
    by_path: dict[str, int] = field(default_factory=dict)  # per template
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


async def drive(
    url: str,
    scenario: str,
    seconds: float,
    rate: float,
    *,
    concurrency: int = 32,
    seed: int | None = None,
    progress: Progress | None = None,
) -> Counts:
    """Send the scenario's requests to ``url`` for ``seconds`` at ``rate`` per second on average."""
    url = check_target(url)
    check_bounds(seconds, rate, concurrency)
    entries = plan(scenario)
    templates = [t for t, _ in entries]
    weights = [w for _, w in entries]
    rng = random.Random(seed)
    counts = Counts()
    slots = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT, limits=limits) as client:
        data: dict[str, int] = (await client.get("/")).raise_for_status().json()["counts"]

        async def one(template: str, path: str) -> None:
            try:
                status = (await client.get(path)).status_code
            except httpx.HTTPError:
                status = 0
            finally:
                slots.release()
            counts.requests += status != 0
            counts.errors += status == 0 or status >= 400
            counts.by_path[template] = counts.by_path.get(template, 0) + 1
            counts.statuses[status] = counts.statuses.get(status, 0) + 1

        start = time.monotonic()
        deadline = start + seconds
        next_at = start
        last_report, last_done = start, 0
        tasks: set[asyncio.Task[None]] = set()
        while True:
            now = time.monotonic()
            # More than a second behind (a slow app held every slot): skip those arrivals, no burst.
            next_at = max(next_at, now - 1.0) + rng.expovariate(rate)
            while progress is not None and now - last_report >= 0.5:
                done = sum(counts.statuses.values())
                progress(
                    now - start, counts.requests, counts.errors, (done - last_done) / (now - last_report)
                )
                last_report, last_done = now, done
            if next_at >= deadline or now >= deadline:
                break
            if next_at > now:
                await asyncio.sleep(next_at - now)
            try:  # a slow app fills the slots: wait for one, but not past the deadline
                await asyncio.wait_for(slots.acquire(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                break
            template = rng.choices(templates, weights)[0]
            task = asyncio.create_task(one(template, fill(template, rng, data)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        if tasks:  # the last requests may finish; none outlives the request timeout
            await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT)
            for task in tasks:
                task.cancel()
        counts.seconds = time.monotonic() - start
    if progress is not None:
        progress(counts.seconds, counts.requests, counts.errors, counts.rate)
    return counts


def run(url: str, scenario: str, seconds: float, rate: float, **options: Any) -> Counts:
    """``drive`` from synchronous code (a test, a script): returns when the run is over."""
    return asyncio.run(drive(url, scenario, seconds, rate, **options))


def _workers_and_cores(url: str) -> tuple[float, float] | None:
    try:
        text = httpx.get(url + "/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    found = dict(re.findall(r"^(fastapi_workers|fastapi_cpu_cores) (\S+)$", text, re.MULTILINE))
    if len(found) < 2:
        return None
    return float(found["fastapi_workers"]), float(found["fastapi_cpu_cores"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the app, on this machine")
    parser.add_argument("--scenario", default="antipatterns", help=" | ".join(SCENARIOS))
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second, on average")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight, at most")
    parser.add_argument("--seed", type=int, default=None, help="the same seed sends the same requests")
    args = parser.parse_args(argv)
    try:
        url = check_target(args.url)
        check_bounds(args.seconds, args.rate, args.concurrency)
        plan(args.scenario)
    except LoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    served = _workers_and_cores(url)
    if served is not None and served[0] < served[1]:
        print(
            f"note: tip 4 is broken by how the app is served ({served[0]:g} worker on {served[1]:g} cores;"
            f" fix: {PER_PROCESS[4].split(' vs ')[1]})",
            file=sys.stderr,
        )
    live = sys.stderr.isatty()

    next_line = 2.0  # when the output is a log, not a terminal: a line every 2 s

    def show(elapsed: float, requests: int, errors: int, current: float) -> None:
        nonlocal next_line
        line = f"  {elapsed:6.1f} s  {requests:7d} requests  {errors:5d} errors  {current:7.1f} req/s"
        if live:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif elapsed >= next_line:
            next_line = elapsed + 2.0
            print(line, file=sys.stderr, flush=True)

    try:
        counts = run(
            url,
            args.scenario,
            args.seconds,
            args.rate,
            concurrency=args.concurrency,
            seed=args.seed,
            progress=show,
        )
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        print(f"\nerror: cannot drive the sample app at {url}: {exc}", file=sys.stderr)
        return 1
    if live:
        print(file=sys.stderr)
    print(
        f"{args.scenario}: {counts.requests} requests, {counts.errors} errors in {counts.seconds:.1f} s"
        f" ({counts.rate:.1f} req/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
