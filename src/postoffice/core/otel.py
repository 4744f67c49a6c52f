"""`Tracing`: the one place that speaks OpenTelemetry, imported only once tracing is on
(core layer; core/tracing.py switches it on and hands it to the servers)."""

from __future__ import annotations

from typing import Final, Literal, final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode

from postoffice.core.tracecontext import TraceContext

__all__ = ["Attributes", "Kind", "Span", "Tracing"]

Attributes = dict[str, str | int | float | bool]
#: A span's kind: it serves a request, makes one, or is a step inside either.
Kind = Literal["server", "client", "internal"]

_INSTRUMENTATION: Final = "postoffice"
_KINDS: Final[dict[str, SpanKind]] = {
    "server": SpanKind.SERVER,
    "client": SpanKind.CLIENT,
    "internal": SpanKind.INTERNAL,
}


@final
class Tracing:
    """Starts and ends the spans of one process; `shutdown` flushes what is queued.

    Spans of the request path are never made current implicitly: a caller that wants the
    code it calls to see a span as its parent (the command server around a command's
    handler) says so with `activate`/`deactivate`.
    """

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer(_INSTRUMENTATION)

    def __repr__(self) -> str:
        return f"<Tracing resource={dict(self.provider.resource.attributes)!r}>"

    @classmethod
    def exporting(cls, *, service_name: str, url: str | None, console: bool = False) -> Tracing:
        """A Tracing whose spans a background thread sends in batches: to the OTLP/HTTP
        collector at `url` (None: where OTEL_EXPORTER_OTLP_* say), or printed (`console`)."""
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
        if console:
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        else:
            # The exporter pulls in protobuf and requests: imported only here.
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )

            exporter = OTLPSpanExporter() if url is None else OTLPSpanExporter(endpoint=url)
            provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider)

    @classmethod
    def with_processor(cls, processor: SpanProcessor, *, service_name: str) -> Tracing:
        """A Tracing whose spans go to `processor` (tests: a SimpleSpanProcessor in front of
        an InMemorySpanExporter)."""
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
        provider.add_span_processor(processor)
        return cls(provider)

    def shutdown(self) -> None:
        """Export what is queued and stop the exporter thread."""
        self.provider.shutdown()

    # -- spans ---------------------------------------------------------------------------

    def start(
        self,
        name: str,
        *,
        kind: Kind = "internal",
        parent: Span | TraceContext | None = None,
        attributes: Attributes | None = None,
        start_ns: int | None = None,
    ) -> Span:
        """Start a span: a child of `parent` (a span of ours, or a context that came over
        the wire), or of the current span when None."""
        ctx = None
        if isinstance(parent, TraceContext):
            remote = SpanContext(
                trace_id=parent.trace_id,
                span_id=parent.span_id,
                is_remote=True,
                trace_flags=trace.TraceFlags(parent.flags),
            )
            ctx = trace.set_span_in_context(NonRecordingSpan(remote))
        elif parent is not None:
            ctx = trace.set_span_in_context(parent)
        return self._tracer.start_span(
            name, context=ctx, kind=_KINDS[kind], attributes=attributes, start_time=start_ns
        )

    @staticmethod
    def end(
        span: Span, *, error: BaseException | str | None = None, end_ns: int | None = None
    ) -> None:
        """End `span`, marked failed with `error` (an exception or a message) if given."""
        if error is not None:
            if isinstance(error, BaseException):
                span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, str(error)))
        span.end(end_time=end_ns)

    @staticmethod
    def context_of(span: Span) -> TraceContext | None:
        """The trace context to send on behalf of `span` (None if it has no valid one)."""
        ctx = span.get_span_context()
        if not ctx.is_valid:
            return None
        return TraceContext(trace_id=ctx.trace_id, span_id=ctx.span_id, flags=int(ctx.trace_flags))

    @staticmethod
    def current() -> Span | None:
        """The span made current by `activate`, or None."""
        span = trace.get_current_span()
        return span if span.get_span_context().is_valid else None

    @staticmethod
    def activate(span: Span) -> object:
        """Make `span` the parent of the spans started meanwhile; returns the token that
        `deactivate` takes."""
        return otel_context.attach(trace.set_span_in_context(span))

    @staticmethod
    def deactivate(token: object) -> None:
        """Undo the `activate` that returned `token`."""
        otel_context.detach(token)  # type: ignore[arg-type]  # the token activate returned
