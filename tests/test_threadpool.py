"""Thread-pool tokens and queue wait under concurrent sync requests."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import anyio.to_thread

from collector import _threadpool as threadpool
from tests.conftest import value

APP = "tests.apps.core:app"


def test_tokens_rise_under_concurrent_sync_requests(serve: Any) -> None:
    server = serve(APP)
    idle = value(server.metrics(), "fastapi_threadpool_tokens", state="borrowed")
    assert value(server.metrics(), "fastapi_threadpool_tokens", state="total") == 40
    concurrent = 8
    threads = [
        # long enough for all of them to be in flight together on a loaded machine
        threading.Thread(target=server.get, args=("/sync-sleep",), kwargs={"params": {"seconds": 4.0}})
        for _ in range(concurrent)
    ]
    for t in threads:
        t.start()
    peak = 0.0
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and peak < concurrent:
        peak = max(peak, value(server.metrics(), "fastapi_threadpool_tokens", state="borrowed"))
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert idle == 0
    assert peak >= concurrent
    metrics = server.metrics()
    assert value(metrics, "fastapi_threadpool_queue_seconds_count") >= concurrent


def test_queue_wait_is_the_time_spent_waiting_for_a_token() -> None:
    async def main() -> list[float]:
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = 1
        starts: list[float] = []

        def work() -> None:
            starts.append(time.perf_counter())
            time.sleep(0.2)

        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(anyio.to_thread.run_sync, work)
        return starts

    from collector.metrics import THREADPOOL_QUEUE

    def total_wait() -> float:
        return next(s.value for s in THREADPOOL_QUEUE.collect()[0].samples if s.name.endswith("_sum"))

    threadpool.install()
    try:
        before = total_wait()
        anyio.run(main)
        waited = total_wait() - before
    finally:
        threadpool.uninstall()
    # With one token, the second call waits ~0.2 s and the third ~0.4 s.
    assert 0.5 <= waited <= 0.9
