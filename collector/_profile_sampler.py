"""The profiler's sampling thread and the recordings of the requests in flight.

One daemon thread per process samples, every ``profile_interval``, the stacks of the
threads running requests: the event-loop thread, whose running asyncio task is the
request being served, and the thread-pool workers running a request's sync code. A
request suspended on an ``await`` is sampled through its task's coroutine chain.

Which request a task or a worker serves is said explicitly, never read out of frames:
the route hook puts the task running the endpoint on the request's context
(``RequestContext.task``, while ``routes.track_tasks`` is on), and a call sent to the thread
pool carries its context (``_InThread``). Samples taken before the route matched (the app's
own middlewares) have no request yet and are not recorded.

The event loop and the worker threads are never paused or traced: the sampler reads
``sys._current_frames()``. The collector's own frames (the middleware and the route hook)
end a stack: what is outside them is the server's, the same for every request.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Callable
from time import perf_counter, thread_time
from types import AsyncGeneratorType, CoroutineType, FrameType, GeneratorType
from typing import Any, TypeVar

from collector import _faults
from collector import _routes as routes
from collector._asgi import CollectorMiddleware
from collector._context import RequestContext, current, in_flight, snapshot

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
_PASS_SHARE = 0.03  # of each pass period, at most, walking await chains

# The collector's own frames that end a stack: the middleware's and the route hook's.
_BOUNDARIES = frozenset(id(f.__code__) for f in (CollectorMiddleware.__call__, routes._observed))


class _InThread:
    """Runs a request's sync call in a worker thread, telling the sampler which request the thread serves."""

    __slots__ = ("ctx", "func")

    def __init__(self, func: Callable[..., Any], ctx: RequestContext) -> None:
        self.func = func
        self.ctx = ctx

    def __call__(self, *args: Any) -> Any:
        ident = threading.get_ident()
        _thread_work[ident] = self
        try:
            return self.func(*args)
        finally:
            _thread_work.pop(ident, None)


_IN_THREAD_CODE = id(_InThread.__call__.__code__)
_thread_work: dict[int, _InThread] = {}
# anyio's own run_sync, set when the profiler patches it.
next_run_sync: Any = None


