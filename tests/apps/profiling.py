"""Slow and fast routes for the profiler: CPU in an async route, sleep in a sync one, an await.

Settings come from ``COLLECTOR_*`` variables set by the test. With ``PROFILING_TEST_SPANS=1``
the app keeps its finished spans in memory and lists them at ``/test/spans``; with
``PROFILING_TEST_BASE_HTTP=1`` a BaseHTTPMiddleware runs the endpoints in a task of their own.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from fastapi import FastAPI, Request
from starlette.middleware.base import BaseHTTPMiddleware

import collector

spans: Any = None
if os.environ.get("PROFILING_TEST_SPANS") == "1":
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(provider)

app = FastAPI()


def crunch(seconds: float) -> int:
    """Busy CPU on the event loop's thread for ``seconds``."""
    deadline = time.perf_counter() + seconds
    turns = 0
    while time.perf_counter() < deadline:
        turns += 1
    return turns


def wait_for_disk(seconds: float) -> None:
    time.sleep(seconds)


async def fetch_remote(seconds: float) -> None:
    await asyncio.sleep(seconds)


@app.get("/cpu")
async def cpu(seconds: float = 0.3) -> dict[str, int]:
    return {"turns": crunch(seconds)}


@app.get("/sync-sleep")
def sync_sleep(seconds: float = 0.3) -> dict[str, float]:
    wait_for_disk(seconds)
    return {"slept": seconds}


@app.get("/await")
async def awaiting(seconds: float = 0.3) -> dict[str, float]:
    await fetch_remote(seconds)
    return {"awaited": seconds}


@app.get("/fast")
async def fast() -> dict[str, bool]:
    return {"fast": True}


@app.get("/test/spans")
def finished_spans() -> list[dict[str, Any]]:
    if spans is None:
        return []
    return [{"name": s.name, "attributes": dict(s.attributes or {})} for s in spans.get_finished_spans()]


async def passthrough(request: Request, call_next: Any) -> Any:
    return await call_next(request)


async def check_first(request: Request, call_next: Any) -> Any:
    await asyncio.sleep(0.05)  # the middleware's task is seen well before the endpoint's exists
    return await call_next(request)


if os.environ.get("PROFILING_TEST_BASE_HTTP") == "1":
    app.add_middleware(BaseHTTPMiddleware, dispatch=passthrough)
elif os.environ.get("PROFILING_TEST_BASE_HTTP") == "slow":
    app.add_middleware(BaseHTTPMiddleware, dispatch=check_first)
collector.instrument(app)
