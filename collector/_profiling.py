"""Profiles of slow requests, kept automatically (tip 10): the entry point.

``start`` profiles the requests of the running event loop, ``stop`` ends that, ``serve``
answers the profile endpoint. The parts live in private modules: the sampling thread
(``_profile_sampler``), tail sampling and the store (``_profile_store``), the renderers
(``_profile_render``) and the endpoint (``_profile_endpoint``).

What the profiler changes outside itself goes through the patch ledger under the component
``"profiling"``: ``anyio.to_thread.run_sync`` (so a sync call carries its request), its entry in
``routes.on_route_exit``, the route hook's task tracking, and its sampling thread, which
``_patches.undo("profiling")`` stops. A dead sampling thread is counted once in
``fastapi_collector_errors_total{component="profiler"}`` and restarted by ``keep_alive``,
which the event loop's heartbeat calls.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import anyio.to_thread

from collector import _patches, _profile_endpoint, _profile_sampler
from collector import _routes as routes
from collector._context import RequestContext
from collector._profile_sampler import Sampler
from collector._profile_store import Profiler
from collector._settings import Settings

COMPONENT = "profiling"

_sampler: Sampler | None = None
_profiler: Profiler | None = None


def start(settings: Settings) -> None:
    """Profile the requests of the running event loop; call on that loop. A second call adds the loop."""
    global _sampler, _profiler
    if _profiler is None:
        _profiler = Profiler(settings)
        # First, so that the span annotation (appended earlier) sees the profile id.
        routes.register(COMPONENT, routes.on_route_exit, _on_route_exit, first=True)
        _patches.replace(COMPONENT, routes, "track_tasks", True)
        _profile_sampler.next_run_sync = _patches.replace(
            COMPONENT, anyio.to_thread, "run_sync", _profile_sampler.run_sync
        )
        _patches.record(COMPONENT, "the profiler's sampling thread", _forget)
    if _sampler is None or _sampler.pid != os.getpid():
        _sampler = Sampler(settings.profile_interval)
        _sampler.start()
        _profiler.sampler = _sampler
    _sampler.loops[threading.get_ident()] = asyncio.get_running_loop()


def stop(loop: asyncio.AbstractEventLoop) -> None:
    """Stop profiling the requests of ``loop``; the sampling thread ends with the last loop."""
    global _sampler
    sampler = _sampler
    if sampler is None:
        return
    for ident, known in list(sampler.loops.items()):
        if known is loop:
            sampler.loops.pop(ident, None)
    if not sampler.loops:
        _sampler = None
        if _profiler is not None:
            _profiler.sampler = None
        sampler.stop()


def keep_alive() -> None:
    """Restart the sampling thread if it died (counted once); called by the heartbeat."""
    sampler = _sampler
    if sampler is not None:
        sampler.restart_if_dead()


async def serve(settings: Settings, scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The profile endpoint (see ``_profile_endpoint.serve``)."""
    store = _profiler.store if _profiler is not None else None
    await _profile_endpoint.serve(settings, store, scope, receive, send)


def _on_route_exit(ctx: RequestContext) -> None:
    if _profiler is not None:
        _profiler.on_route_exit(ctx)


def _forget() -> None:
    """Undo of the sampling thread: stop it, and start from nothing on the next ``start``."""
    global _sampler, _profiler
    sampler, _sampler, _profiler = _sampler, None, None
    if sampler is not None:
        sampler.stop()
