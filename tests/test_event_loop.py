"""Event-loop lag and stalls, with the blocking code location, on asyncio and uvloop."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from collector._frames import LocationNamer
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
    # A loaded machine may stall the loop elsewhere too: each stall here lasts well under a second.
    stalls_count = value(metrics, "fastapi_event_loop_stalls_total")
    assert 0.2 <= value(metrics, "fastapi_event_loop_stalled_seconds_total") <= 1.0 * stalls_count
    assert value(metrics, "fastapi_event_loop_lag_seconds_count") > 0
    assert value(metrics, "fastapi_event_loop_stalled_requests_total", route="/blocking") == 1


def test_requests_in_flight_during_a_stall_are_counted_on_their_route(serve: Any) -> None:
    server = serve(APP)
    waiter = threading.Thread(target=server.get, args=("/async-sleep",), kwargs={"params": {"seconds": 5}})
    waiter.start()
    with server.client() as client:
        # In flight for sure before the loop is blocked, and long after, however loaded the machine.
        in_progress = "fastapi_requests_in_progress"
        assert _eventually(lambda: value(server.metrics(), in_progress, route="/async-sleep") == 1)
        client.get("/blocking")
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


LOOP_APP = "tests.apps.loop:app"


def _errors(server: Any, component: str) -> float:
    return value(server.metrics(), "fastapi_collector_errors_total", component=component)


def _eventually(check: Any, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return bool(check())


def _watchdogs() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "collector-watchdog" and t.is_alive()]


def test_a_test_client_without_with_records_no_stall_and_leaves_no_watchdog_behind() -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from prometheus_client import REGISTRY, generate_latest

    import collector
    from tests.conftest import parse_metrics

    def stalls() -> float:
        return value(parse_metrics(generate_latest(REGISTRY).decode()), "fastapi_event_loop_stalls_total")

    app = FastAPI()

    @app.get("/items/{item_id}")
    async def get_item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    # A threshold far above any scheduling hiccup: only a dead loop taken for a stalled one can count.
    threshold = 0.5
    collector.instrument(app, stall_threshold=threshold)
    before = stalls()
    client = TestClient(app)  # no ``with``: each request runs on a new event loop in a new thread
    for i in range(10):
        assert client.get(f"/items/{i}").status_code == 200
    assert _eventually(lambda: not _watchdogs()), _watchdogs()
    time.sleep(2 * threshold)  # long past the moment a watchdog would take the last loop for stalled
    assert stalls() == before
    assert not _watchdogs()


def _stall_counts(server: Any) -> dict[str, float]:
    return {
        dict(labels)["location"]: v
        for (name, labels), v in server.metrics().items()
        if name == "fastapi_event_loop_stalls_total"
    }


def test_a_loop_starved_by_thread_pool_workers_is_blamed_on_the_gil_not_a_library_frame(serve: Any) -> None:
    server = serve(LOOP_APP, loop="uvloop", env={"COLLECTOR_STALL_THRESHOLD": "0.05"})
    # The first requests import code on the loop (a real library stall): only the burn's stalls count.
    assert server.get("/burn", params={"seconds": 0}).status_code == 200
    before = _stall_counts(server)
    # Workers take turns on the GIL: 8 of them hold it most of the time, for 8 x 0.5 s of CPU in all.
    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(lambda _: server.get("/burn", params={"seconds": 0.5}).status_code, range(8)))
    assert done == [200] * 8
    # The locations whose count grew (on a starved machine the warm-up request may have stalled at one).
    locations = [loc for loc, n in _stall_counts(server).items() if n > before.get(loc, 0.0)]
    assert locations, "8 CPU-bound workers never starved the loop"
    # No application frame was on the loop's thread: the cause is named, not uvloop's or the collector's.
    assert all(loc.startswith("[gil] ") for loc in locations), locations


def test_a_cancelled_heartbeat_is_counted_once_restarted_and_charges_no_request(serve: Any) -> None:
    server = serve(LOOP_APP)
    innocent = threading.Thread(target=server.get, args=("/async-sleep",), kwargs={"params": {"seconds": 1}})
    innocent.start()
    time.sleep(0.1)
    with server.client() as client:
        assert client.post("/test/kill/heartbeat").json() == {"killed": 1}
    beats = value(server.metrics(), "fastapi_event_loop_lag_seconds_count")
    innocent.join()
    assert _eventually(lambda: value(server.metrics(), "fastapi_event_loop_lag_seconds_count") > beats + 5)
    assert server.get("/blocking", params={"seconds": 0.4}).status_code == 200

    metrics = server.metrics()
    assert value(metrics, "fastapi_event_loop_stalled_requests_total", route="/async-sleep") == 0
    assert value(metrics, "fastapi_event_loop_stalled_requests_total", route="/blocking") == 1
    assert [s["location"] for s in _app_stalls(metrics)] == [_location_of(metrics, "blocking_view")]
    assert value(metrics, "fastapi_collector_errors_total", component="heartbeat") == 1
    assert server.output().count("fault in heartbeat") == 1


def test_a_dead_watchdog_is_counted_once_and_restarted(serve: Any) -> None:
    server = serve(LOOP_APP)
    with server.client() as client:
        assert client.post("/test/kill/watchdog").json() == {"killed": 1}
        assert _eventually(lambda: _errors(server, "watchdog") == 1)
        assert client.get("/test/threads/watchdog").json() == {"alive": 1}
        assert client.get("/blocking", params={"seconds": 0.4}).status_code == 200

    metrics = server.metrics()
    assert value(metrics, "fastapi_event_loop_stalled_requests_total", route="/blocking") == 1
    assert [s["location"] for s in _app_stalls(metrics)] == [_location_of(metrics, "blocking_view")]
    assert value(metrics, "fastapi_collector_errors_total", component="watchdog") == 1
    assert server.output().count("fault in watchdog") == 1


def _app_stalls(metrics: Any) -> list[dict[str, str]]:
    stalls = series(metrics, "fastapi_event_loop_stalls_total")
    return [s for s in stalls if s["location"].startswith("tests/")]


def _location_of(metrics: Any, function: str) -> str:
    (location,) = [s["location"] for s in _app_stalls(metrics) if f":{function}:" in s["location"]]
    assert location.startswith("tests/apps/loop.py:blocking_view:")
    return location


def test_caller_location_names_the_application_code_that_called_into_a_library() -> None:
    from collector import _frames

    def library_call() -> str:  # stands for the collector's own listener, which asks where it was called from
        return _frames.caller_location(0)

    location = library_call()
    assert location.startswith("tests/test_event_loop.py:library_call:")
    assert _frames.namer().innermost_app_code([library_call.__code__]) is library_call.__code__
