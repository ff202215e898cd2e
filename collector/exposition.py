"""Serving the metrics: on the app's own ``/metrics`` or on a port of their own."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.exposition import choose_encoder

from collector import _multiprocess


def _registry() -> CollectorRegistry:
    if _multiprocess.enabled():
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def render(accept: str | None) -> tuple[bytes, str]:
    """The exposition of this process, or of every live worker in multi-process mode."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(_registry()), content_type


async def serve(scope: dict[str, Any], receive: Any, send: Any) -> None:
    accept = None
    for key, value in scope.get("headers", ()):
        if key == b"accept":
            accept = value.decode("latin-1")
            break
    if _multiprocess.enabled():  # reads every worker's files: keep it off the event loop
        body, content_type = await anyio.to_thread.run_sync(render, accept)
    else:
        body, content_type = render(accept)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body if scope["method"] != "HEAD" else b""})


def start_server(port: int, addr: str) -> None:
    """Metrics on their own port (in multi-process mode, from the gunicorn master only)."""
    start_http_server(port, addr=addr, registry=_registry())
