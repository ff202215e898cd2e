"""Event-loop lag and stalls, with the blocking code location, on asyncio and uvloop."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from collector.event_loop import LocationNamer
from tests.conftest import series, value

APP = "tests.apps.core:app"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_blocking_call_in_an_async_view_is_counted_with_its_location(serve: Any, loop: str) -> None:
    server = serve(APP, loop=loop)
    assert server.get("/blocking").status_code == 200
    time.sleep(0.2)
    metrics = server.metrics()
    stalls = series(metrics, "fastapi_event_loop_stalls_total")
    locations = [s["location"] for s in stalls]
    blocking = [loc for loc in locations if loc.startswith("tests/apps/core.py:blocking_view:")]
    assert len(blocking) == 1, locations
    assert value(metrics, "fastapi_event_loop_stalls_total", location=blocking[0]) == 1
    assert 0.2 <= value(metrics, "fastapi_event_loop_stalled_seconds_total") <= 1.0
    assert value(metrics, "fastapi_event_loop_lag_seconds_count") > 0
    assert value(metrics, "fastapi_event_loop_stalled_requests_total", route="/blocking") == 1


def test_requests_in_flight_during_a_stall_are_counted_on_their_route(serve: Any) -> None:
    server = serve(APP)
    waiter = threading.Thread(target=server.get, args=("/async-sleep",), kwargs={"params": {"seconds": 0.6}})
    waiter.start()
    time.sleep(0.2)
    server.get("/blocking")
    waiter.join()
    metrics = server.metrics()
    assert value(metrics, "fastapi_event_loop_stalled_requests_total", route="/async-sleep") == 1
    assert value(metrics, "fastapi_event_loop_stalled_requests_total", route="/blocking") == 1


def _stalls_in_app_code(server: Any) -> list[str]:
    # A loaded machine can stall the loop anywhere for a moment; the app's own code must not appear.
    stalls = series(server.metrics(), "fastapi_event_loop_stalls_total")
    return [s["location"] for s in stalls if s["location"].startswith("tests/apps/")]


def test_awaiting_does_not_count_as_a_stall(serve: Any) -> None:
    server = serve(APP)
    for _ in range(3):
        server.get("/async-sleep", params={"seconds": 0.3})
    assert _stalls_in_app_code(server) == []
    assert value(server.metrics(), "fastapi_event_loop_lag_seconds_count") > 0


def test_a_sync_view_in_the_thread_pool_does_not_stall_the_loop(serve: Any) -> None:
    server = serve(APP)
    server.get("/sync-sleep", params={"seconds": 0.3})
    assert _stalls_in_app_code(server) == []


def test_stall_threshold_is_a_setting(serve: Any) -> None:
    server = serve(APP, env={"COLLECTOR_STALL_THRESHOLD": "0.5"})
    server.get("/blocking")  # 0.3 s: under the threshold
    time.sleep(0.1)
    assert _stalls_in_app_code(server) == []


def test_library_frames_are_skipped_when_naming_a_location() -> None:
    import sys

    namer = LocationNamer()
    release = threading.Event()

    def parked_in_application_code() -> None:
        release.wait(10)  # the innermost frames are threading.py's

    thread = threading.Thread(target=parked_in_application_code)
    thread.start()
    try:
        time.sleep(0.1)
        assert thread.ident is not None
        frame = sys._current_frames()[thread.ident]
        assert not namer.is_app_file(frame.f_code.co_filename)
        location = namer.name(frame)
    finally:
        release.set()
        thread.join()
    assert location.startswith("tests/test_event_loop.py:parked_in_application_code:")
