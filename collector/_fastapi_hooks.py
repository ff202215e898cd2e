"""FastAPI's own work on a request, timed where FastAPI does it (tips 2 and 3).

``fastapi.routing`` looks ``solve_dependencies`` and ``serialize_response`` up as module
globals at call time, and ``solve_dependencies`` looks up ``request_body_to_args`` the
same way; the hooks replace those globals. Per timed request (on average one in
``round(1 / internals_sample_ratio)``, at random gaps, decided by the middleware):

- request validation: time inside ``request_body_to_args``, the body's validation (path,
  query, header and cookie parameters are validated in ``request_params_to_args``, called
  four times per dependant for a few microseconds; they are left in the dependency time
  rather than paying a wrapper on every call);
- dependencies: time inside ``solve_dependencies`` minus the body validation inside it;
- response validation: time inside ``serialize_response`` minus the serializer it calls;
- serialization: the response model's ``serialize``/``serialize_json``, or
  ``jsonable_encoder`` when there is no response model, plus the ``render`` of
  ``JSONResponse``, ``ORJSONResponse`` and ``UJSONResponse`` (subclasses inherit it;
  a subclass with its own ``render`` is not timed).

The three module functions are swapped for their wrappers only while a timed request is in
flight: the middleware calls ``timed_begin`` and ``timed_end`` around each one, so most
requests call FastAPI's own functions with no wrapper in between (an untimed request that
overlaps a timed one passes through the wrappers). Swapping a module global's value leaves
the interpreter's caches of that module valid; setting an attribute on a class would not
(every lookup through the class and its subclasses misses until respecialised), so the
response classes' ``render`` stays wrapped from ``install`` on, and the response field's
serializers are wrapped on the field instance, for the span of a timed ``serialize_response``.

Times add up in the request's context and are observed once, when the route finishes;
a phase that did not run for a request is not observed. The body's JSON parsing, done by
FastAPI before ``solve_dependencies``, is in none of them. Response size is counted by the
middleware as the body leaves the app.
"""

from __future__ import annotations

import functools
import inspect
import re
import threading
from collections.abc import Callable
from time import perf_counter
from typing import Any

from collector import _patches
from collector import _routes as routes
from collector._context import RequestContext, current
from collector._updates import route_observer
from collector.metrics import (
    DEPENDENCY_DURATION,
    SERIALIZATION_DURATION,
    VALIDATION_DURATION,
)

# FastAPI versions whose internals these hooks were checked against (0.115 and 0.165 are tested).
SUPPORTED = ((0, 115), (0, 200))

COMPONENT = "fastapi_hooks"
# (module, name, FastAPI's function, wrapper): set only while a timed request is in flight.
_swaps: list[tuple[Any, str, Any, Any]] = []
_users = 0
_timed_in_flight = 0
_lock = threading.Lock()

_dependency: dict[str, Callable[[float], None]] = {}
_validation_request: dict[str, Callable[[float], None]] = {}
_validation_response: dict[str, Callable[[float], None]] = {}
_serialization: dict[str, Callable[[float], None]] = {}


def _observe(ctx: RequestContext) -> None:
    """Runs when the route finishes: one observation per phase that ran."""
    if not ctx.timed:
        return
    route = ctx.route_label
    if ctx.dependency_seconds > 0.0:
        route_observer(_dependency, DEPENDENCY_DURATION, route)(ctx.dependency_seconds)
    if ctx.validation_request_seconds > 0.0:
        route_observer(_validation_request, VALIDATION_DURATION, route, "request")(
            ctx.validation_request_seconds
        )
    if ctx.validation_response_seconds > 0.0:
        route_observer(_validation_response, VALIDATION_DURATION, route, "response")(
            ctx.validation_response_seconds
        )
    if ctx.serialization_seconds > 0.0:
        route_observer(_serialization, SERIALIZATION_DURATION, route)(ctx.serialization_seconds)


# Timing wrappers. The async ones are plain functions that hand back the original's
# coroutine for untimed requests: no extra coroutine frame on most requests.


def _when_timed(original: Callable[..., Any], timed: Callable[..., Any]) -> Callable[..., Any]:
    """Call ``timed(ctx, args, kwargs)`` on timed requests; otherwise hand back ``original``'s coroutine."""

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = current.get()
        if ctx is None or not ctx.timed:
            return original(*args, **kwargs)
        return timed(ctx, args, kwargs)

    return wrapper


def _solve_dependencies(original: Callable[..., Any]) -> Callable[..., Any]:
    async def timed(ctx: RequestContext, args: Any, kwargs: Any) -> Any:
        validated = ctx.validation_request_seconds
        start = perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            elapsed = perf_counter() - start
            ctx.dependency_seconds += elapsed - (ctx.validation_request_seconds - validated)

    return _when_timed(original, timed)


def _request_body_to_args(original: Callable[..., Any]) -> Callable[..., Any]:
    async def timed(ctx: RequestContext, args: Any, kwargs: Any) -> Any:
        start = perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            ctx.validation_request_seconds += perf_counter() - start

    return _when_timed(original, timed)


