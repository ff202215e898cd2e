"""Settings from keyword arguments and COLLECTOR_* variables; bad values fail at start-up, clearly."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from fastapi import FastAPI

import collector
from collector import _settings as settings
from collector._settings import ConfigError, load
from tests.conftest import ROOT, free_port


def test_keyword_arguments_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLLECTOR_STALL_THRESHOLD", "0.25")
    assert load().stall_threshold == 0.25
    assert load(stall_threshold=0.5).stall_threshold == 0.5


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"COLLECTOR_STALL_THRESHOLD": "abc"}, "COLLECTOR_STALL_THRESHOLD"),
        ({"COLLECTOR_METRICS_PORT": "70000"}, "COLLECTOR_METRICS_PORT"),
        ({"COLLECTOR_TRACING": "sometimes"}, "COLLECTOR_TRACING"),
        ({"COLLECTOR_PROFILE_ENDPOINT": "true"}, "profile_token"),
        ({"COLLECTOR_HEARTBEAT_INTERVAL": "0.000001"}, "COLLECTOR_HEARTBEAT_INTERVAL"),
        ({"COLLECTOR_PROFILE_PATH": "/"}, "COLLECTOR_PROFILE_PATH"),
    ],
)
def test_a_bad_variable_stops_with_one_line(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], needle: str
) -> None:
    for key, val in env.items():
        monkeypatch.setenv(key, val)
    with pytest.raises(SystemExit) as stop:
        load()
    message = str(stop.value.code)
    assert needle in message
    assert "\n" not in message and message.startswith("collector: invalid settings: ")


@pytest.mark.parametrize(
    ("setting", "bad", "needle"),
    [
        ("metrics_token", "short", "at least 16"),
        ("profile_token", "", "at least 16"),
        ("metrics_token", " " * 20, "without spaces"),
        ("heartbeat_interval", 0.000001, "greater than or equal to 0.001"),
        ("profile_path", "/", "must be a path like"),
        ("metrics_path", "/metrics/", "must be a path like"),
        ("profile_path", "/metrics", "overlap"),
        ("profile_path", "/metrics/profiles", "overlap"),
    ],
)
def test_a_bad_keyword_raises_config_error(setting: str, bad: Any, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load(**{setting: bad})


def test_a_bad_token_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLLECTOR_METRICS_TOKEN", "hunter2")
    with pytest.raises(SystemExit) as stop:
        load()
    assert "hunter2" not in str(stop.value.code)
    assert "COLLECTOR_METRICS_TOKEN" in str(stop.value.code)


def test_a_misspelt_variable_is_named_with_the_closest_setting(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("COLLECTOR_STALL_TRESHOLD", "0.2")
    monkeypatch.setattr(settings, "_warned_unknown", set())
    load()
    load()
    lines = [r.getMessage() for r in caplog.records if "COLLECTOR_STALL_TRESHOLD" in r.getMessage()]
    assert lines == [
        "collector: not a setting, ignored: "
        "COLLECTOR_STALL_TRESHOLD (did you mean COLLECTOR_STALL_THRESHOLD?)"
    ]


def test_a_bad_variable_met_first_by_instrument_engine_stops_with_one_line() -> None:
    code = "import sqlalchemy, collector; collector.instrument_engine(sqlalchemy.create_engine('sqlite://'))"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLLECTOR_SLOW_QUERY_THRESHOLD": "-1"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "collector: invalid settings: slow_query_threshold (COLLECTOR_SLOW_QUERY_THRESHOLD) = '-1': "
        "Input should be greater than 0"
    ]


def test_an_unknown_keyword_is_rejected() -> None:
    with pytest.raises(ConfigError, match="stall_treshold"):
        collector.instrument(FastAPI(), stall_treshold=0.1)


def test_a_server_with_a_bad_setting_stops_at_start_up_with_the_reason() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLLECTOR_STALL_THRESHOLD": "-1"}
    cmd = [sys.executable, "-m", "uvicorn", "tests.apps.core:app", "--port", str(free_port())]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode != 0
    assert (
        "stall_threshold (COLLECTOR_STALL_THRESHOLD) = '-1': Input should be greater than 0" in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_instrumenting_twice_changes_nothing(serve: Any) -> None:
    app = FastAPI()
    first = collector.instrument(app)
    second = collector.instrument(app)
    assert first is second
    stack = app.build_middleware_stack()
    assert type(stack).__name__ == "CollectorMiddleware"
    assert type(stack.app).__name__ != "CollectorMiddleware"
    collector.uninstrument(app)


def test_disabled_collector_leaves_the_app_alone() -> None:
    app = FastAPI()
    assert collector.instrument(app, enabled=False) is None
    assert type(app.build_middleware_stack()).__name__ != "CollectorMiddleware"
