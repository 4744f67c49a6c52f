"""An ingest upload's spans, in-process with an in-memory exporter: one trace from its first
chunk to its publish, with a persist span per chunk, the assembly with its decompression,
and the publish; a one-chunk upload's publish; a failed upload's span marked failed."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import xxhash
import zstandard
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from postoffice.core import tracing
from postoffice.core.otel import Tracing
from postoffice.ingest.chunkdigest import new_chunk
from postoffice.ingest.config import IngestConfig
from postoffice.ingest.errors import AssemblyError
from postoffice.ingest.messages import Chunk, FileId, file_id_hex
from postoffice.ingest.server import IngestServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracer = Tracing.with_processor(SimpleSpanProcessor(exporter), service_name="postoffice-ingest")
    tracing.install(tracer)
    try:
        yield exporter
    finally:
        tracing.uninstall()
        tracer.shutdown()


@pytest.fixture
async def server(tmp_path: Path, spans: InMemorySpanExporter) -> AsyncIterator[IngestServer]:
    config = IngestConfig(
        sys_base=0, data_base=0, x=1, data_dir=tmp_path, fsync=False, cleanup_interval_s=3600
    )
    srv = IngestServer(config)  # built while the in-memory tracing is installed
    await srv.startup()
    try:
        yield srv
    finally:
        await srv.shutdown()


def _chunks(payload: bytes, size: int, name: str) -> list[Chunk]:
    file_id = FileId(os.urandom(16))
    pieces = [payload[i : i + size] for i in range(0, len(payload), size)]
    return [
        new_chunk(
            file_id=file_id,
            index=i,
            total=len(pieces),
            size=len(payload),
            name=name,
            payload_digest=xxhash.xxh3_128_digest(payload),
            data=piece,
        )
        for i, piece in enumerate(pieces)
    ]


async def _ended(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    """The finished spans once one named `name` is among them (bounded wait)."""
    for _ in range(1000):
        spans = list(exporter.get_finished_spans())
        if any(s.name == name for s in spans):
            return spans
        await asyncio.sleep(0.01)
    raise AssertionError(f"no {name!r} among {[s.name for s in exporter.get_finished_spans()]}")


def _parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def _span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    span_id: int = span.context.span_id
    return span_id


async def test_an_upload_is_one_trace_from_its_first_chunk_to_its_publish(
    server: IngestServer, spans: InMemorySpanExporter
) -> None:
    content = os.urandom(40_000)
    payload = zstandard.ZstdCompressor().compress(content)
    chunks = _chunks(payload, 4096, "traced.bin")
    for chunk in chunks:
        await server.accept_chunk(chunk)

    finished = await _ended(spans, "ingest upload")
    (upload,) = [s for s in finished if s.name == "ingest upload"]
    assert upload.kind is SpanKind.SERVER
    assert upload.parent is None
    assert upload.status.status_code is not StatusCode.ERROR
    assert dict(upload.attributes or {}) == {
        "postoffice.ingest.file_id": file_id_hex(chunks[0].file_id),
        "postoffice.ingest.chunks": len(chunks),
        "postoffice.ingest.bytes": len(payload),
        "postoffice.ingest.output_bytes": len(content),
    }
    assert upload.context is not None
    in_trace = [s for s in finished if s.context and s.context.trace_id == upload.context.trace_id]
    names = sorted(s.name for s in in_trace)
    assert names == sorted(
        ["ingest upload", "ingest assemble", "ingest decompress", "ingest publish"]
        + ["ingest persist"] * len(chunks)
    )
    by_name = {s.name: s for s in in_trace}
    for name in ("ingest persist", "ingest assemble", "ingest publish"):
        assert _parent_id(by_name[name]) == _span_id(upload)
    assert _parent_id(by_name["ingest decompress"]) == _span_id(by_name["ingest assemble"])
    persisted = sorted(
        int(str((s.attributes or {})["postoffice.ingest.chunk"]))
        for s in in_trace
        if s.name == "ingest persist"
    )
    assert persisted == list(range(len(chunks)))
    publish = by_name["ingest publish"]
    assert upload.start_time is not None
    assert upload.end_time is not None
    assert publish.end_time is not None
    assert upload.start_time <= publish.end_time <= upload.end_time


async def test_a_one_chunk_upload_has_its_publish_span(
    server: IngestServer, spans: InMemorySpanExporter
) -> None:
    payload = zstandard.ZstdCompressor().compress(b"small\n" * 100)
    (chunk,) = _chunks(payload, len(payload), "small.txt")
    ack = await server.accept_chunk(chunk)
    assert ack.complete

    finished = await _ended(spans, "ingest upload")
    upload = next(s for s in finished if s.name == "ingest upload")
    publish = next(s for s in finished if s.name == "ingest publish")
    assert _parent_id(publish) == _span_id(upload)
    assert (publish.attributes or {})["postoffice.ingest.road"] == "single"
    assert (upload.attributes or {})["postoffice.ingest.chunks"] == 1
    assert not [s for s in finished if s.name == "ingest persist"]


async def test_an_upload_that_will_not_decompress_ends_its_span_failed(
    server: IngestServer, spans: InMemorySpanExporter
) -> None:
    garbage = os.urandom(20_000)  # not zstd: its assembly fails for good
    chunks = _chunks(garbage, 8192, "bad.bin")
    for chunk in chunks:
        try:
            await server.accept_chunk(chunk)
        except AssemblyError:
            break  # its upload failed already: later chunks are refused

    finished = await _ended(spans, "ingest upload")
    upload = next(s for s in finished if s.name == "ingest upload")
    assert upload.status.status_code is StatusCode.ERROR
    assert not [s for s in finished if s.name == "ingest publish"]