def _serialize_response(original: Callable[..., Any]) -> Callable[..., Any]:
    async def timed(ctx: RequestContext, args: Any, kwargs: Any) -> Any:
        field = kwargs.get("field")
        hooked = field is not None and _hook_field(field)
        serialized = ctx.serialization_seconds
        start = perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            elapsed = perf_counter() - start
            if hooked:
                _unhook_field(field)
            if field is None:  # no response model: all of it is jsonable_encoder
                ctx.serialization_seconds = serialized + elapsed
            else:  # the model's serializer added its own time to serialization_seconds
                ctx.validation_response_seconds += elapsed - (ctx.serialization_seconds - serialized)

    return _when_timed(original, timed)


# The response field's serializers are timed through attributes set on the field itself, for
# the span of a timed serialize_response: FastAPI reads ``field.serialize``/``serialize_json``
# from the instance there, and an instance attribute costs other requests nothing, where a
# wrapper on ``ModelField`` would cost every request a call with its keyword arguments packed.
_FIELD_SERIALIZERS = ("serialize", "serialize_json")
_field_users: dict[int, int] = {}  # id(field) -> timed serialize_response calls using it now


def _hook_field(field: Any) -> bool:
    key = id(field)
    users = _field_users.get(key, 0)
    if not users:
        try:
            for name in _FIELD_SERIALIZERS:
                method = getattr(field, name, None)
                if method is not None:
                    setattr(field, name, _serializing(method))
        except (AttributeError, TypeError):  # a field that takes no attributes: not split
            _unhook_field_attributes(field)
            return False
    _field_users[key] = users + 1
    return True


def _unhook_field(field: Any) -> None:
    key = id(field)
    users = _field_users.get(key, 0) - 1
    if users > 0:
        _field_users[key] = users
        return
    _field_users.pop(key, None)
    _unhook_field_attributes(field)


def _unhook_field_attributes(field: Any) -> None:
    attributes = getattr(field, "__dict__", None)
    if attributes is not None:
        for name in _FIELD_SERIALIZERS:
            attributes.pop(name, None)


def _serializing(original: Callable[..., Any]) -> Callable[..., Any]:
    """For a response field's bound serializers: time added to serialization (made per timed request)."""

    def serialize(*args: Any, **kwargs: Any) -> Any:
        ctx = current.get()
        if ctx is None or not ctx.timed:
            return original(*args, **kwargs)
        start = perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            ctx.serialization_seconds += perf_counter() - start

    return serialize


def _rendering(original: Callable[[Any, Any], bytes]) -> Callable[[Any, Any], bytes]:
    """For ``render`` on JSON response classes: time added to serialization, on timed requests."""

    @functools.wraps(original)
    def render(self: Any, content: Any) -> bytes:
        ctx = current.get()
        if ctx is None or not ctx.timed:
            return original(self, content)
        start = perf_counter()
        try:
            return original(self, content)
        finally:
            ctx.serialization_seconds += perf_counter() - start

    return render


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
        (dependency_utils, "request_body_to_args", _request_body_to_args),
    ]
    for cls in (
        responses.JSONResponse,
        getattr(fastapi_responses, "ORJSONResponse", None),
        getattr(fastapi_responses, "UJSONResponse", None),
    ):
        if cls is not None and "render" in vars(cls):
            parameters = list(inspect.signature(cls.render).parameters)
            if parameters != ["self", "content"]:
                raise RuntimeError(
                    f"collector: {cls.__name__}.render takes ({', '.join(parameters)}), not (self, content)"
                )
            found.append((cls, "render", _rendering))
    return found


def install() -> None:
    """Ready FastAPI's hooks for one more instrumented app; RuntimeError on an unsupported FastAPI.

    Methods on classes are wrapped here, in the patch ledger. Module functions are swapped in
    only while a timed request is in flight (``timed_begin``/``timed_end``); the ledger holds
    one entry that swaps them back and stops further swaps, so none outlives ``uninstall``.
    """
    global _users
    if not _patches.active(COMPONENT):
        targets = _targets()
        _patches.record(COMPONENT, "timed swap-in of fastapi module functions", _stop_swaps)
        for owner, name, wrap in targets:
            original = getattr(owner, name)
            wrapped = wrap(original)
            if isinstance(owner, type):
                _patches.replace(COMPONENT, owner, name, wrapped)
            else:
                _swaps.append((owner, name, original, wrapped))
        routes.register(COMPONENT, routes.on_route_exit, _observe)
    _users += 1


def uninstall() -> None:
    """Undo ``install`` once its last app is uninstrumented."""
    global _users
    _users = max(0, _users - 1)
    if not _users:
        _patches.undo(COMPONENT)


def _stop_swaps() -> None:
    """FastAPI's own module functions back, and no more swapping in, even for requests in flight."""
    global _timed_in_flight, _users
    with _lock:
        _restore()
        _swaps.clear()
        _timed_in_flight = 0
        _users = 0


def timed_begin() -> None:
    """A timed request starts: the first of those in flight swaps the module hooks in."""
    global _timed_in_flight
    with _lock:
        _timed_in_flight += 1
        if _timed_in_flight == 1:
            for owner, name, original, wrapped in _swaps:
                if getattr(owner, name) is original:
                    setattr(owner, name, wrapped)  # left alone if something else replaced it since


def timed_end() -> None:
    """A timed request ends: the last of those in flight swaps FastAPI's own functions back."""
    global _timed_in_flight
    with _lock:
        if _timed_in_flight > 0:
            _timed_in_flight -= 1
            if _timed_in_flight == 0:
                _restore()


def _restore() -> None:
    for owner, name, original, wrapped in reversed(_swaps):
        if getattr(owner, name) is wrapped:
            setattr(owner, name, original)
