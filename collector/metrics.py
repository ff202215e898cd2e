"""Every metric of the contract in SPEC.md, declared once.

The rest of ``collector`` imports these objects; nothing else declares a metric.
Gauges carry a ``multiprocess_mode`` so that one scrape under gunicorn returns
the right aggregate over live workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from collector import _faults, _multiprocess
from collector._buckets import DEFAULT_LATENCY_BUCKETS, latency_buckets_from_environment

# Before the first metric: values go to the workers' shared files only if the directory is usable.
_multiprocess.ensure_usable_value_store()

# Functions that bring gauges up to date just before they are read, instead of on every
# change: at each scrape of this process (``_Refresh`` is registered before any metric, so
# the registry runs it first), and on the heartbeat in multi-process mode, where another
# process reads the values from their files.
REFRESHERS: list[Callable[[], None]] = []


def refresh() -> None:
    for refresher in list(REFRESHERS):
        try:
            refresher()
        except Exception as exc:
            _faults.record("refresh", exc)


class _Refresh:
    """A collector with no metrics of its own: reading the registry runs the refreshers first."""

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        refresh()
        return []


REGISTRY.register(_Refresh())  # type: ignore[arg-type]

# The request-latency buckets in effect (COLLECTOR_LATENCY_BUCKETS, read here since metrics are
# declared at import): an SLO threshold is exact only at one of them.
LATENCY_BUCKETS = latency_buckets_from_environment()
FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SIZE_BUCKETS = (100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0, 10_000_000.0)
COUNT_BUCKETS = (0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0)

# Requests (tips 1, 10)
REQUEST_DURATION = Histogram(
    "fastapi_request_duration_seconds",
    "Time from the request reaching the app to the end of its response.",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
REQUESTS_IN_PROGRESS = Gauge(
    "fastapi_requests_in_progress",
    "Requests being handled now.",
    ["method", "route"],
    multiprocess_mode="livesum",
)
REQUESTS_EXCLUDED = Counter(
    "fastapi_requests_excluded_total",
    "Requests to a path left out of the request metrics (COLLECTOR_EXCLUDE_PATHS), such as probes.",
    ["path"],
)
RESPONSES_INCOMPLETE = Counter(
    "fastapi_responses_incomplete_total",
    "Responses that did not reach their end: the app failed after starting it, or the client went away.",
    ["route", "reason"],
)
BACKGROUND_TASK_DURATION = Histogram(
    "fastapi_background_task_duration_seconds",
    "Time running one background task, after the response it belongs to has gone out.",
    ["route"],
    buckets=DEFAULT_LATENCY_BUCKETS,
)
ROUTE_HANDLERS = Gauge(
    "fastapi_route_handlers",
    "One per route and method; kind says whether the handler is async or sync.",
    ["method", "route", "kind"],
    multiprocess_mode="max",
)

# Event loop (tips 1, 9)
EVENT_LOOP_LAG = Histogram(
    "fastapi_event_loop_lag_seconds",
    "How late the event loop ran a heartbeat scheduled on it.",
    buckets=LAG_BUCKETS,
)
EVENT_LOOP_STALLS = Counter(
    "fastapi_event_loop_stalls_total",
    "Times the event loop did not answer for longer than the stall threshold, by blocking code location.",
    ["location"],
)
EVENT_LOOP_STALLED_SECONDS = Counter(
    "fastapi_event_loop_stalled_seconds_total",
    "Seconds the event loop spent stalled.",
)
STALLED_REQUESTS = Counter(
    "fastapi_event_loop_stalled_requests_total",
    "Requests that were in flight while the event loop stalled.",
    ["route"],
)

# Thread pool (tip 9)
THREADPOOL_TOKENS = Gauge(
    "fastapi_threadpool_tokens",
    "Tokens of the default AnyIO thread limiter that runs sync endpoints and dependencies.",
    ["state"],
    multiprocess_mode="livesum",
)
THREADPOOL_WAITING = Gauge(
    "fastapi_threadpool_tasks_waiting",
    "Sync calls waiting for a thread-pool token.",
    multiprocess_mode="livesum",
)
THREADPOOL_QUEUE = Histogram(
    "fastapi_threadpool_queue_seconds",
    "Wait between submitting sync work to the thread pool and its start.",
    buckets=FAST_BUCKETS,
)

# Workers (tip 4)
WORKERS = Gauge("fastapi_workers", "Live worker processes serving the app.", multiprocess_mode="livesum")
CPU_CORES = Gauge("fastapi_cpu_cores", "CPU cores available to the app.", multiprocess_mode="max")
# In multi-process mode prometheus_client adds the pid label itself ("liveall"); here it is ours.
WORKER_CPU = Gauge(
    "fastapi_worker_cpu_utilization",
    "CPU used by one worker process, in cores (1.0 is one core busy).",
    [] if _multiprocess.enabled() else ["pid"],
    multiprocess_mode="liveall",
)

# Middleware (tip 8)
MIDDLEWARE_DURATION = Histogram(
    "fastapi_middleware_duration_seconds",
    "Time a request spent outside its route: middleware and routing, before and after the endpoint.",
    ["route"],
    buckets=FAST_BUCKETS,
)
MIDDLEWARES = Gauge(
    "fastapi_middlewares",
    "One per middleware on the app; kind is base_http for BaseHTTPMiddleware.",
    ["name", "kind"],
    multiprocess_mode="max",
)

# Dependencies (tip 2)
DEPENDENCY_DURATION = Histogram(
    "fastapi_dependency_duration_seconds",
    "Time running a route's dependencies; validating their parameters and the body is not included.",
    ["route"],
    buckets=FAST_BUCKETS,
)
RESOURCES_CREATED = Counter(
    "fastapi_resources_created_total",
    "Objects meant to be created once per process (engines, connections, clients).",
    ["kind"],
)

# Pydantic (tip 3)
VALIDATION_DURATION = Histogram(
    "fastapi_validation_duration_seconds",
    "Time validating the request (parameters and body) or the response model.",
    ["route", "phase"],
    buckets=FAST_BUCKETS,
)
SERIALIZATION_DURATION = Histogram(
    "fastapi_serialization_duration_seconds",
    "Time encoding and rendering the response body.",
    ["route"],
    buckets=FAST_BUCKETS,
)
RESPONSE_SIZE = Histogram(
    "fastapi_response_size_bytes",
    "Size of the response body.",
    ["route"],
    buckets=SIZE_BUCKETS,
)

# Cache (tip 5)
CACHE_REQUESTS = Counter(
    "fastapi_cache_requests_total",
    "Cache look-ups by result.",
    ["cache", "result"],
)

# Database (tip 6)
DB_QUERIES_PER_REQUEST = Histogram(
    "fastapi_db_queries_per_request",
    "Database statements executed by one request.",
    ["route"],
    buckets=COUNT_BUCKETS,
)
DB_QUERY_DURATION = Histogram(
    "fastapi_db_query_duration_seconds",
    "Time executing one database statement.",
    ["operation"],
    buckets=DEFAULT_LATENCY_BUCKETS,
)
DB_N_PLUS_ONE = Counter(
    "fastapi_db_n_plus_one_total",
    "Requests that ran the same statement at least the N+1 threshold of times.",
    ["route"],
)
DB_POOL_CONNECTIONS = Gauge(
    "fastapi_db_pool_connections",
    "Connections of a pool by state (size, checked_out, overflow, idle).",
    ["pool", "state"],
    multiprocess_mode="livesum",
)
DB_POOL_WAIT = Histogram(
    "fastapi_db_pool_wait_seconds",
    "Time waiting to check a connection out of the pool.",
    ["pool"],
    buckets=FAST_BUCKETS,
)
DB_SLOW_QUERIES = Counter(
    "fastapi_db_slow_queries_total",
    "Statements slower than the slow-query threshold.",
    ["route"],
)

# Static files (tip 7)
STATIC_RESPONSES = Counter(
    "fastapi_static_responses_total", "Static-file responses served by the app.", ["mount"]
)
STATIC_BYTES = Counter("fastapi_static_bytes_total", "Static-file bytes served by the app.", ["mount"])

# Profiles (tip 10)
PROFILES_CAPTURED = Counter(
    "fastapi_profiles_captured_total",
    "Profiles of slow requests kept.",
    ["route"],
)

# The collector itself
COLLECTOR_ERRORS = Counter(
    "fastapi_collector_errors_total",
    "Faults inside the collector; the request went on.",
    ["component"],
)

_faults.count_into(COLLECTOR_ERRORS)
