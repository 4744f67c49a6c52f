"""The store server's spans, made only for requests that carry a trace context and only
while tracing is on: one per request, and one per group-commit fsync it waited for."""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Final, final

from postoffice.core.tracecontext import TraceContext
from postoffice.store.errors import Status
from postoffice.store.wire import RequestType

if TYPE_CHECKING:
    from postoffice.core.otel import Span, Tracing

# Design
# ------
# A request's span starts when the server runs it and ends when its reply is ready: at
# once for most, after its fsync for a durable write. One fsync covers the writes of
# many requests, of many traces; a span has one parent, so the fsync is recorded once per
# traced write it covers, as a `store fsync` child of that write's span with the sync's
# own start and end times and how many traced writes it covered. Each trace then shows
# the fsync its write waited for, under it, and no span points into another trace.

_DB_SYSTEM: Final = "postoffice-store"
_NAMES: Final = {int(t): f"store {t.name}" for t in RequestType}
_ANSWERED: Final = frozenset({Status.OK, Status.NOT_FOUND})


@final
class StoreTracing:
    """Spans for traced requests; the GroupCommit's observer (`fsynced`)."""

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing
        #: Spans of durable writes waiting for their fsync, by ticket, oldest first.
        self._waiting: collections.deque[tuple[int, Span]] = collections.deque()

    def __repr__(self) -> str:
        return f"<StoreTracing waiting={len(self._waiting)}>"

    def begin(self, context: TraceContext, type_: int) -> Span:
        """Start the span of a request that carried `context`."""
        name = _NAMES.get(type_, "store request")
        return self.tracing.start(
            name,
            kind="server",
            parent=context,
            attributes={"db.system": _DB_SYSTEM, "db.operation.name": name.removeprefix("store ")},
        )

    def answered(self, span: Span, ticket: int, status: Status, body: bytes) -> None:
        """The request of `span` came to `status`: end the span, or for a durable write
        (`ticket`) leave it to the fsync that covers it."""
        span.set_attribute("postoffice.store.status", status.name)
        if ticket:
            self._waiting.append((ticket, span))
            return
        error = None if status in _ANSWERED else body.decode("utf-8", "replace")
        self.tracing.end(span, error=error)

    def failed(self, span: Span, exc: BaseException) -> None:
        """The request of `span` was malformed."""
        span.set_attribute("postoffice.store.status", Status.BAD_REQUEST.name)
        self.tracing.end(span, error=exc)

    def fsynced(self, covered: int, error: BaseException | None, began: int, ended: int) -> None:
        """An fsync covered every ticket up to `covered`: record it under each traced
        write it covered, and end their spans."""
        waiting = self._waiting
        done: list[Span] = []
        while waiting and waiting[0][0] <= covered:
            done.append(waiting.popleft()[1])
        tracing = self.tracing
        for span in done:
            fsync = tracing.start(
                "store fsync",
                parent=span,
                attributes={"postoffice.store.traced_writes": len(done)},
                start_ns=began or None,
            )
            tracing.end(fsync, error=error, end_ns=ended or None)
            tracing.end(span, error=error)
