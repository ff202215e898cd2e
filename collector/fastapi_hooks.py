"""FastAPI's own work on a request, timed where FastAPI does it (tips 2 and 3).

``fastapi.routing`` looks ``solve_dependencies`` and ``serialize_response`` up as module
globals at call time, and ``solve_dependencies`` looks up ``request_params_to_args`` and
``request_body_to_args`` the same way; the hooks replace those globals. Per request:

- request validation: time inside ``request_params_to_args`` (path, query, header, cookie
  parameters of the route and of every dependency) and ``request_body_to_args``;
- dependencies: time inside ``solve_dependencies`` minus the request validation inside it,
  so it is the dependencies' own code (and the thread-pool wait of sync ones);
- response validation: time inside ``serialize_response`` minus the serializer it calls;
- serialization: the response model's ``serialize``/``serialize_json``, or
  ``jsonable_encoder`` when there is no response model, plus the ``render`` of
  ``JSONResponse``, ``ORJSONResponse`` and ``UJSONResponse`` (subclasses inherit it;
  a subclass with its own ``render`` is not timed).

Times add up in the request's context and are observed once, when the route finishes;
a phase that did not run for a request is not observed. The body's JSON parsing, done by
FastAPI before ``solve_dependencies``, is in none of them.

Response size is the body a ``Response`` or ``StreamingResponse`` hands to the server
(0 for HEAD), before any compressing middleware. ``FileResponse`` bodies are counted by
the static-file metrics (``collector.static``), not here.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from time import perf_counter
from typing import Any

from collector import _faults, routes
from collector.context import RequestContext, current
from collector.metrics import (
    DEPENDENCY_DURATION,
    RESPONSE_SIZE,
    SERIALIZATION_DURATION,
    VALIDATION_DURATION,
)

# FastAPI versions whose internals these hooks were checked against (0.115 and 0.165 are tested).
SUPPORTED = ((0, 115), (0, 200))

_patches: list[tuple[Any, str, Any, bool]] = []  # (owner, name, original, owner had its own)
_users = 0

_dependency: dict[str, Any] = {}
_validation_request: dict[str, Any] = {}
_validation_response: dict[str, Any] = {}
_serialization: dict[str, Any] = {}
_size: dict[str, Any] = {}


def _child(cache: dict[str, Any], metric: Any, *labels: str) -> Any:
    child = cache.get(labels[0])
    if child is None:
        child = cache[labels[0]] = metric.labels(*labels)
    return child


def _observe(ctx: RequestContext) -> None:
    """Runs when the route finishes: one observation per phase that ran."""
    route = ctx.route_label
    if ctx.dependency_seconds > 0.0:
        _child(_dependency, DEPENDENCY_DURATION, route).observe(ctx.dependency_seconds)
    if ctx.validation_request_seconds > 0.0:
        _child(_validation_request, VALIDATION_DURATION, route, "request").observe(
            ctx.validation_request_seconds
        )
    if ctx.validation_response_seconds > 0.0:
        _child(_validation_response, VALIDATION_DURATION, route, "response").observe(
            ctx.validation_response_seconds
        )
    if ctx.serialization_seconds > 0.0:
        _child(_serialization, SERIALIZATION_DURATION, route).observe(ctx.serialization_seconds)


def _observe_size(ctx: RequestContext, size: int) -> None:
    try:
        _child(_size, RESPONSE_SIZE, ctx.route_label).observe(size)
    except Exception as exc:
        _faults.record("fastapi_hooks", exc)


# Timing wrappers: outside an observed request they only forward the call.


def _solve_dependencies(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def solve_dependencies(*args: Any, **kwargs: Any) -> Any:
        ctx = current.get()
        if ctx is None:
            return await original(*args, **kwargs)
        validated = ctx.validation_request_seconds
        start = perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            elapsed = perf_counter() - start
            ctx.dependency_seconds += elapsed - (ctx.validation_request_seconds - validated)

    return solve_dependencies


def _request_params_to_args(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def request_params_to_args(fields: Any, *args: Any, **kwargs: Any) -> Any:
        ctx = current.get() if fields else None  # four calls per dependant, most with no fields
        if ctx is None:
            return original(fields, *args, **kwargs)
        start = perf_counter()
        try:
            return original(fields, *args, **kwargs)
        finally:
            ctx.validation_request_seconds += perf_counter() - start

    return request_params_to_args


def _request_body_to_args(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def request_body_to_args(*args: Any, **kwargs: Any) -> Any:
        ctx = current.get()
        if ctx is None:
            return await original(*args, **kwargs)
        start = perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            ctx.validation_request_seconds += perf_counter() - start

    return request_body_to_args


def _serialize_response(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def serialize_response(*args: Any, **kwargs: Any) -> Any:
        ctx = current.get()
        if ctx is None:
            return await original(*args, **kwargs)
        serialized = ctx.serialization_seconds
        start = perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            elapsed = perf_counter() - start
            if kwargs.get("field") is None:  # no response model: all of it is jsonable_encoder
                ctx.serialization_seconds = serialized + elapsed
            else:  # the model's serializer added its own time to serialization_seconds
                ctx.validation_response_seconds += elapsed - (ctx.serialization_seconds - serialized)

    return serialize_response


def _serializing(original: Callable[..., Any]) -> Callable[..., Any]:
    """For ``ModelField.serialize*`` and ``Response.render``: time added to serialization."""

    @functools.wraps(original)
    def serialize(self: Any, *args: Any, **kwargs: Any) -> Any:
        ctx = current.get()
        if ctx is None:
            return original(self, *args, **kwargs)
        start = perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            ctx.serialization_seconds += perf_counter() - start

    return serialize


def _response_call(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
        ctx = current.get()
        if ctx is not None and scope["type"] == "http":
            _observe_size(ctx, 0 if scope["method"] == "HEAD" else len(self.body))
        await original(self, scope, receive, send)

    return __call__


def _streaming_response_call(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
        ctx = current.get()
        if ctx is None or scope["type"] != "http":
            await original(self, scope, receive, send)
            return
        sent = 0

        async def counting_send(message: Any) -> None:
            nonlocal sent
            if message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await original(self, scope, receive, counting_send)
        finally:
            _observe_size(ctx, sent)

    return __call__


def _version(text: str) -> tuple[int, int]:
    major, minor = (int(part) for part in re.findall(r"\d+", text)[:2])
    return major, minor


def _targets() -> list[tuple[Any, str, Callable[[Callable[..., Any]], Callable[..., Any]]]]:
    """The hook points, or a RuntimeError naming what this FastAPI lacks."""
    import fastapi
    from fastapi import responses as fastapi_responses
    from fastapi import routing
    from fastapi.dependencies import utils as dependency_utils
    from starlette import responses

    low, high = SUPPORTED
    version = _version(fastapi.__version__)
    if not low <= version < high:
        raise RuntimeError(
            f"collector: FastAPI {fastapi.__version__} is not supported (supported: "
            f">={low[0]}.{low[1]},<{high[0]}.{high[1]}); its internals may have moved"
        )
    try:
        from fastapi._compat import ModelField
    except ImportError as exc:
        raise RuntimeError(
            f"collector: FastAPI {fastapi.__version__} has no fastapi._compat.ModelField"
        ) from exc
    expected: list[tuple[Any, str, str]] = [
        (routing, "solve_dependencies", "dependant"),
        (routing, "serialize_response", "field"),
        (dependency_utils, "request_params_to_args", "fields"),
        (dependency_utils, "request_body_to_args", "body_fields"),
    ]
    for module, name, parameter in expected:
        func = getattr(module, name, None)
        if func is None or parameter not in inspect.signature(func).parameters:
            raise RuntimeError(
                f"collector: FastAPI {fastapi.__version__} has no {module.__name__}.{name}"
                f"({parameter}=...); the collector cannot time it"
            )
    field = inspect.signature(routing.serialize_response).parameters["field"]
    if field.kind is not inspect.Parameter.KEYWORD_ONLY:  # the hook reads it from the keyword arguments
        raise RuntimeError(
            f"collector: FastAPI {fastapi.__version__} passes serialize_response's field by position"
        )
    if not callable(getattr(ModelField, "serialize", None)):
        raise RuntimeError(f"collector: FastAPI {fastapi.__version__} runs on Pydantic v1, not supported")

    found: list[tuple[Any, str, Callable[[Callable[..., Any]], Callable[..., Any]]]] = [
        (routing, "solve_dependencies", _solve_dependencies),
        (routing, "serialize_response", _serialize_response),
        (dependency_utils, "request_params_to_args", _request_params_to_args),
        (dependency_utils, "request_body_to_args", _request_body_to_args),
        (ModelField, "serialize", _serializing),
        (responses.Response, "__call__", _response_call),
        (responses.StreamingResponse, "__call__", _streaming_response_call),
    ]
    if "serialize_json" in vars(ModelField):
        found.append((ModelField, "serialize_json", _serializing))
    for cls in (
        responses.JSONResponse,
        getattr(fastapi_responses, "ORJSONResponse", None),
        getattr(fastapi_responses, "UJSONResponse", None),
    ):
        if cls is not None and "render" in vars(cls):
            found.append((cls, "render", _serializing))
    return found


def install() -> None:
    """Hook FastAPI's internals for one more instrumented app; RuntimeError on an unsupported FastAPI."""
    global _users
    if not _patches:
        targets = _targets()
        for owner, name, wrap in targets:
            own = name in vars(owner)
            original = getattr(owner, name)
            _patches.append((owner, name, original, own))
            setattr(owner, name, wrap(original))
        if _observe not in routes.on_route_exit:
            routes.on_route_exit.append(_observe)
    _users += 1


def uninstall() -> None:
    """Undo ``install`` once its last app is uninstrumented."""
    global _users
    _users = max(0, _users - 1)
    if _users:
        return
    while _patches:
        owner, name, original, own = _patches.pop()
        if own:
            setattr(owner, name, original)
        else:
            delattr(owner, name)
    if _observe in routes.on_route_exit:
        routes.on_route_exit.remove(_observe)
