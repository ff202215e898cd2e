"""Serving the metrics: on the app's own ``/metrics`` or on a port of their own.

A scrape never renders on the event loop, and scrapes share renderings: concurrent ones always
(at most one rendering runs at a time), later ones for ``metrics_cache_ttl`` seconds. A source
that fails (a collector that raises, a truncated worker file) is left out of the scrape and
counted in ``fastapi_collector_errors_total{component="exposition"}``; the rest is served.
"""

from __future__ import annotations

import hmac
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

from collector import _faults, _multiprocess
from collector._settings import Settings

Encoder = Callable[[Any], bytes]

# Only for benchmarks/scrape.py, to measure what a scrape cost before: rendered on the loop, never shared.
_render_on_loop = False


class _Metrics:
    """A registry-like object over metrics already collected, for prometheus_client's encoders."""

    def __init__(self, metrics: Iterable[Any]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Any]:
        return self._metrics


def _sources() -> list[list[Any]]:
    """The metrics to serve, in groups that can be left out alone when one fails."""
    path = _multiprocess.directory()
    if path is not None and _multiprocess.enabled():
        return [[metric] for metric in _multiprocess.collect(path)]
    # Private to prometheus_client: its collectors, copied under its lock as its own collect() does.
    registered = getattr(REGISTRY, "_collector_to_names", None)
    if registered is None:  # a prometheus_client without it: the whole registry as one source
        collectors: list[Any] = [REGISTRY]
    else:
        with REGISTRY._lock:
            collectors = list(registered)
    groups = []
    for collector in collectors:
        try:
            groups.append(list(collector.collect()))
        except Exception as exc:
            _faults.record("exposition", exc)
    return groups


def families() -> list[Any]:
    """Every metric family served, each source read apart (the tips page reads them without text)."""
    return [metric for group in _sources() for metric in group]


def _encode(encoder: Encoder, groups: Sequence[list[Any]]) -> bytes:
    try:
        return encoder(_Metrics(metric for group in groups for metric in group))
    except Exception as exc:  # a malformed metric: find its group, serve the others
        _faults.record("exposition", exc)
    kept = []
    for group in groups:
        try:
            encoder(_Metrics(group))
            kept.append(group)
        except Exception:
            pass
    return encoder(_Metrics(metric for group in kept for metric in group))


def render(accept: str | None) -> tuple[bytes, str]:
    """The exposition of this process, or of every live worker in multi-process mode."""
    encoder, content_type = choose_encoder(accept or "")
    return _encode(encoder, _sources()), content_type


class _Shared:
    """The latest rendering per content type; one rendering at a time, shared by the scrapes that waited."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bodies: dict[str, tuple[float, bytes]] = {}

    def fresh(self, content_type: str, arrived: float, ttl: float) -> bytes | None:
        entry = self._bodies.get(content_type)
        # Finished after this scrape arrived: it waited for that rendering, which it may share.
        if entry is not None and (entry[0] >= arrived or arrived - entry[0] < ttl):
            return entry[1]
        return None

    def get(self, accept: str | None, arrived: float, ttl: float) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept or "")
        with self._lock:
            body = self.fresh(content_type, arrived, ttl)
            if body is None:
                body = _encode(encoder, _sources())
                self._bodies[content_type] = (time.monotonic(), body)
            return body, content_type


_shared = _Shared()
# One thread renders per event loop; waiting scrapes queue here, not on the app's thread-pool tokens.
_limiter: anyio.lowlevel.RunVar[anyio.CapacityLimiter] = anyio.lowlevel.RunVar("collector_exposition")


def _loop_limiter() -> anyio.CapacityLimiter:
    try:
        return _limiter.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(1)
        _limiter.set(limiter)
        return limiter


def authorized(settings: Settings, authorization: bytes | None) -> bool:
    """A bearer token, compared in constant time; no token set lets every scrape in."""
    if settings.metrics_token is None:
        return True
    scheme, _, credentials = (authorization or b"").partition(b" ")
    expected = settings.metrics_token.encode()
    return hmac.compare_digest(credentials.strip(), expected) and scheme.lower() == b"bearer"


_UNAUTHORIZED = b"a bearer token is needed: Authorization: Bearer <COLLECTOR_METRICS_TOKEN>\n"


async def serve(settings: Settings, scope: dict[str, Any], receive: Any, send: Any) -> None:
    arrived = time.monotonic()
    accept = authorization = None
    for key, value in scope.get("headers", ()):
        if key == b"accept":
            accept = value.decode("latin-1")
        elif key == b"authorization":
            authorization = value
    if not authorized(settings, authorization):
        status, headers = 401, [(b"www-authenticate", b'Bearer realm="metrics"')]
        body, content_type = _UNAUTHORIZED, "text/plain; charset=utf-8"
    else:
        status, headers = 200, []
        if _render_on_loop:
            body, content_type = render(accept)
        else:
            ttl = settings.metrics_cache_ttl
            content_type = choose_encoder(accept or "")[1]
            cached = _shared.fresh(content_type, arrived, ttl)
            if cached is not None:
                body = cached
            else:
                body, content_type = await anyio.to_thread.run_sync(
                    _shared.get, accept, arrived, ttl, limiter=_loop_limiter()
                )
    headers += [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body if scope["method"] != "HEAD" else b""})


def _handler(settings: Settings) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer(head=False)

        def do_HEAD(self) -> None:
            self._answer(head=True)

        def _answer(self, head: bool) -> None:
            arrived = time.monotonic()
            authorization = self.headers.get("Authorization")
            if not authorized(settings, authorization.encode("latin-1") if authorization else None):
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Bearer realm="metrics"')
                body, content_type = _UNAUTHORIZED, "text/plain; charset=utf-8"
            else:
                ttl = settings.metrics_cache_ttl
                body, content_type = _shared.get(self.headers.get("Accept"), arrived, ttl)
                self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """No access log: a scrape every few seconds would fill it."""

    return Handler


def start_server(settings: Settings) -> None:
    """Metrics on their own port (in multi-process mode, from the gunicorn master only).

    An address that cannot be bound stops the process with one line: metrics reachable
    nowhere would otherwise go unnoticed until they are needed.
    """
    addr, port = settings.metrics_addr, settings.metrics_port
    try:
        family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        server_class = type("MetricsServer", (ThreadingHTTPServer,), {"address_family": family})
        server = server_class((addr, port), _handler(settings))
    except OSError as exc:
        raise SystemExit(
            f"collector: cannot serve metrics on {addr}:{port} "
            f"(COLLECTOR_METRICS_ADDR, COLLECTOR_METRICS_PORT): {exc.strerror or exc}"
        ) from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="collector-metrics", daemon=True).start()
