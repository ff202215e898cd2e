"""Hot-path metric updates: the values prometheus_client's own methods give, none lost across threads."""

from __future__ import annotations

import sys
import threading

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from collector._updates import adder, observer

THREADS = 8
PER_THREAD = 20_000


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    assert value is not None, name
    return value


def test_observer_matches_histogram_observe() -> None:
    registry = CollectorRegistry()
    fast = Histogram("fast", "x", buckets=(0.1, 1.0, 10.0), registry=registry)
    slow = Histogram("slow", "x", buckets=(0.1, 1.0, 10.0), registry=registry)
    observe = observer(fast)
    for amount in (0.0, 0.05, 0.1, 0.5, 1.0, 3.0, 10.0, 50.0):
        observe(amount)
        slow.observe(amount)
    for bound in ("0.1", "1.0", "10.0", "+Inf"):
        assert _sample(registry, "fast_bucket", le=bound) == _sample(registry, "slow_bucket", le=bound), bound
    assert _sample(registry, "fast_sum") == _sample(registry, "slow_sum")
    assert _sample(registry, "fast_count") == 8


def test_in_place_updates_lose_nothing_under_constant_thread_switches() -> None:
    registry = CollectorRegistry()
    histogram = Histogram("h", "x", buckets=(1.0, 2.0), registry=registry)
    gauge = Gauge("g", "x", registry=registry)
    counter = Counter("c", "x", registry=registry)
    observe, add, inc = observer(histogram), adder(gauge), adder(counter)
    if observe.__name__ != "observe_in_place":
        pytest.skip("values are not updated in place here (free-threaded build or multi-process values)")
    start = threading.Barrier(THREADS)

    def work(index: int) -> None:
        start.wait()
        for _ in range(PER_THREAD):
            observe(0.5)
            add(1)
            if index % 2:
                add(-1)
            else:
                add(2)
            inc(1)
            histogram.observe(1.5)  # the locked public path, on the same values at the same time

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    total = THREADS * PER_THREAD
    assert _sample(registry, "h_bucket", le="1.0") == total
    assert _sample(registry, "h_bucket", le="2.0") == 2 * total
    assert _sample(registry, "h_sum") == pytest.approx(total * 0.5 + total * 1.5)
    assert _sample(registry, "c_total") == total
    assert _sample(registry, "g") == (THREADS // 2) * PER_THREAD * 3
