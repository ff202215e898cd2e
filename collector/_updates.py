"""Hot-path updates of prometheus_client children, without the public API's per-call cost.

``Histogram.observe`` checks observability and scans the buckets in Python on every call,
and each value update is a method call taking a lock; per request that is most of the
collector's own cost. The functions here bind a child's value objects once and update
them directly: bisect for the bucket, and for in-process values (``MutexValue``) an
in-place ``value._value += amount`` instead of ``inc``.

Why no lock is needed there: on a CPython with the GIL, the interpreter hands the GIL
to another thread only at a few instructions (function entry, backward jumps, calls).
``x._value += amount`` on a float is load-attribute, add, store-attribute with none of
those in between, and a float allocates no object the cyclic collector tracks, so no
finalizer can run in the middle: the update cannot interleave with another thread's,
locked or not. On a free-threaded build, or when values live in multi-process files
(``MmapedValue``), the value's own locked ``inc`` is used. If prometheus_client's
internals ever change shape, the public methods are used.
"""

from __future__ import annotations

import sys
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from prometheus_client.values import MutexValue

# sys._is_gil_enabled exists from 3.13 on; before that every CPython build has the GIL.
_GIL = sys.implementation.name == "cpython" and getattr(sys, "_is_gil_enabled", lambda: True)()


def _in_place(value: Any) -> bool:
    return _GIL and type(value) is MutexValue and isinstance(getattr(value, "_value", None), float)


def observer(child: Any) -> Callable[[float], None]:
    """A function that observes one value into a histogram child."""
    try:
        total = child._sum
        buckets = list(child._buckets)
        bounds = list(child._upper_bounds)
    except AttributeError:
        return child.observe  # type: ignore[no-any-return]
    if len(buckets) != len(bounds) or bounds[-1] != float("inf"):
        return child.observe  # type: ignore[no-any-return]

    if _in_place(total) and all(_in_place(bucket) for bucket in buckets):

        def observe_in_place(amount: float) -> None:
            total._value += amount
            buckets[bisect_left(bounds, amount)]._value += 1.0

        return observe_in_place

    inc_sum = total.inc
    bucket_incs = [bucket.inc for bucket in buckets]

    def observe(amount: float) -> None:
        inc_sum(amount)
        bucket_incs[bisect_left(bounds, amount)](1)

    return observe


def adder(child: Any) -> Callable[[float], None]:
    """A function that adds to a gauge or counter child (negative amounts for gauges only)."""
    value = getattr(child, "_value", None)
    if _in_place(value):

        def add_in_place(amount: float) -> None:
            value._value += amount  # type: ignore[union-attr]

        return add_in_place
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
