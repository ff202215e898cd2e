"""Request spans: server spans only, with the collector's facts as attributes and events."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import collector
from collector import _tracing as tracing
from collector._settings import load
from tests.conftest import free_port


def _traced_app(exporter: InMemorySpanExporter) -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def get_item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @app.get("/blocking")
    async def blocking_view() -> dict[str, bool]:
        time.sleep(0.3)
        return {"blocked": True}

    tracing.setup_tracing(app, load(trace_sample_ratio=1.0), exporter=exporter)
    collector.instrument(app, tracing="on", trace_sample_ratio=1.0)
    return app


def _flush() -> None:
    from opentelemetry import trace

    trace.get_tracer_provider().force_flush()  # type: ignore[attr-defined]


def test_one_server_span_per_request_without_send_and_receive_spans() -> None:
    exporter = InMemorySpanExporter()
    with TestClient(_traced_app(exporter)) as client:
        for i in range(3):
            client.get(f"/items/{i}")
        client.get("/metrics")
    _flush()
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["GET /items/{item_id}"] * 3
    assert all(s.attributes and s.attributes["collector.route"] == "/items/{item_id}" for s in spans)


def test_a_stall_is_an_event_on_the_span_of_the_request_that_caused_it_with_its_duration() -> None:
    exporter = InMemorySpanExporter()
    with TestClient(_traced_app(exporter)) as client:
        client.get("/blocking")
    _flush()
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "GET /blocking"]
    events = [e for e in span.events if e.name == "event_loop.stall"]
    assert len(events) == 1
    attributes = events[0].attributes
    assert attributes is not None
    assert str(attributes["code.location"]).startswith("tests/test_tracing.py:blocking_view:")
    # The block lasted 0.3 s; the stall starts when the next heartbeat was due, up to 25 ms later.
    assert 0.2 <= float(attributes["stall.seconds"]) <= 1.0  # type: ignore[arg-type]


def test_spans_are_exported_over_otlp_when_the_endpoint_is_set(serve: Any) -> None:
    received: list[bytes] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["content-length"])))
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    port = free_port()
    receiver = HTTPServer(("127.0.0.1", port), Receiver)
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "COLLECTOR_TRACE_SAMPLE_RATIO": "1.0",
        }
        server = serve("tests.apps.core:app", env=env)
        server.get("/items/7")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not received:
            time.sleep(0.1)
    finally:
        receiver.shutdown()
    request = ExportTraceServiceRequest()
    request.ParseFromString(received[0])
    names = [s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert names == ["GET /items/{item_id}"]


def test_undoing_tracing_uninstruments_the_app_and_stops_annotating_spans() -> None:
    from collector import _patches
    from collector import _routes as routes

    exporter = InMemorySpanExporter()
    app = _traced_app(exporter)
    assert tracing.annotate in routes.on_route_exit
    assert {p.component for p in _patches.active("tracing")} == {"tracing"}
    _patches.undo("tracing")
    assert not getattr(app, "_is_instrumented_by_opentelemetry", False)
    assert tracing.annotate not in routes.on_route_exit
    assert not routes.capture_span
    with TestClient(app) as client:
        assert client.get("/items/1").status_code == 200
    layer, layers = app.middleware_stack, []
    while layer is not None and len(layers) < 20:
        layers.append(type(layer).__name__)
        layer = getattr(layer, "app", None)
    assert "OpenTelemetryMiddleware" not in layers
    _flush()
    # FastAPI's own telemetry may still make spans from the global provider; none is the collector's.
    assert [s.name for s in exporter.get_finished_spans() if "collector.route" in (s.attributes or {})] == []
