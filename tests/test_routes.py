"""Route templates found by the route hooks, background tasks timed apart, and the hooks' ledger entries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.background import BackgroundTask

from collector import _patches
from collector import _routes as routes
from collector.metrics import REFRESHERS
from tests.conftest import Server, value

DURATION = "fastapi_request_duration_seconds_count"
PAGES = {
    "index.html": b"<html>site</html>",
    "404.html": b"<html>missing</html>",
    "assets/app.js": b"x" * 5000,
}
ADMIN = {"index.html": b"<html>admin</html>", "admin.js": b"y" * 300}


def write_frontends(root: Path) -> Path:
    for folder, files in (("site", PAGES), ("admin", ADMIN)):
        for name, content in files.items():
            path = root / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    return root


@pytest.fixture
def frontend_server(serve: Any, tmp_path: Path) -> Server:
    env = {"FRONTEND_DIR": str(write_frontends(tmp_path)), "COLLECTOR_INTERNALS_SAMPLE_RATIO": "1"}
    server: Server = serve("tests.apps.frontend_app:app", env=env)
    return server


def test_frontend_routes_carry_their_own_route_label(frontend_server: Server) -> None:
    html = {"accept": "text/html"}
    with frontend_server.client() as client:
        assert client.get("/", headers=html).content == PAGES["index.html"]
        assert client.get("/assets/app.js").content == PAGES["assets/app.js"]
        assert client.get("/no/such/page", headers=html).status_code == 404  # the site's 404.html
        assert client.get("/admin/", headers=html).content == ADMIN["index.html"]
        assert client.get("/admin/admin.js").content == ADMIN["admin.js"]
        assert client.get("/api/items/1").json() == {"id": 1}
    metrics = frontend_server.metrics()
    assert value(metrics, DURATION, route="/{path}", status="200") == 2
    assert value(metrics, DURATION, route="/{path}", status="404") == 1
    assert value(metrics, DURATION, route="/admin/{path}", status="200") == 2
    assert value(metrics, DURATION, route="/api/items/{item_id}") == 1
    assert value(metrics, DURATION, route="unmatched") == 0
    for route, count in (("/{path}", 3), ("/admin/{path}", 2)):
        assert value(metrics, "fastapi_middleware_duration_seconds_count", route=route) == count
        assert value(metrics, "fastapi_response_size_bytes_count", route=route) == count
    assert value(metrics, "fastapi_response_size_bytes_sum", route="/admin/{path}") == sum(
        map(len, ADMIN.values())
    )


def test_route_hooks_are_undone_exactly_by_the_ledger() -> None:
    routes.remove_hooks()  # start from the classes' own methods, whatever ran before
    targets = [cls for cls, _ in routes._hook_targets()]
    originals = {cls: cls.__dict__["handle"] for cls in targets}
    background = vars(BackgroundTask)["__call__"]
    routes.install_hooks()
    routes.install_hooks()  # a second call changes nothing
    try:
        assert len(_patches.active(routes.COMPONENT)) == len(targets) + 2  # + background, + refresher
        assert all(cls.__dict__["handle"] is not originals[cls] for cls in targets)
        assert vars(BackgroundTask)["__call__"] is not background
        assert routes.refresh_in_progress in REFRESHERS
        assert any(cls.__name__ == "_FrontendRouteGroup" for cls in targets)
    finally:
        _patches.undo(routes.COMPONENT)
    assert all(cls.__dict__["handle"] is originals[cls] for cls in targets)
    assert vars(BackgroundTask)["__call__"] is background
    assert routes.refresh_in_progress not in REFRESHERS
    assert _patches.active(routes.COMPONENT) == []


def test_middleware_inventory_includes_mounted_sub_apps() -> None:
    from starlette.middleware.base import BaseHTTPMiddleware

    from collector._routes import iter_middlewares

    async def timing(request: Any, call_next: Any) -> Any:
        return await call_next(request)

    sub = FastAPI()
    sub.add_middleware(BaseHTTPMiddleware, dispatch=timing)
    app = FastAPI()
    app.mount("/sub", sub)
    assert ("test_middleware_inventory_includes_mounted_sub_apps.<locals>.timing", "base_http") in list(
        iter_middlewares(app)
    )
