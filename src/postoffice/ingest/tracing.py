"""The ingest server's spans, made only while tracing is on: an upload's span from its
first chunk to its publish, and its persist, assemble, decompress and publish spans."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Final, TypeVar, final

from postoffice.ingest.messages import Chunk, FileId, file_id_hex
from postoffice.ingest.published import PublishedInfo, Recorder

if TYPE_CHECKING:
    from postoffice.core.otel import Attributes, Span, Tracing

# Design
# ------
# An upload is one trace, rooted in an `ingest upload` span (kind server) that starts
# when its first chunk arrives and ends when its published record is durable (or its
# assembly fails, or it is aborted or expires). Under it: one `ingest persist` per chunk
# stored (digest check, patch written and fsynced, ids.list committed), one `ingest
# assemble` per assembly that published it, with its `ingest decompress` child (from the
# assembly's start until the output is in files/, which for a streaming assembly includes
# waiting for chunks), and `ingest publish` (the published record appended and fsynced).
# A one-chunk upload is published in a batch before its ACK (singles.py): its `ingest
# publish` covers the whole of that (digest, decompression, the batch's shared fsyncs).
# The assembly thread only reads the clock around the record (`timed_record`); spans
# are made on the loop. Uploads that never finish would keep their spans, so at most
# MAX_OPEN_UPLOADS are followed: the oldest is ended (marked untracked) past that.

MAX_OPEN_UPLOADS: Final = 10_000

T = TypeVar("T")


@final
class _Upload:
    __slots__ = ("publish_times", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        #: When the assembly's record call began and ended (time.time_ns()), or None.
        self.publish_times: tuple[int, int] | None = None


@final
class IngestTracing:
    """The spans of the uploads in progress, by file id."""

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing
        self._uploads: collections.OrderedDict[FileId, _Upload] = collections.OrderedDict()

    def __repr__(self) -> str:
        return f"<IngestTracing uploads={len(self._uploads)}>"

    def upload(self, chunk: Chunk) -> _Upload:
        """The upload `chunk` belongs to, its span started by its first chunk."""
        upload = self._uploads.get(chunk.file_id)
        if upload is None:
            attributes: Attributes = {
                "postoffice.ingest.file_id": file_id_hex(chunk.file_id),
                "postoffice.ingest.chunks": chunk.total,
                "postoffice.ingest.bytes": chunk.size,
            }
            span = self.tracing.start("ingest upload", kind="server", attributes=attributes)
            upload = self._uploads[chunk.file_id] = _Upload(span)
            if len(self._uploads) > MAX_OPEN_UPLOADS:
                _, oldest = self._uploads.popitem(last=False)
                self.tracing.end(oldest.span, error="untracked: too many uploads open")
        return upload

    def persisting(self, chunk: Chunk, stored: asyncio.Future[T]) -> None:
        """`chunk` is being verified and stored durably; `stored` says when it is."""
        span = self.tracing.start(
            "ingest persist",
            parent=self.upload(chunk).span,
            attributes={
                "postoffice.ingest.chunk": chunk.index,
                "postoffice.ingest.chunk_bytes": len(chunk.data),
            },
        )
        stored.add_done_callback(lambda done: self._persisted(span, done))

    def _persisted(self, span: Span, done: asyncio.Future[T]) -> None:
        error = "cancelled" if done.cancelled() else done.exception()
        self.tracing.end(span, error=error)

    async def single(self, chunk: Chunk, publish: Awaitable[T]) -> T:
        """Await the one-chunk publish of `chunk` inside its upload's spans."""
        upload = self.upload(chunk)
        span = self.tracing.start(
            "ingest publish",
            parent=upload.span,
            attributes={"postoffice.ingest.road": "single"},
        )
        try:
            outcome = await publish
        except BaseException as exc:
            self.tracing.end(span, error=exc)
            self.failed(chunk.file_id, exc)
            raise
        self.tracing.end(span)
        self._finish(chunk.file_id, None)
        return outcome

    def timed_record(self, file_id: FileId, record: Recorder) -> Recorder:
        """`record` (the publish's commit point, called on an assembly's thread), timed."""
        upload = self._uploads.get(file_id)
        if upload is None:
            return record

        def timed(info: PublishedInfo) -> PublishedInfo | None:
            began = time.time_ns()
            recorded = record(info)
            upload.publish_times = (began, time.time_ns())
            return recorded

        return timed

    def published(self, done: PublishedInfo, began_ns: int) -> None:
        """The assembly that began at `began_ns` published `done`: its spans, then the
        upload's end."""
        upload = self._uploads.get(done.file_id)
        if upload is None:
            return
        tracing = self.tracing
        now = time.time_ns()
        record_began, record_ended = upload.publish_times or (now, now)
        assemble = tracing.start("ingest assemble", parent=upload.span, start_ns=began_ns)
        decompress = tracing.start(
            "ingest decompress",
            parent=assemble,
            attributes={"postoffice.ingest.output_bytes": done.size},
            start_ns=began_ns,
        )
        tracing.end(decompress, end_ns=record_began)
        tracing.end(assemble, end_ns=record_began)
        publish = tracing.start("ingest publish", parent=upload.span, start_ns=record_began)
        tracing.end(publish, end_ns=record_ended)
        upload.span.set_attribute("postoffice.ingest.output_bytes", done.size)
        self._finish(done.file_id, None)

    def failed(self, file_id: FileId, error: BaseException | str) -> None:
        """The upload will not be published (its payload failed, it was aborted)."""
        self._finish(file_id, error)

    def _finish(self, file_id: FileId, error: BaseException | str | None) -> None:
        upload = self._uploads.pop(file_id, None)
        if upload is not None:
            self.tracing.end(upload.span, error=error)
