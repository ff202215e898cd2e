"""Profiles of slow requests, kept automatically (tip 10).

One daemon thread per process samples, every ``profile_interval``, the stacks of the
threads running requests: the event-loop thread, whose running asyncio task is the
request being served, and the thread-pool workers running a request's sync code. A
request suspended on an ``await`` is sampled through its task's coroutine chain. Samples
are recorded for every request in flight, but a profile is kept only once the request
turns out slow: slower than ``profile_threshold`` or among the slowest
``100 - profile_percentile`` percent of its route (tail sampling). A fast request costs
a dictionary pop and a latency-window update when it ends (and a small wrapper object per
call it sends to the thread pool); the sampler samples finely only while some request has
been in flight for longer than a few milliseconds.

The event loop and the worker threads are never paused or traced: the sampler reads
``sys._current_frames()``; it finds which request a task serves from the ``ctx`` local
of the collector's own frames on that task's stack, once per task.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import sys
import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from time import perf_counter, thread_time
from types import AsyncGeneratorType, CodeType, CoroutineType, FrameType, GeneratorType
from typing import Any, TypeVar
from urllib.parse import parse_qs

import anyio.to_thread

from collector import _faults, routes
from collector.asgi import CollectorMiddleware
from collector.context import RequestContext, current, in_flight
from collector.event_loop import LocationNamer
from collector.metrics import PROFILES_CAPTURED
from collector.settings import Settings

# A stack is flat, outermost first: (code, f_lasti, code, f_lasti, ...); a synthetic frame is (name, 0).
# f_lasti is a cheap read; line numbers are looked up only when a kept profile is rendered.
Stack = tuple[Any, ...]
Task = asyncio.Task[Any]
T = TypeVar("T")

AWAIT = "[await]"  # pyinstrument's name for time a coroutine spent awaiting
_AWAIT_FRAME: Stack = (AWAIT, 0)
_MAX_DEPTH = 256
_MAX_ENTRIES = 10_000  # distinct consecutive stacks kept per request
_ENTRY_BYTES = 120  # list slots, tuple header and float of one recorded sample
_WINDOW_MIN, _WINDOW_MAX = 1_000, 10_000
_PASS_SHARE = 0.03  # of each pass period, at most, walking await chains and looking for new tasks
SPEEDSCOPE_SUFFIX = ".speedscope.json"
SPEEDSCOPE_SCHEMA = "https://www.speedscope.app/file-format-schema.json"

# id(code) -> rank of the collector's frames that hold the request's ``ctx``, filled by start().
_MARKERS: dict[int, int] = {}
_marker_codes: list[CodeType] = []  # keeps the ids above from being reused


_ROUTE_RANK = 2  # the route hook's frame: the task that runs the endpoint


def _find_markers() -> None:
    """The collector's frames that hold the request's ``ctx``: the middleware and the route hook.

    The route hook outranks the middleware: under BaseHTTPMiddleware the endpoint runs in another task.
    """
    for function, rank in ((CollectorMiddleware.__call__, 1), (routes._observed, _ROUTE_RANK)):
        code = function.__code__
        if "ctx" in code.co_varnames or "ctx" in code.co_cellvars:
            _MARKERS[id(code)] = rank
            _marker_codes.append(code)


class _InThread:
    """Runs a request's sync call in a worker thread, telling the sampler which request the thread serves."""

    __slots__ = ("ctx", "func", "task")

    def __init__(self, func: Callable[..., Any], ctx: RequestContext, task: Task | None) -> None:
        self.func = func
        self.ctx = ctx
        self.task = task

    def __call__(self, *args: Any) -> Any:
        ident = threading.get_ident()
        _thread_work[ident] = self
        try:
            return self.func(*args)
        finally:
            _thread_work.pop(ident, None)


_IN_THREAD_CODE = id(_InThread.__call__.__code__)
_thread_work: dict[int, _InThread] = {}
_next_run_sync: Any = None


