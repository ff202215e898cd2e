"""Event-loop lag and stalls (tips 1 and 9).

A heartbeat task on the loop measures how late it wakes up: that is the lag. A
daemon watchdog thread notices when the heartbeat is late by more than the stall
threshold, reads the loop thread's stack with ``sys._current_frames()`` while it is
still blocked, and names the innermost frame of application code. No debug mode
and no patching of ``Handle._run``, so it works the same on uvloop and asyncio.
"""

from __future__ import annotations

import asyncio
import os
import site
import sys
import sysconfig
import threading
from collections.abc import Callable
from time import perf_counter
from types import FrameType

from collector import _faults
from collector._updates import observer
from collector.context import RequestContext, snapshot
from collector.metrics import EVENT_LOOP_LAG, EVENT_LOOP_STALLED_SECONDS, EVENT_LOOP_STALLS

OTHER_LOCATION = "other"
UNKNOWN_LOCATION = "unknown"


def _library_dirs() -> tuple[str, ...]:
    dirs = set()
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib", "purelib", "platlib", "scripts"):
        if key in paths:
            dirs.add(os.path.realpath(paths[key]))
    for d in [*site.getsitepackages(), site.getusersitepackages()]:
        dirs.add(os.path.realpath(d))
    dirs.add(os.path.dirname(os.path.realpath(__file__)))
    return tuple(sorted(d + os.sep for d in dirs))


class LocationNamer:
    """Turns a stack into ``file:function:line`` of the innermost application frame."""

    def __init__(self) -> None:
        self._library = _library_dirs()
        self._is_app: dict[str, bool] = {}
        self._cwd = os.getcwd() + os.sep

    def is_app_file(self, filename: str) -> bool:
        known = self._is_app.get(filename)
        if known is None:
            real = os.path.realpath(filename)
            known = not filename.startswith("<") and not real.startswith(self._library)
            self._is_app[filename] = known
        return known

    def name(self, frame: FrameType | None) -> str:
        innermost = frame
        while frame is not None:
            code = frame.f_code
            if self.is_app_file(code.co_filename):
                filename = code.co_filename
                if filename.startswith(self._cwd):
                    filename = filename[len(self._cwd) :]
                return f"{filename}:{code.co_name}:{frame.f_lineno}"
            frame = frame.f_back
        if innermost is not None:  # only library code: name the library frame rather than nothing
            code = innermost.f_code
            return f"{os.path.basename(code.co_filename)}:{code.co_name}:{innermost.f_lineno}"
        return UNKNOWN_LOCATION


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
    ) -> None:
        self.interval = interval
        self.threshold = threshold
        self.max_locations = max_locations
        self.in_flight = in_flight
        self.on_beat = on_beat
        self.namer = LocationNamer()
        self._locations: set[str] = set()
        self._last_beat = perf_counter()
        self._loop_thread_id = 0
        self._task: asyncio.Task[None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop_thread_id = threading.get_ident()
        self._last_beat = perf_counter()
        self._task = loop.create_task(self._heartbeat(), name="collector-heartbeat")
        self._thread = threading.Thread(target=self._watch, name="collector-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()

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
                if self.on_beat is not None:
                    self.on_beat(now)
            except Exception as exc:
                _faults.record("event_loop", exc)

    def location_label(self, location: str) -> str:
        if location in self._locations:
            return location
        if len(self._locations) >= self.max_locations:
            return OTHER_LOCATION
        self._locations.add(location)
        return location

    def _watch(self) -> None:
        # The heartbeat sleeps ``interval`` between beats, so the loop is late only past that.
        allowance = self.interval + self.threshold
        # Sleep until the moment the next beat would be late, not on a fixed short poll: a
        # healthy loop wakes this thread about once per allowance, and each wake-up is a
        # context switch and a GIL hand-off taken from the loop.
        wait = allowance
        while not self._stop.wait(wait):
            beat = self._last_beat
            late = perf_counter() - beat - allowance
            if late <= 0:
                wait = max(-late, 0.001)
                continue
            try:
                self._on_stall(beat)
            except Exception as exc:
                _faults.record("event_loop", exc)
            wait = allowance

    def _on_stall(self, beat: float) -> None:
        frame = sys._current_frames().get(self._loop_thread_id)
        location = self.location_label(self.namer.name(frame))
        del frame
        EVENT_LOOP_STALLS.labels(location).inc()
        # Marked now: a request in flight may finish as soon as the loop moves again.
        stall = [location, 0.0]
        for ctx in snapshot(self.in_flight):
            if ctx.stalls is None:
                ctx.stalls = []
            ctx.stalls.append(stall)
        while self._last_beat == beat and not self._stop.wait(self.threshold / 10):
            pass
        # The stall began when the heartbeat was due and ended when it finally ran.
        seconds = max(0.0, self._last_beat - beat - self.interval)
        stall[1] = seconds
        EVENT_LOOP_STALLED_SECONDS.inc(seconds)
