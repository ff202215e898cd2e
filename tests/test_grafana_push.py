"""`collector grafana push` against a server speaking Grafana's health, folder, dashboard and datasource API.

The server follows Grafana's HTTP API documentation: ``GET /api/health`` (no auth), ``GET
/api/folders/:uid``, ``POST /api/folders``, ``GET /api/dashboards/uid/:uid`` (``{dashboard, meta}``),
``POST /api/dashboards/db`` (409 without overwrite when it exists), ``GET /api/datasources/uid/:uid``;
401 without a valid bearer token, 403 on writes for a viewer's token. It records every request.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from collector import _dashboards, cli
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
EDITOR, VIEWER = "editor-token", "viewer-token"


@dataclass
class FakeGrafana:
    version: str = "11.3.1"
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    datasources: dict[str, dict[str, Any]] = field(default_factory=dict)
    received: list[tuple[str, str, Any]] = field(default_factory=list)

    def handle(self, method: str, path: str, token: str | None, body: Any) -> tuple[int, Any]:
        self.received.append((method, path, body))
        if path == "/api/health":
            return 200, {"commit": "abc123", "database": "ok", "version": self.version}
        if token not in (EDITOR, VIEWER):
            return 401, {"message": "Unauthorized"}
        if method == "POST" and token == VIEWER:
            return 403, {"message": "You'll need additional permissions to perform this action."}
        parts = path.strip("/").split("/")
        if method == "GET" and parts[:2] == ["api", "folders"] and len(parts) == 3:
            folder = self.folders.get(parts[2])
            return (200, folder) if folder else (404, {"message": "folder not found"})
        if method == "POST" and path == "/api/folders":
            if body["uid"] in self.folders:
                return 409, {"message": "a folder with the same uid already exists"}
            self.folders[body["uid"]] = {
                "id": len(self.folders) + 1,
                "uid": body["uid"],
                "title": body["title"],
            }
            return 200, self.folders[body["uid"]]
        if method == "GET" and parts[:3] == ["api", "dashboards", "uid"]:
            stored = self.dashboards.get(parts[3])
            return (200, stored) if stored else (404, {"message": "Dashboard not found"})
        if method == "POST" and path == "/api/dashboards/db":
            dashboard = body["dashboard"]
            previous = self.dashboards.get(dashboard["uid"])
            if previous and not body.get("overwrite"):
                return 412, {
                    "message": "The dashboard has been changed by someone else",
                    "status": "version-mismatch",
                }
            if body.get("folderUid") not in self.folders:
                return 400, {"message": "folder not found"}
            version = previous["dashboard"]["version"] + 1 if previous else 1
            saved = {**dashboard, "id": 7, "version": version}
            self.dashboards[dashboard["uid"]] = {"dashboard": saved, "meta": {"folderUid": body["folderUid"]}}
            return 200, {"id": 7, "uid": dashboard["uid"], "status": "success", "version": version}
        if method == "GET" and parts[:3] == ["api", "datasources", "uid"]:
            source = self.datasources.get(parts[3])
            return (200, source) if source else (404, {"message": "Data source not found"})
        return 404, {"message": "Not found"}

    def writes(self) -> list[tuple[str, str, Any]]:
        return [r for r in self.received if r[0] != "GET"]


@pytest.fixture
def grafana() -> Iterator[tuple[str, FakeGrafana]]:
    state = FakeGrafana(
        datasources={_dashboards.PROMETHEUS_UID: {"uid": _dashboards.PROMETHEUS_UID, "type": "prometheus"}}
    )

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            auth = self.headers.get("Authorization", "")
            token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
            status, payload = state.handle(self.command, self.path.split("?")[0], token, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _serve

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def push(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run the command in this process (the machine is shared; a subprocess costs seconds)."""

    def run(*args: str) -> Result:
        code = cli.main(["grafana", "push", *args])
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


def one_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_push_creates_the_folder_and_uploads_every_dashboard_with_overwrite(
    push: Callable[..., Result],
    grafana: tuple[str, FakeGrafana],
) -> None:
    url, state = grafana
    result = push("--url", url, "--token", EDITOR, "--folder", "FastAPI tips")
    assert result.returncode == 0, result.stderr
    committed = _dashboards.load(ROOT / _dashboards.DIRECTORY)
    assert state.folders == {"fastapi-tips": {"id": 1, "uid": "fastapi-tips", "title": "FastAPI tips"}}
    posts = [body for method, path, body in state.writes() if path == "/api/dashboards/db"]
    assert sorted(p["dashboard"]["uid"] for p in posts) == sorted(d["uid"] for d in committed)
    assert all(p["overwrite"] is True and p["folderUid"] == "fastapi-tips" for p in posts)
    by_uid = {p["dashboard"]["uid"]: p["dashboard"] for p in posts}
    assert all({**by_uid[d["uid"]], "id": d.get("id")} == {**d, "id": d.get("id")} for d in committed)
    assert "5 of 5 dashboards uploaded" in result.stdout and result.stderr == ""