async def _run_sync(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    ctx = current.get()
    if ctx is not None:
        try:
            task = asyncio.current_task()
        except RuntimeError:  # AnyIO on another backend than asyncio
            task = None
        func = _InThread(func, ctx, task)
    result: T = await _next_run_sync(func, *args, **kwargs)
    return result


def _walk(frame: FrameType | None, stop: int) -> tuple[Stack, FrameType | None]:
    """The stack from ``frame`` out to the first marker frame (kept), or to ``stop``'s frame (dropped)."""
    items: list[Any] = []
    marker = None
    depth = 0
    while frame is not None and depth < _MAX_DEPTH:
        code = frame.f_code
        if id(code) == stop:
            marker = frame
            break
        items.append(frame.f_lasti)
        items.append(code)
        if id(code) in _MARKERS:
            marker = frame
            break
        frame = frame.f_back
        depth += 1
    items.reverse()
    return tuple(items), marker


def _step(obj: Any) -> tuple[FrameType | None, Any]:
    """The frame of a suspended coroutine (or generator) and what it awaits."""
    kind = type(obj)
    if kind is CoroutineType:
        return obj.cr_frame, obj.cr_await
    if kind is GeneratorType:
        return obj.gi_frame, obj.gi_yieldfrom
    if kind is AsyncGeneratorType:
        return obj.ag_frame, obj.ag_await
    return None, None


def _chain(start: Any) -> tuple[Stack, Any]:
    """A suspended coroutine chain, from its innermost marker frame to the innermost awaiting frame.

    Returns the stack and the coroutine holding that marker frame, where the next walk can begin.
    """
    items: list[Any] = []
    first = 0
    marker = None
    obj = start
    for _ in range(_MAX_DEPTH):
        frame, awaited = _step(obj)
        if frame is None:
            break
        code = frame.f_code
        if id(code) in _MARKERS:
            first = len(items)
            marker = obj
        items.append(code)
        items.append(frame.f_lasti)
        obj = awaited
    return tuple(items[first:]), marker


def _marker_of(start: Any) -> tuple[Any, FrameType | None]:
    """The innermost marker coroutine on a suspended chain, and its frame."""
    found: tuple[Any, FrameType | None] = (None, None)
    obj = start
    for _ in range(_MAX_DEPTH):
        frame, awaited = _step(obj)
        if frame is None:
            break
        if id(frame.f_code) in _MARKERS:
            found = (obj, frame)
        obj = awaited
    return found


# A thread's innermost frame, its f_lasti, its stack and the marker frame found on it.
_Walked = tuple[FrameType, int, Stack, FrameType | None]


def _ctx_of(marker: FrameType) -> RequestContext | None:
    ctx = marker.f_locals.get("ctx")
    return ctx if type(ctx) is RequestContext and not ctx.route_exit else None


class _Recording:
    """Samples of one request in flight."""

    __slots__ = (
        "await_chain",
        "await_waiter",
        "chain_start",
        "idle",
        "nbytes",
        "ran",
        "stacks",
        "task",
        "task_rank",
        "walked_at",
        "weights",
    )

    def __init__(self) -> None:
        self.stacks: list[Stack] = []
        self.weights: list[float] = []
        self.nbytes = 0
        self.ran = 0.0  # seconds sampled running since the last pass
        self.idle = 0.0  # seconds suspended, not yet recorded
        self.task: Task | None = None
        self.task_rank = 0
        self.chain_start: Any = None  # the coroutine await chains are walked from
        self.await_waiter: object = None
        self.await_chain: Stack = ()
        self.walked_at = 0.0

    def add(self, stack: Stack, weight: float) -> None:
        stacks = self.stacks
        if stacks and stacks[-1] == stack:
            self.weights[-1] += weight
        elif len(stacks) < _MAX_ENTRIES:
            stacks.append(stack)
            self.weights.append(weight)
            self.nbytes += _ENTRY_BYTES + 8 * len(stack)

    def set_task(self, task: Task, rank: int, chain_start: Any = None) -> None:
        if rank > self.task_rank:
            self.task = task
            self.task_rank = rank
            self.chain_start = chain_start if chain_start is not None else task.get_coro()
            self.await_waiter = None

    def chain_is_current(self) -> bool:
        """Whether the task still waits on what it waited on when its chain was last walked."""
        waiter = getattr(self.task, "_fut_waiter", None)
        return waiter is not None and waiter is self.await_waiter

    def awaiting(self) -> Stack:
        """The task's await chain, walked again only when the task waits on something new."""
        if self.task is None or self.chain_is_current():
            return self.await_chain
        waiter = getattr(self.task, "_fut_waiter", None)
        chain, marker = _chain(self.chain_start)
        if not chain and self.task is not None:  # the marker's coroutine has returned: walk from the root
            chain, marker = _chain(self.task.get_coro())
        if marker is not None:
            self.chain_start = marker  # the frames outside the marker never change: skip them next time
        self.await_chain = chain
        self.await_waiter = waiter
        self.walked_at = perf_counter()
        return chain

    def finish(self) -> None:
        """Record the suspended time not yet recorded, where the task was last seen waiting."""
        if self.idle > 0.0 and self.await_chain:
            self.add(self.await_chain + _AWAIT_FRAME, self.idle)
            self.idle = 0.0


def _walked_at(rec: _Recording) -> float:
    return rec.walked_at


class Sampler:
    """The per-process sampling thread and the recordings of the requests in flight."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        # Suspended requests are accounted (and new tasks looked for) at this coarser period, ...
        self.pass_period = max(interval, 0.005)
        # ... and walking await chains may take this much of it; what does not fit waits for the next pass.
        self.pass_budget = self.pass_period * _PASS_SHARE
        self.pid = os.getpid()
        self.loops: dict[int, asyncio.AbstractEventLoop] = {}
        self.recordings: dict[RequestContext, _Recording] = {}
        self.task_ctx: dict[Task, RequestContext] = {}
        self.non_request: dict[Task, None] = {}
        self._walked: dict[int, _Walked] = {}  # per thread: the last tick's innermost frame and stack
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="collector-profiler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        last = last_pass = last_purge = perf_counter()
        # Fine-grained ticks only while some request is being recorded: one caught running, or in flight
        # for longer than a pass period.
        while not self._stop.wait(self.interval if self.recordings else self.pass_period):
            now = perf_counter()
            try:
                if in_flight or self.recordings:
                    self._tick(now, now - last)
                    if now - last_pass >= self.pass_period:
                        self._pass(now, now - last_pass)
                        last_pass = now
                else:
                    last_pass = now
                if now - last_purge >= 1.0:
                    last_purge = now
                    for task in list(self.non_request):
                        if task.done():
                            self.non_request.pop(task, None)
            except Exception as exc:
                _faults.record("profiling", exc)
            last = now

    def _recording(self, ctx: RequestContext) -> _Recording | None:
        rec = self.recordings.get(ctx)
        if rec is None:
            if ctx.route_exit or ctx not in in_flight:
                return None
            rec = self.recordings[ctx] = _Recording()
        return rec

    def _tick(self, now: float, dt: float) -> None:
        frames = sys._current_frames()
        walked: dict[int, _Walked] = {}
        for ident, loop in list(self.loops.items()):
            frame = frames.get(ident)
            task = asyncio.current_task(loop) if frame is not None else None
            if frame is not None and task is not None:
                self._sample_loop(task, self._stack(ident, frame, 0, walked), now, dt)
        for ident, work in list(_thread_work.items()):
            frame = frames.get(ident)
            if frame is not None:
                self._sample_thread(work, self._stack(ident, frame, _IN_THREAD_CODE, walked), now, dt)
        self._walked = walked

    def _stack(self, ident: int, frame: FrameType, stop: int, walked: dict[int, _Walked]) -> _Walked:
        """The thread's stack; walked again only when its innermost frame is not the one of the last tick."""
        lasti = frame.f_lasti
        last = self._walked.get(ident)
        if last is not None and last[0] is frame:  # same running call: its callers cannot have changed
            if last[1] != lasti:
                last = (frame, lasti, (*last[2][:-1], lasti), last[3])
        else:
            stack, marker = _walk(frame, stop)
            last = (frame, lasti, stack, marker)
        walked[ident] = last
        return last

    def _sample_loop(self, task: Task, walked: _Walked, now: float, dt: float) -> None:
        _, _, stack, marker = walked
        ctx = self.task_ctx.get(task)
        if ctx is None:
            if marker is None:
                return
            ctx = _ctx_of(marker)
            if ctx is None:
                return
            self.task_ctx[task] = ctx
        rec = self._recording(ctx)
        if rec is None:
            return
        if marker is not None:
            rec.set_task(task, _MARKERS[id(marker.f_code)])
        weight = min(dt, now - ctx.start)
        rec.add(stack, weight)
        rec.ran += weight

    def _sample_thread(self, work: _InThread, walked: _Walked, now: float, dt: float) -> None:
        rec = self._recording(work.ctx)
        if rec is None:
            return
        if work.task is not None:
            rec.set_task(work.task, 1)
        weight = min(dt, now - work.ctx.start)
        rec.add(rec.awaiting() + walked[2], weight)
        rec.ran += weight

    def _pass(self, now: float, elapsed: float) -> None:
        """Record the time each request spent suspended, and find the tasks of new requests."""
        walks: list[_Recording] = []
        unresolved = False
        for ctx in list(in_flight):
            if ctx.route_exit:
                continue
            rec = self.recordings.get(ctx)
            age = now - ctx.start
            if rec is None:
                if age < self.pass_period:
                    continue  # most requests end before they are ever looked at
                rec = self.recordings[ctx] = _Recording()
            rec.idle += max(0.0, min(elapsed, age) - rec.ran)
            rec.ran = 0.0
            if rec.task_rank < _ROUTE_RANK:
                # No task yet, or only the middleware's: under BaseHTTPMiddleware the endpoint's task
                # starts later, and is looked for until found.
                unresolved = True
            if rec.task is not None and rec.idle > 0.0:
                if rec.chain_is_current():
                    self._record_await(rec)
                else:
                    walks.append(rec)
        # The budget covers the optional work, requests with no task first: they have no samples at all.
        deadline = thread_time() + self.pass_budget  # the sampler's own CPU: preemption does not count
        if unresolved:
            self._resolve(deadline)
        walks.sort(key=_walked_at)  # the longest unwalked first: each request gets its turn
        for rec in walks:
            self._record_await(rec)
            if thread_time() >= deadline:
                break
        for ctx in list(self.recordings):
            if ctx not in in_flight:
                self.recordings.pop(ctx, None)
        for task, ctx in list(self.task_ctx.items()):
            if ctx not in in_flight:
                self.task_ctx.pop(task, None)

    def _record_await(self, rec: _Recording) -> None:
        task = rec.task
        if task is not None and not task.done():
            rec.add(rec.awaiting() + _AWAIT_FRAME, rec.idle)
        rec.idle = 0.0

    def _resolve(self, deadline: float) -> None:
        """Map the loop's tasks to their requests, by the collector's frames on their await chains."""
        for loop in list(self.loops.values()):
            try:
                tasks = asyncio.all_tasks(loop)
            except RuntimeError:
                continue
            for task in tasks:
                if task in self.task_ctx or task in self.non_request:
                    continue
                coro = task.get_coro()
                if not getattr(coro, "cr_suspended", False):
                    continue  # not started yet, or running: look again next time
                marker, frame = _marker_of(coro)
                # A suspended task without a request's ctx (lifespan, websocket, background) never gets one.
                ctx = _ctx_of(frame) if frame is not None else None
                if frame is None or ctx is None:
                    self.non_request[task] = None
                    continue
                self.task_ctx[task] = ctx
                rec = self._recording(ctx)
                if rec is not None:
                    rec.set_task(task, _MARKERS[id(frame.f_code)], marker)
                if thread_time() >= deadline:  # checked after the work: every pass makes progress
                    return


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
        self._latency: dict[str, _RouteLatency] = {}
        self._captured: dict[str, Any] = {}

    def on_route_exit(self, ctx: RequestContext) -> None:
        rec = _sampler.recordings.pop(ctx, None) if _sampler is not None else None
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


_sampler: Sampler | None = None
_profiler: Profiler | None = None


def start(settings: Settings) -> None:
    """Profile the requests of the running event loop; call on that loop. A second call adds the loop."""
    global _sampler, _profiler, _next_run_sync
    if _profiler is None:
        _find_markers()
        _profiler = Profiler(settings)
        # First, so that the span annotation (appended earlier) sees the profile id.
        routes.on_route_exit.insert(0, _on_route_exit)
    if _next_run_sync is None:
        _next_run_sync = anyio.to_thread.run_sync
        setattr(anyio.to_thread, "run_sync", _run_sync)  # noqa: B010
    if _sampler is None or _sampler.pid != os.getpid():
        _sampler = Sampler(settings.profile_interval)
        _sampler.start()
    _sampler.loops[threading.get_ident()] = asyncio.get_running_loop()


def stop() -> None:
    """Stop profiling the running event loop's requests."""
    if _sampler is not None:
        _sampler.loops.pop(threading.get_ident(), None)


def _on_route_exit(ctx: RequestContext) -> None:
    if _profiler is not None:
        _profiler.on_route_exit(ctx)


# Rendering


def _frame_name(code: Any) -> tuple[str, str | None, int | None]:
    if isinstance(code, str):
        return code, None, None
    return code.co_qualname, code.co_filename, code.co_firstlineno


def _line(code: CodeType, lasti: int, cache: dict[int, list[tuple[int, int, int | None]]]) -> int:
    """The line of the instruction at byte offset ``lasti``, as ``frame.f_lineno`` would have said."""
    ranges = cache.get(id(code))
    if ranges is None:
        ranges = cache[id(code)] = list(code.co_lines())
    for start, end, line in ranges:
        if start <= lasti < end and line is not None:
            return line
    return code.co_firstlineno


def hottest(profile: Profile, namer: LocationNamer) -> dict[str, Any] | None:
    """The function of the application (not a library) whose own lines took the most sampled time."""
    totals: dict[int, float] = {}
    codes: dict[int, CodeType] = {}
    for stack, weight in zip(profile.stacks, profile.weights, strict=False):
        chosen = None
        for i in range(len(stack) - 2, -1, -2):
            code = stack[i]
            if isinstance(code, str):
                continue
            if chosen is None:
                chosen = code  # the innermost real frame, if no application frame is on the stack
            if namer.is_app_file(code.co_filename):
                chosen = code
                break
        if chosen is not None:
            totals[id(chosen)] = totals.get(id(chosen), 0.0) + weight
            codes[id(chosen)] = chosen
    if not totals:
        return None
    best = max(totals, key=totals.__getitem__)
    name, filename, line = _frame_name(codes[best])
    return {"function": name, "file": filename, "line": line, "seconds": round(totals[best], 6)}


def speedscope(profile: Profile) -> dict[str, Any]:
    """The profile in speedscope's file format, as one sampled profile."""
    frames: list[dict[str, Any]] = []
    index: dict[Any, int] = {}
    samples: list[list[int]] = []
    for stack in profile.stacks:
        sample = []
        for i in range(0, len(stack), 2):
            code = stack[i]
            key = code if isinstance(code, str) else id(code)
            at = index.get(key)
            if at is None:
                name, filename, line = _frame_name(code)
                frame: dict[str, Any] = {"name": name}
                if filename is not None:
                    frame["file"] = filename
                    frame["line"] = line
                at = index[key] = len(frames)
                frames.append(frame)
            sample.append(at)
        samples.append(sample)
    weights = list(profile.weights)
    return {
        "$schema": SPEEDSCOPE_SCHEMA,
        "name": profile.title(),
        "exporter": "fastapi-collector",
        "activeProfileIndex": 0,
        "shared": {"frames": frames},
        "profiles": [
            {
                "type": "sampled",
                "name": profile.title(),
                "unit": "seconds",
                "startValue": 0,
                "endValue": sum(weights),
                "samples": samples,
                "weights": weights,
            }
        ],
    }


def html(profile: Profile, interval: float) -> str:
    """pyinstrument's interactive page for the profile."""
    from pyinstrument.renderers.html import HTMLRenderer
    from pyinstrument.session import Session

    infos: dict[int, str] = {}
    lines: dict[int, list[tuple[int, int, int | None]]] = {}
    records = []
    for stack, weight in zip(profile.stacks, profile.weights, strict=False):
        record = []
        for i in range(0, len(stack), 2):
            code = stack[i]
            if isinstance(code, str):
                record.append(code)
                continue
            info = infos.get(id(code))
            if info is None:
                info = infos[id(code)] = f"{code.co_qualname}\x00{code.co_filename}\x00{code.co_firstlineno}"
            record.append(f"{info}\x01l{_line(code, stack[i + 1], lines)}")
        records.append((record, weight))
    session = Session.from_json(
        {
            "frame_records": records,
            "start_time": profile.started,
            "duration": profile.duration,
            "min_interval": interval,
            "max_interval": interval,
            "sample_count": len(records),
            "start_call_stack": ["[collector]"],  # nothing to trim: the stacks start at the request
            "target_description": profile.title(),
            "cpu_time": 0,
            "sys_path": sys.path,
            "sys_prefixes": Session.current_sys_prefixes(),
        }
    )
    return str(HTMLRenderer().render(session))


# The endpoint


def _authorized(settings: Settings, scope: dict[str, Any]) -> bool:
    expected = (settings.profile_token or "").encode()
    if not expected:
        return False
    given = b""
    for key, value in scope.get("headers", ()):
        if key == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            if scheme.lower() == b"bearer":
                given = credentials.strip()
            break
    if not given:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = query.get("token", [""])[0].encode("latin-1")
    return hmac.compare_digest(given, expected)


async def _respond(
    scope: dict[str, Any], send: Any, status: int, body: bytes, content_type: str, *extra: tuple[bytes, bytes]
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body if scope["method"] != "HEAD" else b""})


