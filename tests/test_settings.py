"""Settings from keyword arguments and COLLECTOR_* variables; bad values fail at start-up, clearly."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from fastapi import FastAPI

import collector
from collector.settings import ConfigError, load
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
    ],
)
def test_a_bad_value_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], needle: str
) -> None:
    for key, val in env.items():
        monkeypatch.setenv(key, val)
    with pytest.raises(ConfigError) as error:
        load()
    assert needle in str(error.value)
    assert "Traceback" not in str(error.value)


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


def test_disabled_collector_leaves_the_app_alone() -> None:
    app = FastAPI()
    assert collector.instrument(app, enabled=False) is None
    assert type(app.build_middleware_stack()).__name__ != "CollectorMiddleware"
