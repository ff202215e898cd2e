"""Profiles of slow requests (tip 10): kept by tail sampling, counted, served behind a token."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from time import perf_counter
from typing import Any

from collector._context import RequestContext
from collector._profile_store import Profile, Store
from tests.conftest import Server, value

TOKEN = "test-profile-token-7f3a"
PATH = "/_collector/profiles"
APP = "tests.apps.profiling:app"
BASE_ENV = {
    "COLLECTOR_PROFILE": "true",
    "COLLECTOR_PROFILE_ON_PYTHON311": "true",  # the profiler under test, on every Python
    "COLLECTOR_PROFILE_THRESHOLD": "0.2",
    "COLLECTOR_PROFILE_ENDPOINT": "true",
    "COLLECTOR_PROFILE_TOKEN": TOKEN,
    "COLLECTOR_TRACING": "off",
}
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SPEEDSCOPE_UNITS = {"none", "nanoseconds", "microseconds", "milliseconds", "seconds", "bytes"}


def start(serve: Any, *, unset: tuple[str, ...] = (), app: str = APP, **env: str) -> Server:
    """The test app with the profiler on (and ``unset`` variables left to their defaults)."""
    environment = {k: v for k, v in {**BASE_ENV, **env}.items() if k not in unset}
    server: Server = serve(app, env=environment)
    return server


def listing(server: Server) -> list[dict[str, Any]]:
    response = server.get(PATH, headers=AUTH)
    assert response.status_code == 200, response.text
    profiles: list[dict[str, Any]] = response.json()["profiles"]
    return profiles


def only_profile(server: Server, route: str) -> dict[str, Any]:
    profiles = [p for p in listing(server) if p["route"] == route]
    assert len(profiles) == 1, profiles
    return profiles[0]


def speedscope(server: Server, profile: dict[str, Any]) -> dict[str, Any]:
    response = server.get(profile["speedscope"], headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    document: dict[str, Any] = response.json()
    check_speedscope(document)
    return document


def check_speedscope(document: dict[str, Any]) -> None:
    """The parts of https://www.speedscope.app/file-format-schema.json a sampled profile must meet."""
    assert document["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    frames = document["shared"]["frames"]
    assert frames and all(isinstance(f["name"], str) for f in frames)
    assert all(isinstance(f.get("line", 0), int) and isinstance(f.get("file", ""), str) for f in frames)
    assert document["profiles"]
    for profile in document["profiles"]:
        assert profile["type"] == "sampled"
        assert profile["unit"] in SPEEDSCOPE_UNITS
        assert isinstance(profile["name"], str)
        assert len(profile["samples"]) == len(profile["weights"]) > 0
        assert all(0 <= i < len(frames) for sample in profile["samples"] for i in sample)
        assert all(w >= 0 for w in profile["weights"])
        assert profile["startValue"] <= profile["endValue"]
        assert abs(sum(profile["weights"]) - (profile["endValue"] - profile["startValue"])) < 1e-6


def self_time(document: dict[str, Any]) -> dict[str, float]:
    """Seconds per function at the top of the stack, synthetic frames (``[await]``) left out."""
    names = [f["name"] for f in document["shared"]["frames"]]
    totals: dict[str, float] = {}
    profile = document["profiles"][0]
    for sample, weight in zip(profile["samples"], profile["weights"], strict=True):
        real = [names[i] for i in sample if not names[i].startswith("[")]
        if real:
            totals[real[-1]] = totals.get(real[-1], 0.0) + weight
    return totals


def hottest_leaf(document: dict[str, Any]) -> str:
    totals = self_time(document)
    return max(totals, key=totals.__getitem__)


def stack_names(document: dict[str, Any]) -> set[str]:
    return {f["name"] for f in document["shared"]["frames"]}


def test_slow_async_route_keeps_a_profile_whose_hottest_frame_is_the_busy_function(serve: Any) -> None:
    server = start(serve)
    assert server.get("/cpu", params={"seconds": 0.3}).status_code == 200

    profile = only_profile(server, "/cpu")
    assert profile["kept_because"] == "threshold"
    assert profile["duration_seconds"] >= 0.3
    assert profile["hottest"]["function"] == "crunch"
    assert profile["hottest"]["file"].endswith("tests/apps/profiling.py")
    document = speedscope(server, profile)
    assert hottest_leaf(document) == "crunch"
    assert self_time(document)["crunch"] >= 0.2


def test_sync_route_in_the_thread_pool_is_profiled_under_its_call_site(serve: Any) -> None:
    server = start(serve)
    assert server.get("/sync-sleep", params={"seconds": 0.3}).status_code == 200

    profile = only_profile(server, "/sync-sleep")
    assert profile["hottest"]["function"] == "wait_for_disk"
    document = speedscope(server, profile)
    assert hottest_leaf(document) == "wait_for_disk"
    assert self_time(document)["wait_for_disk"] >= 0.2
    names = [f["name"] for f in document["shared"]["frames"]]
    stack = max(
        zip(document["profiles"][0]["samples"], document["profiles"][0]["weights"], strict=True),
        key=lambda sample: sample[1],
    )[0]
    path = [names[i] for i in stack]
    # The worker thread's frames hang under the await that handed the call to the thread pool.
    assert path.index("run_in_threadpool") < path.index("sync_sleep") < path.index("wait_for_disk")


def test_awaiting_route_is_profiled_as_time_awaiting_in_the_function_that_awaits(serve: Any) -> None:
    server = start(serve)
    assert server.get("/await", params={"seconds": 0.3}).status_code == 200

    profile = only_profile(server, "/await")
    assert profile["hottest"]["function"] == "fetch_remote"
    assert profile["sampled_seconds"] >= 0.2
    document = speedscope(server, profile)
    names = [f["name"] for f in document["shared"]["frames"]]
    awaited = sum(
        weight
        for sample, weight in zip(
            document["profiles"][0]["samples"], document["profiles"][0]["weights"], strict=True
        )
        if names[sample[-1]] == "[await]" and "fetch_remote" in [names[i] for i in sample]
    )
    assert awaited >= 0.2


def test_slow_request_behind_base_http_middleware_is_profiled_down_to_its_endpoint(serve: Any) -> None:
    server = start(serve, PROFILING_TEST_BASE_HTTP="1")
    assert server.get("/await", params={"seconds": 0.3}).status_code == 200
    assert server.get("/cpu", params={"seconds": 0.3}).status_code == 200

    assert only_profile(server, "/await")["hottest"]["function"] == "fetch_remote"
    assert hottest_leaf(speedscope(server, only_profile(server, "/cpu"))) == "crunch"


def test_endpoint_task_started_late_behind_a_base_http_middleware_is_still_found(serve: Any) -> None:
    server = start(serve, PROFILING_TEST_BASE_HTTP="slow")
    assert server.get("/await", params={"seconds": 0.3}).status_code == 200

    assert only_profile(server, "/await")["hottest"]["function"] == "fetch_remote"


def test_fast_route_keeps_no_profile(serve: Any) -> None:
    server = start(serve)
    with server.client() as client:
        for _ in range(50):
            assert client.get("/fast").status_code == 200
    assert server.get("/await", params={"seconds": 0.25}).status_code == 200  # a slow one, as a control

    assert [p["route"] for p in listing(server)] == ["/await"]
    samples = server.metrics()
    assert value(samples, "fastapi_profiles_captured_total", route="/fast") == 0
    assert value(samples, "fastapi_profiles_captured_total", route="/await") == 1


def test_kept_profiles_are_counted_per_route_in_the_metric(serve: Any) -> None:
    server = start(serve)
    for _ in range(2):
        assert server.get("/await", params={"seconds": 0.21}).status_code == 200
    assert server.get("/sync-sleep", params={"seconds": 0.21}).status_code == 200

    samples = server.metrics()
    assert value(samples, "fastapi_profiles_captured_total", route="/await") == 2
    assert value(samples, "fastapi_profiles_captured_total", route="/sync-sleep") == 1


def test_store_keeps_at_most_its_count_and_evicts_the_oldest(serve: Any) -> None:
    server = start(serve, COLLECTOR_PROFILE_STORE_COUNT="2")
    sent_at = []
    for _ in range(4):
        sent_at.append(time.time())
        assert server.get("/await", params={"seconds": 0.21}).status_code == 200

    profiles = listing(server)
    assert len(profiles) == 2
    started = [datetime.fromisoformat(p["time"]).timestamp() for p in profiles]
    assert started[0] > started[1]  # newest first
    assert min(started) > sent_at[2] - 0.05  # the last two requests' (the clock's resolution aside)
    assert value(server.metrics(), "fastapi_profiles_captured_total", route="/await") == 4


def test_store_evicts_the_oldest_to_stay_within_its_byte_budget() -> None:
    store = Store(max_count=100, max_bytes=10_000)
    ctx = RequestContext("GET", perf_counter())
    ctx.route = "/reports/{report_id}"
    ids = []
    for _ in range(5):
        profile = Profile(ctx, 1.5, "threshold", [], [], nbytes=3_000)
        assert store.add(profile)
        ids.append(profile.id)

    assert store.nbytes == 9_000
    assert [p.id for p in store.newest_first()] == ids[:1:-1]
    assert not store.add(Profile(ctx, 9.0, "threshold", [], [], nbytes=10_001))  # larger than the whole store
    assert [p.id for p in store.newest_first()] == ids[:1:-1]


def test_percentile_keeps_the_slowest_request_of_a_route_below_the_threshold(serve: Any) -> None:
    server = start(serve, COLLECTOR_PROFILE_THRESHOLD="30", COLLECTOR_PROFILE_PERCENTILE="90")
    with server.client() as client:
        for _ in range(12):  # 10 are enough to know the route's 90th percentile
            assert client.get("/await", params={"seconds": 0}).status_code == 200
        assert client.get("/await", params={"seconds": 0.15}).status_code == 200

    # On a busy machine a fast one may be slow enough to be kept too: the last request is what must be.
    newest = listing(server)[0]
    assert newest["duration_seconds"] >= 0.15
    assert newest["kept_because"] == "percentile"
    assert newest["hottest"]["function"] == "fetch_remote"


def test_endpoint_without_a_token_refuses_and_shows_no_profile(serve: Any) -> None:
    server = start(serve)
    assert server.get("/cpu", params={"seconds": 0.25}).status_code == 200
    profile_id = only_profile(server, "/cpu")["id"]

    with server.client() as client:
        responses = [
            (path, client.get(path))
            for path in (PATH, PATH + "/", f"{PATH}/{profile_id}", f"{PATH}/{profile_id}.speedscope.json")
        ]
    for path, response in responses:
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == "Bearer"
        assert profile_id not in response.text and "crunch" not in response.text


def test_endpoint_with_a_wrong_token_refuses_and_shows_no_profile(serve: Any) -> None:
    server = start(serve)
    assert server.get("/cpu", params={"seconds": 0.25}).status_code == 200
    profile_id = only_profile(server, "/cpu")["id"]

    attempts: list[dict[str, Any]] = [
        {"headers": {"Authorization": "Bearer wrong"}},
        {"headers": {"Authorization": f"Bearer {TOKEN[:-1]}"}},
        {"headers": {"Authorization": f"Bearer {TOKEN}x"}},
        {"headers": {"Authorization": f"Basic {TOKEN}"}},
        {"params": {"token": "wrong"}},
        {"params": {"token": ""}},
    ]
    with server.client() as client:
        for attempt in attempts:
            for path in (PATH, f"{PATH}/{profile_id}", f"{PATH}/{profile_id}.speedscope.json"):
                response = client.get(path, **attempt)
                assert response.status_code == 401, (path, attempt)
                assert profile_id not in response.text and "crunch" not in response.text


def test_endpoint_with_the_token_serves_the_list_html_and_speedscope(serve: Any) -> None:
    server = start(serve)
    assert server.get("/cpu", params={"seconds": 0.25}).status_code == 200

    by_header = listing(server)
    by_query = server.get(PATH, params={"token": TOKEN}).json()["profiles"]
    assert [p["id"] for p in by_header] == [p["id"] for p in by_query]
    profile = only_profile(server, "/cpu")
    assert profile["html"] == f"{PATH}/{profile['id']}"

    page = server.get(profile["html"], headers=AUTH)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-store"
    assert "pyinstrumentHTMLRenderer" in page.text and "crunch" in page.text

    document = speedscope(server, profile)
    assert "crunch" in stack_names(document)
    assert server.get(f"{PATH}/0000000000000000", headers=AUTH).status_code == 404
    assert server.get(f"{PATH}x", headers=AUTH).status_code == 404
    with server.client() as client:
        assert client.post(PATH, headers=AUTH).status_code == 405


def test_endpoint_is_off_by_default_while_profiles_are_still_kept(serve: Any) -> None:
    server = start(serve, unset=("COLLECTOR_PROFILE_ENDPOINT", "COLLECTOR_PROFILE_TOKEN"))
    assert server.get("/cpu", params={"seconds": 0.25}).status_code == 200

    response = server.get(PATH, headers=AUTH)
    assert response.status_code == 404
    assert "crunch" not in response.text
    assert value(server.metrics(), "fastapi_profiles_captured_total", route="/cpu") == 1


def test_profile_id_is_written_on_the_request_span(serve: Any) -> None:
    server = start(serve, COLLECTOR_TRACING="on", PROFILING_TEST_SPANS="1")
    assert server.get("/cpu", params={"seconds": 0.25}).status_code == 200
    profile_id = only_profile(server, "/cpu")["id"]

    spans = server.get("/test/spans").json()
    marked = [s for s in spans if s["attributes"].get("collector.profile_id") == profile_id]
    assert len(marked) == 1
    assert marked[0]["attributes"]["collector.route"] == "/cpu"


def test_profiling_is_off_by_default_and_keeps_nothing(serve: Any) -> None:
    server = start(serve, unset=("COLLECTOR_PROFILE",))
    assert server.get("/cpu", params={"seconds": 0.25}).status_code == 200

    assert listing(server) == []
    assert value(server.metrics(), "fastapi_profiles_captured_total") == 0


def test_on_python_3_11_profiling_is_off_unless_asked_for_by_name(serve: Any) -> None:
    """Sampling other threads' stacks can crash CPython 3.11: there, COLLECTOR_PROFILE alone keeps nothing."""
    server = start(serve, unset=("COLLECTOR_PROFILE_ON_PYTHON311",))
    assert server.get("/cpu", params={"seconds": 0.25}).status_code == 200
    log = server.output()
    if sys.version_info < (3, 12):
        assert listing(server) == []
        assert value(server.metrics(), "fastapi_profiles_captured_total") == 0
        assert log.count("collector: profiling is off on Python 3.11") == 1, log
        assert "COLLECTOR_PROFILE_ON_PYTHON311=true" in log
    else:
        only_profile(server, "/cpu")
        assert "profiling is off" not in log


def test_a_token_that_is_not_ascii_is_refused_not_an_error(serve: Any) -> None:
    server = start(serve)
    with server.client() as client:
        for token in ("€", "é" * 30, TOKEN + "€", "\x00"):
            response = client.get(PATH, params={"token": token})
            assert response.status_code == 401, (token, response.text)
            assert response.json() == {"detail": "a valid profile token is required"}
    assert "Traceback" not in server.output()


def test_the_bearer_header_is_preferred_to_the_query_token(serve: Any) -> None:
    server = start(serve)
    assert server.get(PATH, headers=AUTH, params={"token": "wrong"}).status_code == 200
    assert (
        server.get(PATH, headers={"Authorization": "Bearer wrong"}, params={"token": TOKEN}).status_code
        == 401
    )


def test_a_dead_sampling_thread_is_counted_once_and_restarted(serve: Any) -> None:
    server = start(serve, app="tests.apps.loop:app")
    with server.client() as client:
        assert client.post("/test/kill/profiler").json() == {"killed": 1}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and errors(server, "profiler") == 0:
            time.sleep(0.05)
        assert client.get("/test/threads/profiler").json() == {"alive": 1}
        assert client.get("/blocking", params={"seconds": 0.4}).status_code == 200

    assert only_profile(server, "/blocking")["hottest"]["function"] == "blocking_view"
    assert errors(server, "profiler") == 1
    assert server.output().count("fault in profiler") == 1


def errors(server: Server, component: str) -> float:
    return value(server.metrics(), "fastapi_collector_errors_total", component=component)


def test_undoing_the_profiler_restores_run_sync_and_stops_its_thread() -> None:
    import threading

    import anyio.to_thread
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    import collector
    from collector import _patches
    from collector import _routes as routes

    app = FastAPI()
    collector.instrument(app, profile=True, profile_on_python311=True)
    original = (
        anyio.to_thread.run_sync
    )  # as the rest of the collector left it: the profiler starts on the loop
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 200
        assert anyio.to_thread.run_sync is not original
        assert routes.track_tasks
        assert {p.component for p in _patches.active("profiling")} == {"profiling"}
        _patches.undo("profiling")
        assert anyio.to_thread.run_sync is original
        assert not routes.track_tasks
        assert [h.__module__ for h in routes.on_route_exit if h.__module__ == "collector._profiling"] == []
        assert not [t for t in threading.enumerate() if t.name == "collector-profiler" and t.is_alive()]