async def _error(
    scope: dict[str, Any], send: Any, status: int, detail: str, *extra: tuple[bytes, bytes]
) -> None:
    body = json.dumps({"detail": detail}).encode()
    await _respond(scope, send, status, body, "application/json", *extra)


def _listing(settings: Settings, namer: LocationNamer) -> bytes:
    profiles = []
    for profile in _profiler.store.newest_first() if _profiler is not None else []:
        if profile.hottest is None:
            profile.hottest = hottest(profile, namer)
        base = f"{settings.profile_path}/{profile.id}"
        profiles.append(
            {
                "id": profile.id,
                "method": profile.method,
                "route": profile.route,
                "status": profile.status,
                "duration_seconds": round(profile.duration, 6),
                "time": datetime.fromtimestamp(profile.started, UTC).isoformat(),
                "kept_because": profile.reason,
                "sampled_seconds": round(sum(profile.weights), 6),
                "bytes": profile.nbytes,
                "hottest": profile.hottest,
                "html": base,
                "speedscope": base + SPEEDSCOPE_SUFFIX,
            }
        )
    return json.dumps({"pid": os.getpid(), "profiles": profiles}).encode()


_namer: LocationNamer | None = None


async def serve(settings: Settings, scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``GET {profile_path}``: the kept profiles; ``/{id}``: one as HTML; ``/{id}.speedscope.json``."""
    global _namer
    if not _authorized(settings, scope):
        return await _error(
            scope, send, 401, "a valid profile token is required", (b"www-authenticate", b"Bearer")
        )
    if scope["method"] not in ("GET", "HEAD"):
        return await _error(scope, send, 405, "method not allowed", (b"allow", b"GET, HEAD"))
    rest = scope["path"][len(settings.profile_path) :]
    if rest in ("", "/"):
        if _namer is None:
            _namer = LocationNamer()
        body = await anyio.to_thread.run_sync(_listing, settings, _namer)
        return await _respond(scope, send, 200, body, "application/json")
    if not rest.startswith("/"):
        return await _error(scope, send, 404, "not found")
    wanted = rest[1:]
    as_speedscope = wanted.endswith(SPEEDSCOPE_SUFFIX)
    if as_speedscope:
        wanted = wanted[: -len(SPEEDSCOPE_SUFFIX)]
    profile = _profiler.store.get(wanted) if _profiler is not None else None
    if profile is None:
        return await _error(scope, send, 404, "no such profile (profiles are per worker process)")
    if as_speedscope:
        body = await anyio.to_thread.run_sync(lambda: json.dumps(speedscope(profile)).encode())
        return await _respond(scope, send, 200, body, "application/json")
    try:
        page = await anyio.to_thread.run_sync(html, profile, settings.profile_interval)
    except ImportError:
        detail = f"install fastapi-collector[profile] for this page; speedscope: {rest}{SPEEDSCOPE_SUFFIX}"
        return await _error(scope, send, 501, detail)
    await _respond(scope, send, 200, page.encode(), "text/html; charset=utf-8")
