"""The sample app's catalogue: for each tip, the feature that breaks it and its twin that follows it.

Plain data, importable without the app: the load generator's scenarios, the demo's summary and
end-to-end tests of alerts read it. Paths are templates; ``sample_app.load.fill`` gives them values.
Tip 4 has no routes: it is how the app is served (one process, or ``python -m sample_app.serve``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Feature:
    tip: int
    name: str
    bad: tuple[str, ...]  # request paths of the variant that breaks the tip (one is picked per request)
    good: tuple[str, ...]  # the same feature done right
    signal: str  # what the collector shows for the bad variant
    weight: float = 1.0  # share of a scenario's requests, relative to the other features


TITLES = {
    1: "async/await",
    2: "reuse dependencies",
    3: "lean Pydantic models",
    4: "workers = cores",
    5: "cache hot data",
    6: "database: pools, indexes, N+1",
    7: "static files elsewhere",
    8: "lean middleware",
    9: "no sync calls in async views",
    10: "profile before optimising",
}

FEATURES: tuple[Feature, ...] = (
    Feature(
        1,
        "shipping quote: a sync view calling a blocking carrier client vs an async view and client",
        ("/bad/orders/{order_id}/shipping-quote",),
        ("/good/orders/{order_id}/shipping-quote",),
        'fastapi_route_handlers{kind="sync"} with traffic; thread-pool tokens borrowed, a queue in bursts',
    ),
    Feature(
        2,
        "product page: a dependency building a database engine per request vs one engine made at start-up",
        ("/bad/products/{product_id}",),
        ("/good/products/{product_id}",),
        "fastapi_resources_created_total{kind=db_engine|db_connection} near 1 per request",
    ),
    Feature(
        3,
        "order list: 50 orders with customer, lines and products nested vs a lean summary",
        ("/bad/orders",),
        ("/good/orders",),
        "fastapi_validation_duration_seconds{phase=response}, serialization time and response size",
        weight=0.5,
    ),
    Feature(
        5,
        "popular products: cached 1 ms (every look-up misses) vs 5 minutes",
        ("/bad/popular-products",),
        ("/good/popular-products",),
        'fastapi_cache_requests_total{cache="shop"}: hit ratio near 0 (good: near 1)',
    ),
    Feature(
        6,
        "recent orders: lazy loading of lines and products (N+1) vs selectinload",
        ("/bad/orders/recent",),
        ("/good/orders/recent",),
        "fastapi_db_n_plus_one_total and fastapi_db_queries_per_request on the route",
    ),
    Feature(
        6,
        "order by reference: upper(reference) defeats the index vs the indexed column",
        ("/bad/orders/by-reference/{reference}",),
        ("/good/orders/by-reference/{reference}",),
        'fastapi_db_query_duration_seconds{operation="SELECT"} and the route latency',
    ),
    Feature(
        6,
        "invoice: a pool of 1 connection vs a right-sized pool",
        ("/bad/orders/{order_id}/invoice",),
        ("/good/orders/{order_id}/invoice",),
        'fastapi_db_pool_wait_seconds{pool="tiny"} and the tiny pool all checked out',
    ),
    Feature(
        7,
        "storefront: the app serves its JS and CSS vs assets on a CDN",
        ("/bad/storefront", "/static/catalog.js", "/static/catalog.css"),
        ("/good/storefront",),
        'fastapi_static_bytes_total{mount="/static"} and static responses',
    ),
    Feature(
        8,
        "account API: three BaseHTTPMiddleware layers vs the same three as pure ASGI",
        ("/bad/account/customers/{customer_id}",),
        ("/good/account/customers/{customer_id}",),
        "fastapi_middleware_duration_seconds on the route; mounted sub-app (not in fastapi_middlewares)",
    ),
    Feature(
        9,
        "order total in a currency: a blocking exchange-rate call in an async view vs an awaited one",
        ("/bad/orders/{order_id}/total/{currency}",),
        ("/good/orders/{order_id}/total/{currency}",),
        "fastapi_event_loop_stalls_total{location=sample_app/clients.py:exchange_rate_blocking:...}",
        weight=0.5,
    ),
    Feature(
        10,
        "recommendations: a quadratic scan in Python vs one SQL aggregate",
        ("/bad/customers/{customer_id}/recommendations",),
        ("/good/customers/{customer_id}/recommendations",),
        "fastapi_profiles_captured_total on the route (slow requests profiled)",
        weight=0.1,
    ),
)

PER_PROCESS = {4: "one process on a multi-core machine (uvicorn) vs python -m sample_app.serve (one a core)"}


def features(tip: int) -> tuple[Feature, ...]:
    return tuple(f for f in FEATURES if f.tip == tip)
