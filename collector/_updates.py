"""Hot-path updates of prometheus_client children, without the public API's per-call checks.

``Histogram.observe`` checks observability and scans the buckets in Python on every call;
per request that is most of the collector's own cost. The functions here bind a child's
value objects once and update them directly (bisect for the bucket). They fall back to the
public methods if prometheus_client's internals ever change shape.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from typing import Any


def observer(child: Any) -> Callable[[float], None]:
    """A function that observes one value into a histogram child."""
    try:
        inc_sum = child._sum.inc
        bucket_incs = [bucket.inc for bucket in child._buckets]
        bounds = list(child._upper_bounds)
    except AttributeError:
        return child.observe  # type: ignore[no-any-return]
    if len(bucket_incs) != len(bounds) or bounds[-1] != float("inf"):
        return child.observe  # type: ignore[no-any-return]

    def observe(amount: float) -> None:
        inc_sum(amount)
        bucket_incs[bisect_left(bounds, amount)](1)

    return observe


def adder(child: Any) -> Callable[[float], None]:
    """A function that adds to a gauge or counter child (negative amounts for gauges only)."""
    value = getattr(child, "_value", None)
    inc = getattr(value, "inc", None)
    return inc if callable(inc) else child.inc  # type: ignore[no-any-return]


def route_observer(
    cache: dict[str, Callable[[float], None]], metric: Any, route: str, *more: str
) -> Callable[[float], None]:
    """The observer of ``metric``'s child for ``route`` (and fixed ``more`` labels), made once per route."""
    observe = cache.get(route)
    if observe is None:
        observe = cache[route] = observer(metric.labels(route, *more))
    return observe
