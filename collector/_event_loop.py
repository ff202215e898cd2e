"""Event-loop lag and stalls (tips 1 and 9).

A heartbeat task on the loop measures how late it wakes up: that is the lag. A
daemon watchdog thread notices when the heartbeat is late by more than the stall
threshold, reads the loop thread's stack with ``sys._current_frames()`` while it is
still blocked, and names the innermost frame of application code. No debug mode
and no patching of ``Handle._run``, so it works the same on uvloop and asyncio.

When no application frame is on the loop thread's stack, the location names the cause:
``[gil] file:function`` when the loop thread got almost no CPU during the stall (it waited
for the GIL, held by other threads such as thread-pool workers, or for a CPU), and
``[library] file:function`` when it was busy in library code (the collector's own included).

Each watches the other: the heartbeat restarts a dead watchdog thread, the watchdog
takes no stall for a dead heartbeat, which its done-callback restarts; each death is
counted once in ``fastapi_collector_errors_total{component="heartbeat"|"watchdog"}``.
A loop that stopped or closed (a test client that runs each request on a new loop) is
not stalled: its monitor ends and says so through ``on_end``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from time import perf_counter
from typing import Any

from collector import _faults
from collector._context import RequestContext, snapshot
from collector._frames import OTHER_LOCATION, UNKNOWN_LOCATION, LocationNamer
from collector._updates import observer
from collector.metrics import EVENT_LOOP_LAG, EVENT_LOOP_STALLED_SECONDS, EVENT_LOOP_STALLS

__all__ = ["UNKNOWN_LOCATION", "LocationNamer", "LoopMonitor", "stall_seconds"]

GIL_PREFIX = "[gil] "
LIBRARY_PREFIX = "[library] "
# Below this share of one CPU during the probe, the loop thread was waiting, not running.
_WAITING_CPU_SHARE = 0.5
_PROBE_MAX = 0.02


def stall_seconds(stall: list[Any]) -> float:
    """A stall's duration: the watchdog's once it is over, else so far (read on the loop, it is over)."""
    _, seconds, began = stall
    return float(seconds) if seconds else max(0.0, perf_counter() - began)


def _cpu_clock() -> int | None:
    """The calling thread's CPU clock, readable from other threads (None where there is none)."""
    try:
        return time.pthread_getcpuclockid(threading.get_ident())
    except (AttributeError, OSError):
        return None