async def run_sync(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``anyio.to_thread.run_sync`` while profiling: the call carries its request's context."""
    ctx = current.get()
    if ctx is not None:
        func = _InThread(func, ctx)
    result: T = await next_run_sync(func, *args, **kwargs)
    return result


def _walk(frame: FrameType | None, stop: int) -> Stack:
    """The stack from ``frame`` out to the first boundary frame (kept), or to ``stop``'s frame (dropped)."""
    items: list[Any] = []
    depth = 0
    while frame is not None and depth < _MAX_DEPTH:
        code = frame.f_code
        if id(code) == stop:
            break
        items.append(frame.f_lasti)
        items.append(code)
        if id(code) in _BOUNDARIES:
            break
        frame = frame.f_back
        depth += 1
    items.reverse()
    return tuple(items)


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
    """A suspended coroutine chain, from its innermost boundary frame to the innermost awaiting frame.

    Returns the stack and the coroutine holding that boundary frame, where the next walk can begin.
    """
    items: list[Any] = []
    first = 0
    boundary = None
    obj = start
    for _ in range(_MAX_DEPTH):
        frame, awaited = _step(obj)
        if frame is None:
            break
        code = frame.f_code
        if id(code) in _BOUNDARIES:
            first = len(items)
            boundary = obj
        items.append(code)
        items.append(frame.f_lasti)
        obj = awaited
    return tuple(items[first:]), boundary


# A thread's innermost frame, its f_lasti and its stack.
_Walked = tuple[FrameType, int, Stack]


class Recording:
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

    def set_task(self, task: Task) -> None:
        if task is not self.task:
            self.task = task
            self.chain_start = task.get_coro()
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
        chain, boundary = _chain(self.chain_start)
        if not chain and self.task is not None:  # the boundary's coroutine has returned: walk from the root
            chain, boundary = _chain(self.task.get_coro())
        if boundary is not None:
            self.chain_start = boundary  # the frames outside the boundary never change: skip them next time
        self.await_chain = chain
        self.await_waiter = waiter
        self.walked_at = perf_counter()
        return chain

    def finish(self) -> None:
        """Record the suspended time not yet recorded, where the task was last seen waiting."""
        if self.idle > 0.0 and self.await_chain:
            self.add(self.await_chain + _AWAIT_FRAME, self.idle)
            self.idle = 0.0


def _walked_at(rec: Recording) -> float:
    return rec.walked_at


class Sampler:
    """The per-process sampling thread and the recordings of the requests in flight."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        # Suspended requests are accounted at this coarser period, ...
        self.pass_period = max(interval, 0.005)
        # ... and walking await chains may take this much of it; what does not fit waits for the next pass.
        self.pass_budget = self.pass_period * _PASS_SHARE
        self.pid = os.getpid()
        self.loops: dict[int, asyncio.AbstractEventLoop] = {}
        self.recordings: dict[RequestContext, Recording] = {}
        self.task_ctx: dict[Task, RequestContext] = {}
        self._walked: dict[int, _Walked] = {}  # per thread: the last tick's innermost frame and stack
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._died_of: BaseException | None = None

    def start(self) -> None:
        self._died_of = None
        self._thread = threading.Thread(target=self._run_guarded, name="collector-profiler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(1.0)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def restart_if_dead(self) -> None:
        """Count a dead sampling thread once and start a new one (the recordings are kept)."""
        thread = self._thread
        if thread is not None and not thread.is_alive() and not self._stop.is_set():
            _faults.record("profiler", self._died_of)
            self.start()

    def _run_guarded(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # kept for restart_if_dead, which counts it
            self._died_of = exc

    def _run(self) -> None:
        last = last_pass = perf_counter()
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
            except Exception as exc:
                _faults.record("profiling", exc)
            last = now

    def recording(self, ctx: RequestContext) -> Recording | None:
        rec = self.recordings.get(ctx)
        if rec is None:
            if ctx.route_exit or ctx not in in_flight:
                return None
            rec = self.recordings[ctx] = Recording()
        return rec

    def _tick(self, now: float, dt: float) -> None:
        frames = sys._current_frames()
        walked: dict[int, _Walked] = {}
        for ident, loop in list(self.loops.items()):
            if loop.is_closed():
                self.loops.pop(ident, None)
                continue
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
                last = (frame, lasti, (*last[2][:-1], lasti))
        else:
            last = (frame, lasti, _walk(frame, stop))
        walked[ident] = last
        return last

    def _task_ctx(self, task: Task) -> RequestContext | None:
        ctx = self.task_ctx.get(task)
        if ctx is None:  # a task not seen yet: the requests in flight say which tasks are theirs
            for candidate in snapshot(in_flight):
                if candidate.task is not None and not candidate.route_exit:
                    self.task_ctx[candidate.task] = candidate
            ctx = self.task_ctx.get(task)
        return ctx

    def _sample_loop(self, task: Task, walked: _Walked, now: float, dt: float) -> None:
        ctx = self._task_ctx(task)
        if ctx is None:
            return
        rec = self.recording(ctx)
        if rec is None:
            return
        rec.set_task(task)
        weight = min(dt, now - ctx.start)
        rec.add(walked[2], weight)
        rec.ran += weight

    def _sample_thread(self, work: _InThread, walked: _Walked, now: float, dt: float) -> None:
        ctx = work.ctx
        rec = self.recording(ctx)
        if rec is None:
            return
        if ctx.task is not None:
            rec.set_task(ctx.task)
        weight = min(dt, now - ctx.start)
        rec.add(rec.awaiting() + walked[2], weight)
        rec.ran += weight

    def _pass(self, now: float, elapsed: float) -> None:
        """Record the time each request spent suspended since the last pass."""
        walks: list[Recording] = []
        for ctx in snapshot(in_flight):
            if ctx.route_exit:
                continue
            rec = self.recordings.get(ctx)
            age = now - ctx.start
            if rec is None:
                if age < self.pass_period:
                    continue  # most requests end before they are ever looked at
                rec = self.recordings[ctx] = Recording()
            if ctx.task is None:  # the route has not matched yet: nothing of the request's to record
                rec.ran = 0.0
                continue
            rec.set_task(ctx.task)
            rec.idle += max(0.0, min(elapsed, age) - rec.ran)
            rec.ran = 0.0
            if rec.idle > 0.0:
                if rec.chain_is_current():
                    self._record_await(rec)
                else:
                    walks.append(rec)
        deadline = thread_time() + self.pass_budget  # the sampler's own CPU: preemption does not count
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

    def _record_await(self, rec: Recording) -> None:
        task = rec.task
        if task is not None and not task.done():
            rec.add(rec.awaiting() + _AWAIT_FRAME, rec.idle)
        rec.idle = 0.0
