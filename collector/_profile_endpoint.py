"""The profile endpoint: ``GET {profile_path}`` lists the kept profiles, ``/{id}`` renders one.

Reading profiles needs the profile token, preferably as ``Authorization: Bearer``: a
``?token=`` query parameter also works but lands in access logs. The listing also carries the N+1
statements the process has seen (``collector._n_plus_one``): SQL fingerprints, behind the same token.
Both are this process's: under gunicorn, those of the worker that answered (``pid``).
"""

from __future__ import annotations

import hmac
import json
import os
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import anyio.to_thread

from collector import _n_plus_one as n_plus_one
from collector._frames import namer
from collector._profile_render import hottest, html, speedscope
from collector._profile_store import Store
from collector._settings import Settings

SPEEDSCOPE_SUFFIX = ".speedscope.json"


def _given_token(scope: dict[str, Any]) -> bytes:
    """The bearer token of the request, else its ``token`` query parameter, as the bytes the client sent."""
    for key, value in scope.get("headers", ()):
        if key == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            if scheme.lower() == b"bearer" and credentials.strip():
                return bytes(credentials.strip())
            break
    # Latin-1 maps every byte to one character and back: no input can fail to decode or encode.
    query = parse_qs(bytes(scope.get("query_string", b"")).decode("latin-1"), encoding="latin-1")
    return query.get("token", [""])[0].encode("latin-1")


def authorized(settings: Settings, scope: dict[str, Any]) -> bool:
    expected = (settings.profile_token or "").encode()
    return bool(expected) and hmac.compare_digest(_given_token(scope), expected)


async def respond(
    scope: dict[str, Any], send: Any, status: int, body: bytes, content_type: str, *extra: tuple[bytes, bytes]
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body if scope["method"] != "HEAD" else b""})


async def error(
    scope: dict[str, Any], send: Any, status: int, detail: str, *extra: tuple[bytes, bytes]
) -> None:
    body = json.dumps({"detail": detail}).encode()
    await respond(scope, send, status, body, "application/json", *extra)


def _listing(settings: Settings, store: Store | None) -> bytes:
    profiles = []
    for profile in store.newest_first() if store is not None else []:
        if profile.hottest is None:
            profile.hottest = hottest(profile, namer())
        base = f"{settings.profile_path}/{profile.id}"
        profiles.append(
            {
                "id": profile.id,
                "method": profile.method,
                "route": profile.route,
                "status": profile.status,
                "duration_seconds": round(profile.duration, 6),
                "time": datetime.fromtimestamp(profile.started, UTC).isoformat(),
                "kept_because": profile.reason,
                "sampled_seconds": round(sum(profile.weights), 6),
                "bytes": profile.nbytes,
                "hottest": profile.hottest,
                "html": base,
                "speedscope": base + SPEEDSCOPE_SUFFIX,
            }
        )
    listing = {"pid": os.getpid(), "profiles": profiles, "n_plus_one": n_plus_one.entries()}
    return json.dumps(listing).encode()


async def serve(
    settings: Settings, store: Store | None, scope: dict[str, Any], receive: Any, send: Any
) -> None:
    """``GET {profile_path}``: the kept profiles; ``/{id}``: one as HTML; ``/{id}.speedscope.json``."""
    if not authorized(settings, scope):
        return await error(
            scope, send, 401, "a valid profile token is required", (b"www-authenticate", b"Bearer")
        )
    if scope["method"] not in ("GET", "HEAD"):
        return await error(scope, send, 405, "method not allowed", (b"allow", b"GET, HEAD"))
    rest = scope["path"][len(settings.profile_path) :]
    if rest in ("", "/"):
        body = await anyio.to_thread.run_sync(_listing, settings, store)
        return await respond(scope, send, 200, body, "application/json")
    if not rest.startswith("/"):
        return await error(scope, send, 404, "not found")
    wanted = rest[1:]
    as_speedscope = wanted.endswith(SPEEDSCOPE_SUFFIX)
    if as_speedscope:
        wanted = wanted[: -len(SPEEDSCOPE_SUFFIX)]
    profile = store.get(wanted) if store is not None else None
    if profile is None:
        return await error(scope, send, 404, "no such profile (profiles are per worker process)")
    if as_speedscope:
        body = await anyio.to_thread.run_sync(lambda: json.dumps(speedscope(profile)).encode())
        return await respond(scope, send, 200, body, "application/json")
    try:
        page = await anyio.to_thread.run_sync(html, profile, settings.profile_interval)
    except ImportError:
        detail = f"install fastapi-collector[profile] for this page; speedscope: {rest}{SPEEDSCOPE_SUFFIX}"
        return await error(scope, send, 501, detail)
    await respond(scope, send, 200, page.encode(), "text/html; charset=utf-8")