class LoopMonitor:
    """One per event loop: the heartbeat task and its watchdog thread."""

    def __init__(
        self,
        *,
        interval: float,
        threshold: float,
        max_locations: int,
        in_flight: set[RequestContext],
        on_beat: Callable[[float], None] | None = None,
        on_end: Callable[[LoopMonitor], None] | None = None,
    ) -> None:
        self.interval = interval
        self.threshold = threshold
        self.max_locations = max_locations
        self.in_flight = in_flight
        self.on_beat = on_beat
        self.on_end = on_end
        self.namer = LocationNamer()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._locations: set[str] = set()
        self._last_beat = perf_counter()
        self._loop_thread_id = 0
        self._cpu_clock: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watchdog_died_of: BaseException | None = None

    def start(self) -> None:
        """Start on the running loop."""
        self.loop = asyncio.get_running_loop()
        self._loop_thread_id = threading.get_ident()
        self._cpu_clock = _cpu_clock()
        self._start_heartbeat()
        self._start_watchdog()

    def stop(self) -> None:
        """Stop both; callable from any thread."""
        self._stop.set()
        task, loop = self._task, self.loop
        if task is None or loop is None or task.done():
            return
        if threading.get_ident() == self._loop_thread_id:
            task.cancel()
        elif not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile: the task will never run again
                loop.call_soon_threadsafe(task.cancel)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _end(self) -> None:
        """The loop stopped or closed: not a stall; stop, and tell the owner once."""
        if self._stop.is_set():
            return
        self.stop()
        if self.on_end is not None:
            try:
                self.on_end(self)
            except Exception as exc:
                _faults.record("event_loop", exc)

    # The heartbeat

    def _start_heartbeat(self) -> None:
        assert self.loop is not None
        self._last_beat = perf_counter()
        self._task = self.loop.create_task(self._heartbeat(), name="collector-heartbeat")
        self._task.add_done_callback(self._heartbeat_done)

    def _heartbeat_done(self, task: asyncio.Task[None]) -> None:
        if self._stop.is_set() or task is not self._task:
            return
        try:
            if self._loop_goes_on(task):
                died_of = task.exception() if not task.cancelled() else asyncio.CancelledError()
                _faults.record("heartbeat", died_of)
                self._start_heartbeat()
            else:  # every task is being cancelled: the loop is shutting down (asyncio.run, a test portal)
                self._end()
        except Exception as exc:
            _faults.record("event_loop", exc)

    def _loop_goes_on(self, heartbeat: asyncio.Task[None]) -> bool:
        assert self.loop is not None
        if self.loop.is_closed() or not self.loop.is_running():
            return False
        tasks = asyncio.all_tasks(self.loop)
        return any(not t.done() and not t.cancelling() for t in tasks if t is not heartbeat)

    async def _heartbeat(self) -> None:
        interval = self.interval
        sleep = asyncio.sleep
        observe_lag = observer(EVENT_LOOP_LAG)
        self._last_beat = perf_counter()
        while True:
            await sleep(interval)
            now = perf_counter()
            lag = now - self._last_beat - interval
            self._last_beat = now
            try:
                observe_lag(lag if lag > 0.0 else 0.0)
                thread = self._thread
                if thread is not None and not thread.is_alive() and not self._stop.is_set():
                    _faults.record("watchdog", self._watchdog_died_of)
                    self._start_watchdog()
                if self.on_beat is not None:
                    self.on_beat(now)
            except Exception as exc:
                _faults.record("event_loop", exc)

    # The watchdog

    def _start_watchdog(self) -> None:
        self._watchdog_died_of = None
        self._thread = threading.Thread(target=self._watch, name="collector-watchdog", daemon=True)
        self._thread.start()

    def location_label(self, location: str) -> str:
        if location in self._locations:
            return location
        if len(self._locations) >= self.max_locations:
            return OTHER_LOCATION
        self._locations.add(location)
        return location

    def _watch(self) -> None:
        try:
            self._watch_loop()
        except BaseException as exc:  # kept for the heartbeat, which counts it and starts a new thread
            self._watchdog_died_of = exc

    def _watch_loop(self) -> None:
        # The heartbeat sleeps ``interval`` between beats, so the loop is late only past that.
        allowance = self.interval + self.threshold
        # Sleep until the moment the next beat would be late, not on a fixed short poll: a
        # healthy loop wakes this thread about once per allowance, and each wake-up is a
        # context switch and a GIL hand-off taken from the loop.
        wait = allowance
        loop = self.loop
        assert loop is not None
        while not self._stop.wait(wait):
            beat = self._last_beat
            late = perf_counter() - beat - allowance
            if late <= 0:
                wait = max(-late, 0.001)
                continue
            wait = allowance
            if loop.is_closed() or not loop.is_running():
                self._end()
                return
            task = self._task
            if task is None or task.done():  # a dead heartbeat is no stall; its done-callback restarts it
                continue
            try:
                self._on_stall(beat)
            except Exception as exc:
                _faults.record("event_loop", exc)

    def _on_stall(self, beat: float) -> None:
        frame = sys._current_frames().get(self._loop_thread_id)
        if frame is None:  # the loop's thread is gone
            self._end()
            return
        app = self.namer.innermost_app_frame(frame)
        if app is not None:
            location = self.namer.location(app)
        else:
            code = frame.f_code
            where = f"{os.path.basename(code.co_filename)}:{code.co_name}"
            location = (GIL_PREFIX if self._loop_thread_waits() else LIBRARY_PREFIX) + where
        del frame, app
        location = self.location_label(location)
        EVENT_LOOP_STALLS.labels(location).inc()
        # Marked now: a request in flight may finish as soon as the loop moves again.
        stall: list[Any] = [location, 0.0, beat + self.interval]
        for ctx in snapshot(self.in_flight):
            if ctx.stalls is None:
                ctx.stalls = []
            ctx.stalls.append(stall)
        while self._last_beat == beat and not self._stop.wait(self.threshold / 10):
            if self._task is None or self._task.done():
                break
        # The stall began when the heartbeat was due and ended when it finally ran.
        seconds = max(0.0, self._last_beat - beat - self.interval)
        stall[1] = seconds
        EVENT_LOOP_STALLED_SECONDS.inc(seconds)

    def _loop_thread_waits(self) -> bool:
        """Whether the loop thread got less than half a CPU over a short probe (so: waiting, not running)."""
        clock = self._cpu_clock
        if clock is None:
            return False
        try:
            cpu, wall = time.clock_gettime(clock), perf_counter()
            self._stop.wait(min(self.threshold / 4, _PROBE_MAX))
            cpu, wall = time.clock_gettime(clock) - cpu, perf_counter() - wall
        except OSError:  # the thread ended meanwhile
            return False
        return wall > 0 and cpu / wall < _WAITING_CPU_SHARE
