"""Which finished requests keep their profile (tail sampling), and the store of kept profiles.

A profile is kept once the request turns out slow: slower than ``profile_threshold`` or among
the slowest ``100 - profile_percentile`` percent of its route. A fast request costs a dictionary
pop and a latency-window update when it ends.
"""

from __future__ import annotations

import os
import threading
import time
from array import array
from collections import OrderedDict
from time import perf_counter
from typing import Any

from collector._context import RequestContext
from collector._profile_sampler import Sampler, Stack
from collector._settings import Settings
from collector.metrics import PROFILES_CAPTURED

_WINDOW_MIN, _WINDOW_MAX = 1_000, 10_000


class _RouteLatency:
    """The recent durations of one route, and the duration above which a request is in its slowest tail."""

    __slots__ = ("count", "cutoff", "last_computed", "window")

    def __init__(self, size: int) -> None:
        self.window = array("d", bytes(8 * size))
        self.count = 0
        self.cutoff = float("inf")
        self.last_computed = 0

    def observe(self, duration: float, percentile: float, warm: int) -> bool:
        window = self.window
        size = len(window)
        window[self.count % size] = duration
        self.count += 1
        filled = min(self.count, size)
        if self.count >= warm and self.count - self.last_computed >= max(warm, filled // 10):
            ordered = sorted(window[:filled])
            self.cutoff = ordered[min(filled - 1, int(filled * percentile / 100.0))]
            self.last_computed = self.count
        return duration > self.cutoff


class Profile:
    __slots__ = (
        "duration",
        "hottest",
        "id",
        "method",
        "nbytes",
        "reason",
        "route",
        "stacks",
        "started",
        "status",
        "weights",
    )

    def __init__(
        self,
        ctx: RequestContext,
        duration: float,
        reason: str,
        stacks: list[Stack],
        weights: list[float],
        nbytes: int,
    ) -> None:
        self.id = os.urandom(8).hex()
        self.route = ctx.route_label
        self.method = ctx.method
        self.status = ctx.status
        self.duration = duration
        self.reason = reason
        self.started = time.time() - (perf_counter() - ctx.start)
        self.stacks = stacks
        self.weights = weights
        self.nbytes = nbytes
        self.hottest: dict[str, Any] | None = None

    def title(self) -> str:
        return f"{self.method} {self.route} ({self.duration * 1000:.0f} ms)"


class Store:
    """The kept profiles, oldest evicted first, within a count and a byte budget."""

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._profiles: OrderedDict[str, Profile] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, profile: Profile) -> bool:
        if profile.nbytes > self.max_bytes:
            return False
        with self._lock:
            self._profiles[profile.id] = profile
            self.nbytes += profile.nbytes
            while len(self._profiles) > self.max_count or self.nbytes > self.max_bytes:
                _, evicted = self._profiles.popitem(last=False)
                self.nbytes -= evicted.nbytes
        return True

    def get(self, profile_id: str) -> Profile | None:
        return self._profiles.get(profile_id)

    def newest_first(self) -> list[Profile]:
        with self._lock:
            return list(reversed(self._profiles.values()))


class Profiler:
    """Settings-bound decisions: which finished requests keep their profile."""

    def __init__(self, settings: Settings) -> None:
        self.threshold = settings.profile_threshold
        self.percentile = settings.profile_percentile
        # Enough durations that the slowest (100 - percentile) % holds at least one request.
        self.warm = int(100.0 / (100.0 - self.percentile)) if self.percentile < 100.0 else 0
        self.window_size = min(_WINDOW_MAX, max(_WINDOW_MIN, 10 * self.warm))
        self.store = Store(settings.profile_store_count, settings.profile_store_bytes)
        self.sampler: Sampler | None = None
        self._latency: dict[str, _RouteLatency] = {}
        self._captured: dict[str, Any] = {}

    def on_route_exit(self, ctx: RequestContext) -> None:
        sampler = self.sampler
        rec = sampler.recordings.pop(ctx, None) if sampler is not None else None
        duration = ctx.route_exit - ctx.start
        route = ctx.route_label
        in_tail = False
        if self.warm:
            latency = self._latency.get(route)
            if latency is None:
                latency = self._latency[route] = _RouteLatency(self.window_size)
            in_tail = latency.observe(duration, self.percentile, self.warm)
        if rec is None or (duration < self.threshold and not in_tail):
            return
        rec.finish()
        if not rec.stacks:
            return
        reason = "threshold" if duration >= self.threshold else "percentile"
        profile = Profile(ctx, duration, reason, rec.stacks[:], rec.weights[:], rec.nbytes)
        if not self.store.add(profile):
            return
        ctx.profile_id = profile.id
        counter = self._captured.get(route)
        if counter is None:
            counter = self._captured[route] = PROFILES_CAPTURED.labels(route)
        counter.inc()
