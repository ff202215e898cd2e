"""Static files served by the app, counted per mount as bytes actually sent, on a real uvicorn server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.responses import FileResponse
from starlette.staticfiles import NotModifiedResponse

import collector
from tests.conftest import Server, value

APP = "tests.apps.static_app:app"
RESPONSES = "fastapi_static_responses_total"
BYTES = "fastapi_static_bytes_total"
# Sizes around FileResponse's 64 KiB chunk, so one file goes out in several body messages.
FILES = {"a.txt": 10, "b.css": 1_000, "c.js": 150_000}


@pytest.fixture
def static_server(serve: Any, tmp_path: Path) -> Server:
    directory = tmp_path / "files"
    directory.mkdir()
    for name, size in FILES.items():
        (directory / name).write_bytes(bytes(i % 251 for i in range(size)))
    server: Server = serve(APP, env={"STATIC_DIR": str(directory)})
    return server


def test_static_mount_bytes_equal_the_bytes_of_the_files_fetched(static_server: Server) -> None:
    with static_server.client() as client:
        for name, size in FILES.items():
            assert len(client.get(f"/static/{name}").content) == size
        assert client.get("/static/missing.png").status_code == 404
        assert len(client.get("/static/c.js").content) == FILES["c.js"]
    metrics = static_server.metrics()
    assert value(metrics, BYTES, mount="/static") == sum(FILES.values()) + FILES["c.js"]
    assert value(metrics, RESPONSES, mount="/static") == len(FILES) + 1  # the 404 served no file
    assert value(metrics, BYTES) == value(metrics, BYTES, mount="/static")


def test_range_head_and_not_modified_count_only_the_bytes_sent(static_server: Server) -> None:
    with static_server.client() as client:
        ranged = client.get("/static/c.js", headers={"range": "bytes=100-1099"})
        assert ranged.status_code == 206 and len(ranged.content) == 1000
        head = client.head("/static/c.js")
        assert head.status_code == 200 and head.content == b""
        etag = head.headers["etag"]
        assert client.get("/static/c.js", headers={"if-none-match": etag}).status_code == 304
    metrics = static_server.metrics()
    assert value(metrics, RESPONSES, mount="/static") == 3
    assert value(metrics, BYTES, mount="/static") == 1000


def test_nested_mounts_and_endpoint_file_responses_have_their_own_labels(static_server: Server) -> None:
    with static_server.client() as client:
        assert len(client.get("/assets/img/b.css").content) == FILES["b.css"]
        assert len(client.get("/download/a.txt").content) == FILES["a.txt"]
        assert len(client.get("/download/c.js").content) == FILES["c.js"]
    metrics = static_server.metrics()
    assert value(metrics, BYTES, mount="/assets/img") == FILES["b.css"]
    assert value(metrics, RESPONSES, mount="/download/{name}") == 2
    assert value(metrics, BYTES, mount="/download/{name}") == FILES["a.txt"] + FILES["c.js"]
    assert value(metrics, RESPONSES, mount="/static") == 0


def test_hooks_are_installed_once_and_removed_by_uninstrument() -> None:
    file_call = FileResponse.__call__
    hooked_before = hasattr(file_call, "__wrapped__")
    app = FastAPI()
    collector.instrument(app)
    collector.instrument(app)
    wrapped = FileResponse.__call__
    assert wrapped.__wrapped__ is (file_call.__wrapped__ if hooked_before else file_call)  # type: ignore[attr-defined]
    assert "__call__" in vars(NotModifiedResponse)
    collector.uninstrument(app)
    if not hooked_before:  # another app of this process may keep the hooks on
        assert FileResponse.__call__ is file_call
        assert "__call__" not in vars(NotModifiedResponse)


def test_frontend_files_are_counted_under_the_frontend_path(serve: Any, tmp_path: Path) -> None:
    from tests.test_routes import ADMIN, PAGES, write_frontends

    server = serve("tests.apps.frontend_app:app", env={"FRONTEND_DIR": str(write_frontends(tmp_path))})
    with server.client() as client:
        assert client.get("/assets/app.js").status_code == 200
        assert client.get("/", headers={"accept": "text/html"}).status_code == 200
        assert client.get("/admin/admin.js").status_code == 200
        assert client.get("/api/items/1").status_code == 200
    metrics = server.metrics()
    assert value(metrics, RESPONSES, mount="/") == 2
    assert value(metrics, BYTES, mount="/") == len(PAGES["assets/app.js"]) + len(PAGES["index.html"])
    assert value(metrics, RESPONSES, mount="/admin") == 1
    assert value(metrics, BYTES, mount="/admin") == len(ADMIN["admin.js"])
    assert value(metrics, RESPONSES) == 3


def test_static_hooks_are_undone_exactly_by_the_ledger() -> None:
    from collector import _patches
    from collector import _static as static

    _patches.undo(static.COMPONENT)  # start from the classes' own methods, whatever ran before
    file_call = vars(FileResponse)["__call__"]
    had_own = "__call__" in vars(NotModifiedResponse)
    static.install()
    try:
        assert vars(FileResponse)["__call__"] is not file_call
        assert "__call__" in vars(NotModifiedResponse)
    finally:
        _patches.undo(static.COMPONENT)
    assert vars(FileResponse)["__call__"] is file_call
    assert ("__call__" in vars(NotModifiedResponse)) is had_own
    static.uninstall()  # the install above counted one user
