"""OpenTelemetry set-up: the FastAPI instrumentation, a sampler, and OTLP when configured.

What tracing changes outside itself goes through the patch ledger under the component
``"tracing"``: the app's FastAPI instrumentation (undone by ``FastAPIInstrumentor.uninstrument_app``),
the route hook's span capture and the span annotation in ``routes.on_route_exit``.
"""

from __future__ import annotations

import os
from typing import Any

from collector import _patches
from collector import _routes as routes
from collector._event_loop import stall_seconds
from collector._settings import Settings

COMPONENT = "tracing"


def otlp_endpoint() -> str | None:
    return os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )


def wanted(settings: Settings) -> bool:
    return settings.tracing == "on" or (settings.tracing == "auto" and otlp_endpoint() is not None)


def setup_tracing(app: Any, settings: Settings, exporter: Any = None) -> None:
    """Trace requests of ``app``: server spans only, no per-message send/receive spans.

    A tracer provider the application configured itself is kept; otherwise one is made
    with a parent-based ratio sampler and an OTLP exporter when
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (``exporter`` overrides it).
    """
    from opentelemetry import trace
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    if annotate not in routes.on_route_exit:
        routes.register(COMPONENT, routes.on_route_exit, annotate)
        _patches.replace(COMPONENT, routes, "capture_span", True)
    if getattr(app, "_is_instrumented_by_opentelemetry", False):
        return
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider(
            resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "fastapi")}),
            sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio)),
        )
        trace.set_tracer_provider(provider)
    if exporter is None and otlp_endpoint() is not None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    excluded = ",".join([settings.metrics_path, settings.profile_path])
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=provider, exclude_spans=["receive", "send"], excluded_urls=excluded
    )
    _patches.record(
        COMPONENT,
        f"FastAPIInstrumentor.instrument_app({type(app).__name__} at {id(app):#x})",
        lambda: FastAPIInstrumentor.uninstrument_app(app),
    )


def annotate(ctx: Any) -> None:
    """Write the request's collected facts on its server span (called as the route returns)."""
    span = ctx.span
    if span is None or not span.is_recording():
        return
    span.set_attribute("collector.route", ctx.route or "")
    if ctx.queries:
        span.set_attribute("collector.db.queries", ctx.queries)
    if ctx.stalls:
        for stall in ctx.stalls:
            span.add_event(
                "event_loop.stall", {"code.location": stall[0], "stall.seconds": stall_seconds(stall)}
            )
    if ctx.profile_id:
        span.set_attribute("collector.profile_id", ctx.profile_id)
