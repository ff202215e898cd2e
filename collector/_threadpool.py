"""The thread pool that runs sync endpoints and dependencies (tip 9).

Starlette's ``run_in_threadpool`` and FastAPI's sync paths all end in
``anyio.to_thread.run_sync``, which it looks up on the module at call time; the
wrapper timestamps the submission and the start of the work, so the difference is
the time spent waiting for one of the default limiter's tokens. The swap is in the patch
ledger (component ``threadpool``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from time import perf_counter
from typing import Any, TypeVar

import anyio.to_thread

from collector import _faults, _patches
from collector.metrics import THREADPOOL_QUEUE, THREADPOOL_TOKENS, THREADPOOL_WAITING

T = TypeVar("T")

COMPONENT = "threadpool"
_original: Any = None  # kept after uninstall: a caller still holding the wrapper goes on working
_borrowed = THREADPOOL_TOKENS.labels("borrowed")
_total = THREADPOOL_TOKENS.labels("total")


def _timed(func: Callable[..., T], submitted: float) -> Callable[..., T]:
    @functools.wraps(func)
    def run(*args: Any) -> T:
        try:
            THREADPOOL_QUEUE.observe(perf_counter() - submitted)
        except Exception as exc:
            _faults.record("threadpool", exc)
        return func(*args)

    return run


async def run_sync(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    result: T = await _original(_timed(func, perf_counter()), *args, **kwargs)
    return result


def install() -> None:
    """Wrap ``anyio.to_thread.run_sync``; a second call does nothing."""
    global _original
    if not _patches.active(COMPONENT):
        _original = _patches.replace(COMPONENT, anyio.to_thread, "run_sync", run_sync)


def uninstall() -> None:
    _patches.undo(COMPONENT)


def sample() -> None:
    """Read the running loop's default limiter; call from a task on that loop."""
    stats = anyio.to_thread.current_default_thread_limiter().statistics()
    _borrowed.set(stats.borrowed_tokens)
    _total.set(stats.total_tokens)
    THREADPOOL_WAITING.set(stats.tasks_waiting)
