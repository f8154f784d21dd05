"""OpenTelemetry traces of runs: a span per run and per node execution, exported over
OTLP/HTTP (protobuf).

Configured only by the standard ``OTEL_*`` variables, read by the OpenTelemetry SDK itself
(endpoint, headers, timeout, batching, sampler, service name, resource attributes); this
module decides only whether to trace at all. Off unless ``OTEL_TRACES_EXPORTER`` names an
exporter or ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set,
and always off with ``OTEL_SDK_DISABLED=true``. When off, nothing of the SDK is built and
runs get no observer from here: the engine's per-node hook is a shared no-op.

The provider is FlowMaestro's own, not installed as OpenTelemetry's global one: Prefect's
engine asks the global provider for spans of its own (flow and task runs, and a label write
per traced flow run); left on the global no-op provider, it makes none, and the trace is
the canvas's, one span per node execution, not Prefect's machinery around it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:  # the SDK is imported only by a process that traces
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("flowmaestro.tracing")

TRACEPARENT_LABEL = "flowmaestro.traceparent"
"""The Prefect flow-run label carrying the ``traceparent`` of the request that started the
run (set by the API, read by the run's worker). Not Prefect's own ``__OTEL_TRACEPARENT``:
Prefect would then write the label again on every traced run."""

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")
_PROPAGATOR = TraceContextTextMapPropagator()
SUPPORTED_EXPORTERS = ("otlp", "console", "none")


def valid_traceparent(value: str | None) -> str | None:
    """``value`` when it is a W3C ``traceparent`` FlowMaestro can continue, else None: an
    invalid one is ignored, as the W3C Trace Context says, not refused."""
    if value is None:
        return None
    value = value.strip().lower()
    return value if _TRACEPARENT.match(value) and not value.startswith("ff") else None


def exporters_of(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The span exporters the environment asks for; () when tracing is off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ()
    named = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if named:
        chosen = tuple(name.strip() for name in named.split(",") if name.strip() and name.strip() != "none")
    elif environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        chosen = ("otlp",)
    else:
        chosen = ()
    unknown = [name for name in chosen if name not in SUPPORTED_EXPORTERS]
    if unknown:
        log.warning("OTEL_TRACES_EXPORTER: %s not supported (otlp, console, none); ignored", ", ".join(unknown))
    return tuple(name for name in chosen if name in SUPPORTED_EXPORTERS)


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol and protocol != "http/protobuf":
        log.warning("OTLP protocol %r not supported: spans are sent as http/protobuf", protocol)
    # Imported here: the exporter pulls in protobuf and requests, which an untraced process never needs.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # The endpoint as the environment given says (the exporter itself reads only the process's);
    # headers, timeout, compression, certificates: the exporter reads its OTEL_* variables.
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not endpoint and environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        endpoint = environ["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces"
    return OTLPSpanExporter(endpoint=endpoint or None)


class Tracing:
    """The process's tracer: one provider, its batch processors, closed with the run context."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("flowmaestro")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Tracing | None:
        """The tracing the ``OTEL_*`` variables ask for; None when they ask for none."""
        exporters = exporters_of(environ)
        if not exporters:
            return None
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        # The SDK reads OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES and OTEL_TRACES_SAMPLER* itself;
        # "flowmaestro" only instead of its "unknown_service".
        resource = Resource.create()
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "flowmaestro"}))
        provider = TracerProvider(resource=resource)
        for name in exporters:
            provider.add_span_processor(BatchSpanProcessor(_exporter(name, environ)))
        return cls(provider)

    def start_run_span(self, name: str, traceparent: str | None, attributes: Mapping[str, Any]) -> Span:
        """A run's span: the child of the span current here (a sub-workflow node's, for a
        child run), else of ``traceparent`` (the request that started the run), else a root."""
        current = trace.get_current_span()
        if current.get_span_context().is_valid:
            parent = otel_context.get_current()
        elif traceparent is not None:
            parent = _PROPAGATOR.extract({"traceparent": traceparent})
        else:
            parent = otel_context.Context()
        return self.tracer.start_span(name, context=parent, kind=SpanKind.INTERNAL, attributes=dict(attributes))

    def start_node_span(self, name: str, run_span: Span, attributes: Mapping[str, Any]) -> Span:
        return self.tracer.start_span(name, context=trace.set_span_in_context(run_span), attributes=dict(attributes))

    def shutdown(self) -> None:
        """Send what is batched and stop (bounded by the exporter's timeout)."""
        self.provider.shutdown()
