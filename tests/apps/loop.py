"""An app for the event-loop monitor's own faults and for GIL starvation.

``/test/kill/{part}`` kills one of the collector's own workers the way a real fault would:
the heartbeat task is cancelled, the watchdog and profiler threads get an exception raised
inside them (``SystemExit``, which no ``except Exception`` of theirs can swallow).
Settings come from ``COLLECTOR_*`` variables set by the test.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
import time

from fastapi import FastAPI, HTTPException

import collector

app = FastAPI()
THREADS = {"watchdog": "collector-watchdog", "profiler": "collector-profiler"}


@app.get("/blocking")
async def blocking_view(seconds: float = 0.4) -> dict[str, float]:
    time.sleep(seconds)  # a sync call in an async view: the loop stalls here
    return {"blocked": seconds}


@app.get("/async-sleep")
async def async_sleep(seconds: float = 0.2) -> dict[str, float]:
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@app.get("/burn")
def burn(seconds: float = 1.0) -> dict[str, int]:
    """CPU in a thread-pool worker: holds the GIL most of the time, starving the loop's thread."""
    deadline = time.perf_counter() + seconds
    turns = 0
    while time.perf_counter() < deadline:
        turns += 1
    return {"turns": turns}


@app.post("/test/kill/{part}")
async def kill(part: str) -> dict[str, int]:
    if part == "heartbeat":
        tasks = [t for t in asyncio.all_tasks() if t.get_name() == "collector-heartbeat"]
        for task in tasks:
            task.cancel()
        return {"killed": len(tasks)}
    if part not in THREADS:
        raise HTTPException(404)
    threads = [t for t in threading.enumerate() if t.name == THREADS[part] and t.is_alive()]
    for thread in threads:
        assert thread.ident is not None
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(SystemExit))
    return {"killed": len(threads)}


@app.get("/test/threads/{part}")
async def threads(part: str) -> dict[str, int]:
    return {"alive": sum(t.name == THREADS[part] and t.is_alive() for t in threading.enumerate())}


collector.instrument(app)
