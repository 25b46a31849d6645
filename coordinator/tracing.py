"""Optional OpenTelemetry tracing (`pip install 'txc[otel]'`).

Without OpenTelemetry installed, or with `otel` unset, this is a no-op and the coordinator
still forwards the caller's W3C `traceparent` unchanged to participants (coordinator.logs).
With it, a commit becomes a span (child of the caller's `traceparent`) and each protocol
request to a participant a child span, whose context is what the participant receives.

`otel` setting: `""` off; `"console"` print spans (for a look); `"global"` use the tracer
provider the process already has (e.g. set up by `opentelemetry-instrument` or by an
embedding application); `"otlp"` export with OTLP (needs opentelemetry-exporter-otlp).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from coordinator.logs import traceparent_var

log = logging.getLogger("txc.tracing")

TRACER_NAME = "txc.coordinator"
_tracer: Any = None  # an opentelemetry Tracer when enabled


def configure(mode: str) -> bool:
    """Enable tracing; returns whether it is on. Never fails the node: a missing package is
    logged and tracing stays off."""
    global _tracer
    if not mode:
        _tracer = None
        return False
    try:
        from opentelemetry import trace
    except ImportError:
        log.warning("otel=%s but OpenTelemetry is not installed (pip install 'txc[otel]')", mode)
        return False
    if mode in ("console", "otlp"):
        try:
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

            exporter: Any
            if mode == "otlp":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                exporter = OTLPSpanExporter()
            else:
                exporter = ConsoleSpanExporter()
            provider = TracerProvider()
            provider.add_span_processor(BatchSpanProcessor(exporter))
            trace.set_tracer_provider(provider)
        except ImportError as e:
            log.warning("otel=%s needs more packages: %s", mode, e)
            return False
    elif mode != "global":
        log.warning("unknown otel mode %r (console, otlp, global); tracing stays off", mode)
        return False
    _tracer = trace.get_tracer(TRACER_NAME)
    return True


def enabled() -> bool:
    return _tracer is not None


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[Any]:
    """A span, child of the current one or of the request's `traceparent`; makes its own
    context the `traceparent` that outgoing requests carry."""
    if _tracer is None:
        yield None
        return
    from opentelemetry import context, propagate

    parent = None
    current = traceparent_var.get()
    if current and not _has_active_span():
        parent = propagate.extract({"traceparent": current})
    with _tracer.start_as_current_span(name, context=parent) as s:
        for k, v in attributes.items():
            if v is not None:
                s.set_attribute(k, v)
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=context.get_current())
        token = traceparent_var.set(carrier.get("traceparent", current))
        try:
            yield s
        finally:
            traceparent_var.reset(token)


def _has_active_span() -> bool:
    from opentelemetry import trace

    return trace.get_current_span().get_span_context().is_valid
