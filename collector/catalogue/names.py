"""Metric names the catalogue reads, taken from the objects in ``collector.metrics``.

prometheus_client keeps a counter's name without ``_total`` in ``_name``; the model's ``Counter``
adds the suffix back, so names here are always the family name.
"""

from __future__ import annotations

from prometheus_client.metrics import MetricWrapperBase

from collector import metrics


def name(metric: MetricWrapperBase) -> str:
    return str(metric._name)


REQUESTS = name(metrics.REQUEST_DURATION)
ROUTE_HANDLERS = name(metrics.ROUTE_HANDLERS)
EVENT_LOOP_LAG = name(metrics.EVENT_LOOP_LAG)
EVENT_LOOP_STALLS = name(metrics.EVENT_LOOP_STALLS)
EVENT_LOOP_STALLED_SECONDS = name(metrics.EVENT_LOOP_STALLED_SECONDS)
STALLED_REQUESTS = name(metrics.STALLED_REQUESTS)
THREADPOOL_TOKENS = name(metrics.THREADPOOL_TOKENS)
THREADPOOL_QUEUE = name(metrics.THREADPOOL_QUEUE)
WORKERS = name(metrics.WORKERS)
CPU_CORES = name(metrics.CPU_CORES)
WORKER_CPU = name(metrics.WORKER_CPU)
MIDDLEWARE_DURATION = name(metrics.MIDDLEWARE_DURATION)
MIDDLEWARES = name(metrics.MIDDLEWARES)
DEPENDENCY_DURATION = name(metrics.DEPENDENCY_DURATION)
RESOURCES_CREATED = name(metrics.RESOURCES_CREATED)
VALIDATION_DURATION = name(metrics.VALIDATION_DURATION)
SERIALIZATION_DURATION = name(metrics.SERIALIZATION_DURATION)
RESPONSE_SIZE = name(metrics.RESPONSE_SIZE)
CACHE_REQUESTS = name(metrics.CACHE_REQUESTS)
DB_QUERIES_PER_REQUEST = name(metrics.DB_QUERIES_PER_REQUEST)
DB_QUERY_DURATION = name(metrics.DB_QUERY_DURATION)
DB_N_PLUS_ONE = name(metrics.DB_N_PLUS_ONE)
DB_POOL_CONNECTIONS = name(metrics.DB_POOL_CONNECTIONS)
DB_POOL_WAIT = name(metrics.DB_POOL_WAIT)
DB_SLOW_QUERIES = name(metrics.DB_SLOW_QUERIES)
STATIC_RESPONSES = name(metrics.STATIC_RESPONSES)
STATIC_BYTES = name(metrics.STATIC_BYTES)
PROFILES_CAPTURED = name(metrics.PROFILES_CAPTURED)
COLLECTOR_ERRORS = name(metrics.COLLECTOR_ERRORS)
BACKGROUND_TASK_DURATION = name(metrics.BACKGROUND_TASK_DURATION)
RESPONSES_INCOMPLETE = name(metrics.RESPONSES_INCOMPLETE)
REQUESTS_EXCLUDED = name(metrics.REQUESTS_EXCLUDED)


def latency_buckets() -> tuple[float, ...]:
    """The request-latency histogram's bucket boundaries (settable by COLLECTOR_LATENCY_BUCKETS)."""
    return tuple(float(b) for b in metrics.LATENCY_BUCKETS)
