"""Request spans: server spans only, with the collector's facts as attributes and events."""

from __future__ import annotations

import time

from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import collector
from collector import tracing
from collector.settings import load


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


def test_a_stall_is_an_event_on_the_span_of_the_request_that_caused_it() -> None:
    exporter = InMemorySpanExporter()
    with TestClient(_traced_app(exporter)) as client:
        client.get("/blocking")
    _flush()
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "GET /blocking"]
    events = [e for e in span.events if e.name == "event_loop.stall"]
    assert len(events) == 1
    assert events[0].attributes is not None
    assert str(events[0].attributes["code.location"]).startswith("tests/test_tracing.py:blocking_view:")
