"""Load generator for the sample app: drives every route for a while, then reads what the collector saw.

python -m sample_app.load --url http://127.0.0.1:8000 --seconds 15
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROUTES = ["/good/items/{n}", "/bad/items/{n}", "/good/report", "/bad/report", "/missing/{n}"]


async def drive(url: str, seconds: float, concurrency: int, max_requests: int) -> int:
    deadline = time.monotonic() + seconds
    sent = 0
    last_report = time.monotonic()

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def worker() -> None:
            nonlocal sent, last_report
            rng = random.Random()
            while time.monotonic() < deadline and sent < max_requests:
                sent += 1
                await client.get(rng.choice(ROUTES).format(n=rng.randint(1, 1000)))
                if time.monotonic() - last_report >= 2:
                    last_report = time.monotonic()
                    left = max(0.0, deadline - last_report)
                    print(f"  {sent} requests sent, {left:.0f} s left", file=sys.stderr, flush=True)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sent


def summary(metrics_text: str) -> list[str]:
    """One line per signal that the run produced, read from a scrape of /metrics."""
    totals: dict[str, float] = {}
    per_route: dict[tuple[str, str], float] = {}
    stalls: dict[str, float] = {}
    middlewares: list[str] = []
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            totals[s.name] = totals.get(s.name, 0.0) + s.value
            if s.name in ("fastapi_request_duration_seconds_count", "fastapi_request_duration_seconds_sum"):
                key = (s.name, s.labels["route"])
                per_route[key] = per_route.get(key, 0.0) + s.value
            if s.name == "fastapi_event_loop_stalls_total":
                stalls[s.labels["location"]] = s.value
            if s.name == "fastapi_middlewares" and s.labels.get("kind") == "base_http":
                middlewares.append(s.labels["name"])
    lines = []
    for (name, route), count in sorted(per_route.items()):
        if name.endswith("_count") and count:
            mean = per_route[("fastapi_request_duration_seconds_sum", route)] / count * 1000
            lines.append(f"route {route:<24} {count:>6.0f} requests, mean {mean:7.1f} ms")
    for location, count in sorted(stalls.items(), key=lambda kv: -kv[1]):
        lines.append(f"tip 9: event loop stalled {count:.0f} times at {location}")
    lines.append(
        f"tip 9: event loop stalled {totals.get('fastapi_event_loop_stalled_seconds_total', 0):.1f} s in all"
    )
    for name in middlewares:
        lines.append(f"tip 8: BaseHTTPMiddleware in the stack: {name}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-requests", type=int, default=100_000)
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.concurrency <= 0 or args.max_requests <= 0:
        parser.error("--seconds, --concurrency and --max-requests must be positive")
    if not args.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        parser.error("the load generator only targets this machine (127.0.0.1, localhost)")
    try:
        sent = asyncio.run(drive(args.url, args.seconds, args.concurrency, args.max_requests))
        text = httpx.get(args.url + "/metrics", timeout=10).text
    except httpx.HTTPError as exc:
        print(f"error: cannot reach the sample app at {args.url}: {exc}", file=sys.stderr)
        return 1
    print(f"{sent} requests sent; what the collector measured:")
    for line in summary(text):
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
