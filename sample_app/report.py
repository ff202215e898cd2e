"""What the collector found, per tip, from one scrape of ``/metrics``: the demo's summary.

A stand-in until ``collector doctor`` exists: ``summarize`` is the one function to swap for it.
Each line names the tip, its signal, the worst route and, where the collector knows it, the code
location. The marks (``!`` broken, ``.`` fine) use rough demo thresholds, not the alert rules.

    python -m sample_app.report --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import httpx
from prometheus_client.parser import text_string_to_metric_families

from sample_app.tips import TITLES

# name -> {labels (sorted tuple) -> value}
Metrics = dict[str, dict[tuple[tuple[str, str], ...], float]]


def _parse(text: str) -> Metrics:
    metrics: Metrics = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            metrics[s.name][tuple(sorted(s.labels.items()))] = s.value
    return metrics


def _by(metrics: Metrics, name: str, label: str, **where: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for labels, v in metrics.get(name, {}).items():
        d = dict(labels)
        if all(d.get(k) == w for k, w in where.items()) and label in d:
            out[d[label]] += v
    return dict(out)


def _mean_by_route(metrics: Metrics, base: str, **where: str) -> dict[str, float]:
    sums, counts = (
        _by(metrics, base + "_sum", "route", **where),
        _by(metrics, base + "_count", "route", **where),
    )
    return {r: sums.get(r, 0.0) / c for r, c in counts.items() if c}


def _worst(values: dict[str, float]) -> tuple[str, float]:
    return max(values.items(), key=lambda kv: kv[1], default=("-", 0.0))


def _busy(values: dict[str, float], requests: dict[str, float], at_least: float = 3) -> dict[str, float]:
    """Only the routes that served a few requests: one slow start-up probe is not a finding."""
    return {r: v for r, v in values.items() if requests.get(r, 0.0) >= at_least}


def summarize(text: str) -> list[str]:
    """One line per tip (4 included), read from a scrape of the app's ``/metrics``."""
    m = _parse(text)

    def total(name: str) -> float:
        return sum(m.get(name, {}).values())

    requests = _by(m, "fastapi_request_duration_seconds_count", "route")
    served = sum(requests.values()) or 1.0
    lines: dict[int, tuple[bool, str]] = {}

    sync_routes = {r for r, v in _by(m, "fastapi_route_handlers", "route", kind="sync").items() if v}
    sync_traffic = {r: n for r, n in requests.items() if r in sync_routes and n}
    route, n = _worst(sync_traffic)
    lines[1] = (
        bool(sync_traffic),
        f"{sum(sync_traffic.values()):.0f} requests on sync handlers; most: {route} ({n:.0f})",
    )

    created = _by(m, "fastapi_resources_created_total", "kind")
    per_request = sum(created.values()) / served
    kinds = ", ".join(f"{k} {v:.0f}" for k, v in sorted(created.items()) if v) or "none"
    route, seconds = _worst(_mean_by_route(m, "fastapi_dependency_duration_seconds"))
    lines[2] = (
        per_request > 0.05,
        f"{per_request:.2f} resources created per request ({kinds}); "
        f"slowest dependencies: {route} ({seconds * 1000:.1f} ms)",
    )

    pydantic: dict[str, float] = defaultdict(float)
    for r, v in _mean_by_route(m, "fastapi_validation_duration_seconds", phase="response").items():
        pydantic[r] += v
    for r, v in _mean_by_route(m, "fastapi_serialization_duration_seconds").items():
        pydantic[r] += v
    route, seconds = _worst(pydantic)
    size = _mean_by_route(m, "fastapi_response_size_bytes").get(route, 0.0)
    lines[3] = (
        seconds > 0.005,
        f"response validation + serialization {seconds * 1000:.1f} ms a request "
        f"on {route} ({size / 1024:.0f} KiB responses)",
    )

    workers, cores = total("fastapi_workers"), total("fastapi_cpu_cores")
    lines[4] = (workers < cores, f"{workers:g} worker(s) on {cores:g} cores")

    results = _by(m, "fastapi_cache_requests_total", "result")
    hits, lookups = results.get("hit", 0.0), results.get("hit", 0.0) + results.get("miss", 0.0)
    ratio = hits / lookups if lookups else 0.0
    lines[5] = (lookups > 0 and ratio < 0.5, f"cache hit ratio {ratio:.2f} over {lookups:.0f} look-ups")

    route, n_plus_one = _worst(_by(m, "fastapi_db_n_plus_one_total", "route"))
    queries_route, queries = _worst(_mean_by_route(m, "fastapi_db_queries_per_request"))
    wait = {
        p: s / max(1.0, _by(m, "fastapi_db_pool_wait_seconds_count", "pool").get(p, 1.0))
        for p, s in _by(m, "fastapi_db_pool_wait_seconds_sum", "pool").items()
    }
    pool, waited = _worst(wait)
    lines[6] = (
        n_plus_one > 0 or waited > 0.005,
        f"{n_plus_one:.0f} N+1 requests on {route}; most queries: "
        f"{queries:.1f} per request on {queries_route}; pool wait {waited * 1000:.1f} ms on {pool!r}",
    )

    static = _by(m, "fastapi_static_bytes_total", "mount")
    mount, sent = _worst(static)
    lines[7] = (sent > 0, f"{sent / 1e6:.1f} MB of static files served by the app from {mount}")

    route, seconds = _worst(_busy(_mean_by_route(m, "fastapi_middleware_duration_seconds"), requests))
    base_http = [name for name, v in _by(m, "fastapi_middlewares", "name", kind="base_http").items() if v]
    lines[8] = (
        seconds > 0.002,
        f"middleware {seconds * 1000:.2f} ms a request on {route}"
        + (f"; BaseHTTPMiddleware: {', '.join(base_http)}" if base_http else ""),
    )

    # A location that stalls again and again is code; one stall is a start-up import or a GC pause.
    location, stalls = _worst(_by(m, "fastapi_event_loop_stalls_total", "location"))
    stalled = _by(m, "fastapi_event_loop_stalled_requests_total", "route")
    route, share = _worst(
        _busy({r: n / requests[r] for r, n in stalled.items() if requests.get(r)}, requests)
    )
    queued = total("fastapi_threadpool_queue_seconds_sum")
    lines[9] = (
        stalls >= 3,
        f"loop stalled {total('fastapi_event_loop_stalls_total'):.0f} times "
        f"({total('fastapi_event_loop_stalled_seconds_total'):.1f} s), {stalls:.0f} at {location}; "
        f"stalls hit {share:.0%} of {route}'s requests; thread-pool queue {queued:.2f} s",
    )

    captured = _by(m, "fastapi_profiles_captured_total", "route")
    route, share = _worst(
        _busy({r: n / requests[r] for r, n in captured.items() if requests.get(r)}, requests)
    )
    lines[10] = (
        share >= 0.5,
        f"{total('fastapi_profiles_captured_total'):.0f} slow requests profiled; "
        f"{share:.0%} of {route}'s requests",
    )

    return [
        f"{'!' if broken else '.'} tip {tip:>2} {TITLES[tip]:<30} {text}"
        for tip, (broken, text) in sorted(lines.items())
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    args = parser.parse_args(argv)
    try:
        text = httpx.get(args.url.rstrip("/") + "/metrics", timeout=10).raise_for_status().text
    except httpx.HTTPError as exc:
        print(f"error: cannot read {args.url}/metrics: {exc}", file=sys.stderr)
        return 1
    print("\n".join(summarize(text)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
