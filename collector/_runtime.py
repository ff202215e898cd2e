"""What ``instrument(app)`` sets up for one app, and the per-process samplers it starts."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from collector import _exposition as exposition
from collector import _faults, _multiprocess
from collector import _routes as routes
from collector import _threadpool as threadpool
from collector._context import in_flight
from collector._event_loop import LoopMonitor
from collector._process import ProcessSampler
from collector._settings import Settings
from collector.metrics import MIDDLEWARES, ROUTE_HANDLERS, refresh

logger = logging.getLogger("collector")

# One heartbeat per event loop, however many apps are instrumented in the process.
_monitors: dict[asyncio.AbstractEventLoop, LoopMonitor] = {}
_process: ProcessSampler | None = None
_served_ports: set[int] = set()


class Page(Protocol):
    def start(self, settings: Settings) -> None: ...

    def stop(self) -> None: ...

    async def serve(self, settings: Settings, scope: Any, receive: Any, send: Any) -> None: ...


class Runtime:
    def __init__(self, app: Any, settings: Settings, tracing: bool) -> None:
        self.app = app
        self.settings = settings
        self.started = False
        self.exemplars = tracing and not _multiprocess.enabled()
        self.own_paths = {settings.metrics_path} if settings.metrics_port == 0 else set()
        self.own_prefix = settings.profile_path if settings.profile_endpoint else ""
        # Pages served by the app at their own path, added by instrument() (the tips page reads the
        # catalogue, a layer above this module): path -> the module that starts, stops and serves it.
        self.pages: dict[str, Page] = {}
        self._next_process_sample = 0.0

    def add_page(self, path: str, page: Page) -> None:
        self.pages[path] = page
        self.own_paths.add(path)

    def on_build(self) -> None:
        """Record the route and middleware inventories once the app's stack is built."""
        try:
            for method, route, kind in routes.iter_endpoints(self.app.routes):
                if route not in self.own_paths:
                    ROUTE_HANDLERS.labels(method, route, kind).set(1)
            for name, kind in routes.iter_middlewares(self.app):
                MIDDLEWARES.labels(name, kind).set(1)
                if kind == "base_http":
                    logger.warning(
                        "collector: %s is a BaseHTTPMiddleware; it costs every request (tip 8), "
                        "a pure ASGI middleware does the same for far less",
                        name,
                    )
        except Exception as exc:
            _faults.record("inventory", exc)

    def start(self) -> None:
        """Start the samplers for the running loop; called at lifespan start-up or the first request."""
        self.started = True
        global _process
        try:
            loop = asyncio.get_running_loop()
            if _process is None:
                _process = ProcessSampler()
                _process.start()
            if loop not in _monitors:
                monitor = LoopMonitor(
                    interval=self.settings.heartbeat_interval,
                    threshold=self.settings.stall_threshold,
                    max_locations=self.settings.stall_locations_max,
                    in_flight=in_flight,
                    on_beat=self._on_beat,
                    on_end=self._on_loop_end,
                )
                monitor.start()
                _monitors[loop] = monitor
            if self.settings.profile:
                from collector import _profiling as profiling

                profiling.start(self.settings)
            for page in self.pages.values():
                page.start(self.settings)
        except Exception as exc:
            _faults.record("start", exc)

    def stop(self) -> None:
        try:
            loop = asyncio.get_running_loop()
            monitor = _monitors.pop(loop, None)
            if monitor is not None:
                monitor.stop()
            if self.settings.profile:
                from collector import _profiling as profiling

                profiling.stop(loop)
            for page in self.pages.values():
                page.stop()
        except Exception as exc:
            _faults.record("stop", exc)
        self.started = False

    def _on_loop_end(self, monitor: LoopMonitor) -> None:
        """The monitor's loop stopped or closed without a lifespan shutdown: forget it.

        A next request on a new loop (a test client without ``with``) starts the samplers there.
        """
        loop = monitor.loop
        if loop is not None and _monitors.get(loop) is monitor:
            del _monitors[loop]
            if self.settings.profile:
                from collector import _profiling as profiling

                profiling.stop(loop)
        self.started = False

    def _on_beat(self, now: float) -> None:
        threadpool.sample()
        if self.settings.profile:
            from collector import _profiling as profiling

            profiling.keep_alive()
        if now >= self._next_process_sample and _process is not None:
            self._next_process_sample = now + self.settings.process_sample_interval
            _process.sample()
            if _multiprocess.enabled():  # read from files by another process: no scrape-time refresh
                refresh()

    async def lifespan(self, app: Any, scope: Any, receive: Any, send: Any) -> None:
        async def receive_wrapper() -> Any:
            message = await receive()
            kind = message.get("type")
            if kind == "lifespan.startup" and not self.started:
                self.start()
            elif kind == "lifespan.shutdown":
                self.stop()
            return message

        await app(scope, receive_wrapper, send)

    async def serve_own(self, scope: Any, receive: Any, send: Any) -> None:
        page = self.pages.get(scope["path"])
        if page is not None:
            await page.serve(self.settings, scope, receive, send)
        elif scope["path"] in self.own_paths:
            await exposition.serve(self.settings, scope, receive, send)
        else:
            from collector import _profiling as profiling

            await profiling.serve(self.settings, scope, receive, send)


def start_metrics_port(settings: Settings) -> None:
    """Serve metrics on their own port, once per process; under gunicorn the master does it."""
    port = settings.metrics_port
    if port and not _multiprocess.enabled() and port not in _served_ports:
        exposition.start_server(settings)
        _served_ports.add(port)
