"""The request-latency buckets: defaults and ``COLLECTOR_LATENCY_BUCKETS``, read without the settings model.

``collector.metrics`` declares the latency histogram at import, before any settings exist; what reads
the metric names (the catalogue, ``collector doctor``) must not pay for pydantic to get them.
"""

from __future__ import annotations

import itertools
import math
import os

DEFAULT_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
LATENCY_BUCKETS_VARIABLE = "COLLECTOR_LATENCY_BUCKETS"


def parse_buckets(text: str) -> tuple[float, ...]:
    """Histogram bucket bounds from comma-separated seconds: positive, finite, strictly increasing."""
    try:
        bounds = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError("must be comma-separated numbers of seconds, e.g. 0.05,0.1,0.25,0.5,1") from None
    if not all(math.isfinite(b) and b > 0 for b in bounds):
        raise ValueError("every bucket must be a positive, finite number of seconds")
    if any(a >= b for a, b in itertools.pairwise(bounds)):
        raise ValueError("buckets must be in increasing order, without repeats")
    return bounds


def latency_buckets_from_environment() -> tuple[float, ...]:
    """The request-latency buckets: ``COLLECTOR_LATENCY_BUCKETS``, or the defaults; a bad value stops."""
    text = os.environ.get(LATENCY_BUCKETS_VARIABLE, "").strip()
    if not text:
        return DEFAULT_LATENCY_BUCKETS
    try:
        return parse_buckets(text)
    except ValueError as exc:
        raise SystemExit(
            f"collector: invalid settings:\n  latency_buckets ({LATENCY_BUCKETS_VARIABLE}) = {text!r}: {exc}"
        ) from None