def test_a_second_push_changes_nothing(push: Callable[..., Result], grafana: tuple[str, FakeGrafana]) -> None:
    url, state = grafana
    assert push("--url", url, "--token", EDITOR).returncode == 0
    writes = len(state.writes())
    second = push("--url", url, "--token", EDITOR)
    assert second.returncode == 0, second.stderr
    assert len(state.writes()) == writes
    assert "0 of 5 dashboards uploaded, all already up to date" in second.stdout


def test_a_dashboard_changed_in_grafana_is_overwritten_and_only_it(
    push: Callable[..., Result], grafana: tuple[str, FakeGrafana]
) -> None:
    url, state = grafana
    assert push("--url", url, "--token", EDITOR).returncode == 0
    state.dashboards["fastapi-slo"]["dashboard"]["title"] = "edited by hand"
    state.received.clear()
    result = push("--url", url, "--token", EDITOR)
    assert result.returncode == 0
    assert [body["dashboard"]["uid"] for _, _, body in state.writes()] == ["fastapi-slo"]
    assert state.dashboards["fastapi-slo"]["dashboard"]["title"] == "SLOs"


def test_a_missing_prometheus_datasource_is_named_with_what_to_do(
    push: Callable[..., Result], grafana: tuple[str, FakeGrafana]
) -> None:
    url, state = grafana
    state.datasources.clear()
    result = push("--url", url, "--token", EDITOR)
    assert result.returncode == 0
    line = one_line(result)
    assert f"uid {_dashboards.PROMETHEUS_UID}) does not exist" in line
    assert "grafana/provisioning/datasources/datasources.yml" in line


def test_a_wrong_token_is_one_line_and_exit_1(
    push: Callable[..., Result], grafana: tuple[str, FakeGrafana]
) -> None:
    url, state = grafana
    result = push("--url", url, "--token", "wrong")
    assert result.returncode == 1
    assert "refused the credentials (401)" in one_line(result)
    assert state.writes() == []


def test_a_viewer_token_is_one_line_naming_the_role_needed(
    push: Callable[..., Result], grafana: tuple[str, FakeGrafana]
) -> None:
    url, state = grafana
    result = push("--url", url, "--token", VIEWER)
    assert result.returncode == 1
    line = one_line(result)
    assert "(403)" in line and "Editor role" in line
    assert state.folders == {} and state.dashboards == {}


def test_a_grafana_older_than_the_dashboards_need_is_refused(
    push: Callable[..., Result], grafana: tuple[str, FakeGrafana]
) -> None:
    url, state = grafana
    state.version = "9.5.2"
    result = push("--url", url, "--token", EDITOR)
    assert result.returncode == 1
    assert one_line(result) == (
        f"collector grafana: Grafana 9.5.2 at {url} is too old: the dashboards need Grafana 10.0 or newer"
    )
    assert [path for _, path, _ in state.received] == ["/api/health"]


def test_an_unreachable_grafana_is_one_line_and_exit_1(push: Callable[..., Result]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = push("--url", url)
    assert result.returncode == 1
    assert one_line(result) == f"collector grafana: cannot reach Grafana at {url}: Connection refused"


def test_unreadable_dashboards_exit_2(
    push: Callable[..., Result], tmp_path: Path, grafana: tuple[str, FakeGrafana]
) -> None:
    url, state = grafana
    result = push("--url", url, "--token", EDITOR, "--dashboards", str(tmp_path / "missing"))
    assert result.returncode == 2
    assert "cannot read dashboards" in one_line(result)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.json").write_text("{not json")
    result = push("--url", url, "--token", EDITOR, "--dashboards", str(broken))
    assert result.returncode == 2 and "cannot read dashboards" in one_line(result)
    assert state.received == []


def test_the_installed_command_prints_one_line_without_a_traceback() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "collector", "grafana", "push", "--url", url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"collector grafana: cannot reach Grafana at {url}: Connection refused"
    ]
