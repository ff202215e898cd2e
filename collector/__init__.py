"""Runtime observability for FastAPI: which of the ten performance tips a service breaks, where, at what cost.

import collector
collector.instrument(app)
"""

from __future__ import annotations

import importlib
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collector._asyncpg import instrument_asyncpg, uninstrument_asyncpg
    from collector._cache import (
        CacheHeaderMiddleware,
        instrument_cashews,
        instrument_redis,
        record_cache,
        track_cache,
        uninstrument_cashews,
        uninstrument_redis,
    )
    from collector._database import instrument_engine, uninstrument_engine
    from collector._psycopg import instrument_psycopg, uninstrument_psycopg
    from collector._runtime import Runtime
    from collector._settings import ConfigError, Settings

# The public names load on first use: ``python:collector.gunicorn_conf`` imports this package in
# the gunicorn master, which must not load the library (nor create a metric) before it prepares
# the multiprocess directory.
_LAZY = {
    "CacheHeaderMiddleware": "collector._cache",
    "ConfigError": "collector._settings",
    "Settings": "collector._settings",
    "instrument_asyncpg": "collector._asyncpg",
    "instrument_cashews": "collector._cache",
    "instrument_engine": "collector._database",
    "instrument_psycopg": "collector._psycopg",
    "instrument_redis": "collector._cache",
    "record_cache": "collector._cache",
    "track_cache": "collector._cache",
    "uninstrument_asyncpg": "collector._asyncpg",
    "uninstrument_cashews": "collector._cache",
    "uninstrument_engine": "collector._database",
    "uninstrument_psycopg": "collector._psycopg",
    "uninstrument_redis": "collector._cache",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'collector' has no attribute {name!r}")
    found = getattr(importlib.import_module(module), name)
    globals()[name] = found
    return found


__all__ = [
    # Data-path instrumentors are re-exported here too, one line each (kept sorted for ruff).
    "CacheHeaderMiddleware",
    "ConfigError",
    "Settings",
    "instrument",
    "instrument_asyncpg",
    "instrument_cashews",
    "instrument_engine",
    "instrument_psycopg",
    "instrument_redis",
    "record_cache",
    "track_cache",
    "uninstrument",
    "uninstrument_asyncpg",
    "uninstrument_cashews",
    "uninstrument_engine",
    "uninstrument_psycopg",
    "uninstrument_redis",
]

_ATTR = "_collector_runtime"
_apps: weakref.WeakSet[Any] = weakref.WeakSet()  # instrumented and not yet uninstrumented


def instrument(app: Any, **settings: Any) -> Runtime | None:
    """Attach the collector to a FastAPI (or Starlette) app; a second call returns the first runtime.

    Settings are keyword arguments or ``COLLECTOR_*`` environment variables. A bad keyword
    raises ``ConfigError``; a bad variable stops the process with the reason, at start-up.
    """
    from collector import _cache
    from collector import _fastapi_hooks as fastapi_hooks
    from collector import _resources as resources
    from collector import _routes as routes
    from collector import _static as static
    from collector import _threadpool as threadpool
    from collector import _tracing as tracing
    from collector._asgi import CollectorMiddleware
    from collector._runtime import Runtime, start_metrics_port
    from collector._settings import load

    existing: Runtime | None = getattr(app, _ATTR, None)
    if existing is not None:
        return existing
    config = load(**settings)
    if not config.enabled:
        return None
    fastapi_hooks.install()  # first: an unsupported FastAPI fails here, before anything is attached
    resources.install()
    static.install()
    with_tracing = tracing.wanted(config)
    if with_tracing:
        tracing.setup_tracing(app, config)  # registers the span annotation in the ledger itself
    runtime = Runtime(app, config, with_tracing)
    if config.tips_page:
        from collector import _tips_page

        runtime.add_page(config.tips_path, _tips_page)
    setattr(app, _ATTR, runtime)
    _apps.add(app)
    routes.install_hooks()
    _cache.hook_spans()  # caches counted before the app was instrumented
    threadpool.install()
    start_metrics_port(config)

    build = app.build_middleware_stack

    def build_middleware_stack() -> Any:
        stack = build()
        runtime.on_build()
        return CollectorMiddleware(stack, runtime)

    app.build_middleware_stack = build_middleware_stack
    if getattr(app, "middleware_stack", None) is not None:  # the app already served: wrap what it runs
        app.middleware_stack = CollectorMiddleware(app.middleware_stack, runtime)
        runtime.on_build()
    return runtime


def uninstrument(app: Any) -> None:
    """Detach from ``app``: its next stack build no longer has the collector.

    Uninstrumenting the last instrumented app undoes every change the collector made in the
    process, newest first (its patch ledger): engines, drivers and caches instrumented on
    their own included, so the interpreter is as it was before the first ``instrument``.
    """
    from collector import _fastapi_hooks as fastapi_hooks
    from collector import _patches
    from collector import _resources as resources
    from collector import _static as static

    runtime: Runtime | None = getattr(app, _ATTR, None)
    if runtime is None:
        return
    delattr(app, _ATTR)
    _apps.discard(app)
    fastapi_hooks.uninstall()
    resources.uninstall()
    static.uninstall()
    app.__dict__.pop("build_middleware_stack", None)
    app.middleware_stack = None
    if not _apps:
        # The value-store fallback is the process's for good: undone, values would go to a bad directory.
        _patches.undo_all(keep=("multiprocess",))
