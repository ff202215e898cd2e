"""The demo: the sample app under the load generator shows the tips it breaks."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from tests.conftest import ROOT


def test_load_generator_reports_the_broken_tips(serve: Any) -> None:
    server = serve("sample_app.main:app")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sample_app.load",
            "--url",
            server.url,
            "--seconds",
            "3",
            "--concurrency",
            "4",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "event loop stalled" in result.stdout
    assert "at sample_app/main.py:bad_item:" in result.stdout
    assert "BaseHTTPMiddleware in the stack: add_server_timing" in result.stdout
    assert "route /good/items/{item_id}" in result.stdout


def test_load_generator_refuses_a_remote_target() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sample_app.load", "--url", "http://example.com"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "only targets this machine" in result.stderr
