"""Tracing across a command's whole path, in one process on real sockets: a command server
with `--store` and a store server, each with its own tracing and an in-memory exporter.
One trace runs from the command's span to the store's fsync, parent by parent."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from postoffice.command.config import CommandConfig
from postoffice.command.server import CommandServer
from postoffice.core import tracing
from postoffice.core.framing import Frame, FrameDecoder
from postoffice.core.otel import Tracing
from postoffice.core.resp import encode_command
from postoffice.core.tracecontext import TraceContext
from postoffice.store.config import StoreConfig
from postoffice.store.server import StoreServer
from postoffice.store.wire import (
    GetRequest,
    PutRequest,
    Response,
    Status,
    decode_response,
    encode_request,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@dataclass
class Traced:
    """The two servers and the spans each exported."""

    command: CommandServer
    store: StoreServer
    command_spans: InMemorySpanExporter
    store_spans: InMemorySpanExporter


def _exporting(service: str) -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return Tracing.with_processor(SimpleSpanProcessor(exporter), service_name=service), exporter


@contextlib.contextmanager
def _installed(tracer: Tracing | None) -> Iterator[None]:
    tracing.install(tracer)
    try:
        yield
    finally:
        tracing.uninstall()


async def _start(tmp_path: Path, *, traced: bool) -> tuple[CommandServer, StoreServer]:
    store = StoreServer(
        StoreConfig(port=0, metrics_port=None, data_dir=tmp_path, durability="always")
    )
    await store.startup()
    host, port = store.addresses["store"]
    command = CommandServer(CommandConfig(port=0, metrics_port=None, store=f"{host}:{port}"))
    await command.startup()
    return command, store


@pytest.fixture
async def traced(tmp_path: Path) -> AsyncIterator[Traced]:
    store_tracing, store_spans = _exporting("postoffice-store")
    command_tracing, command_spans = _exporting("postoffice-command")
    # A server takes the tracing installed when it is built; the command server's store
    # client is built when its link connects, so the command's stays installed.
    with _installed(store_tracing):
        store = StoreServer(
            StoreConfig(port=0, metrics_port=None, data_dir=tmp_path, durability="always")
        )
    await store.startup()
    host, port = store.addresses["store"]
    with _installed(command_tracing):
        command = CommandServer(CommandConfig(port=0, metrics_port=None, store=f"{host}:{port}"))
        await command.startup()
        try:
            await _linked(command)
            command_spans.clear()
            yield Traced(command, store, command_spans, store_spans)
        finally:
            await command.shutdown()
            await store.shutdown()
            command_tracing.shutdown()
            store_tracing.shutdown()


async def _linked(command: CommandServer) -> None:
    """Wait (bounded) until the command server's store link is up."""
    async with asyncio.timeout(10):
        while b"store_connected:1" not in await _ask(command, [b"INFO", b"keyspace"]):
            await asyncio.sleep(0.01)


async def _ask(server: CommandServer, *commands: list[bytes], replies: int = 1) -> bytes:
    host, port = server.addresses["command"]
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"".join(encode_command(c) for c in commands))
        got = b""
        async with asyncio.timeout(10):
            while got.count(b"\r\n") < replies:
                chunk = await reader.read(4096)
                assert chunk, f"connection closed after {got!r}"
                got += chunk
        return got
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _spans(exporter: InMemorySpanExporter, names: set[str]) -> list[ReadableSpan]:
    """The finished spans, once every name in `names` is among them (bounded wait)."""
    for _ in range(1000):
        if names <= {s.name for s in exporter.get_finished_spans()}:
            return list(exporter.get_finished_spans())
        await asyncio.sleep(0.01)
    raise AssertionError(f"{names} not among {[s.name for s in exporter.get_finished_spans()]}")


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


async def test_one_trace_runs_from_the_command_span_to_the_store_fsync(traced: Traced) -> None:
    assert await _ask(traced.command, [b"SET", b"user:1", b"secret-value"]) == b"+OK\r\n"

    command_spans = await _spans(traced.command_spans, {"SET", "store PUT"})
    store_spans = await _spans(traced.store_spans, {"store PUT", "store fsync"})
    command = _one(command_spans, "SET")
    client = _one(command_spans, "store PUT")
    served = _one(store_spans, "store PUT")
    fsync = _one(store_spans, "store fsync")

    trace_ids = {s.context.trace_id for s in (command, client, served, fsync) if s.context}
    assert len(trace_ids) == 1
    assert command.parent is None
    assert command.kind is SpanKind.SERVER
    assert client.kind is SpanKind.CLIENT
    assert client.parent is not None
    assert command.context is not None
    assert client.parent.span_id == command.context.span_id
    assert served.kind is SpanKind.SERVER
    assert served.parent is not None
    assert client.context is not None
    assert served.parent.span_id == client.context.span_id
    assert served.parent.is_remote
    assert fsync.parent is not None
    assert served.context is not None
    assert fsync.parent.span_id == served.context.span_id
    assert fsync.start_time is not None
    assert fsync.end_time is not None
    assert fsync.start_time <= fsync.end_time

    assert dict(command.attributes or {}) == {
        "db.system": "redis-like",
        "db.operation.name": "SET",
    }
    for span in (command, client, served, fsync):
        for value in (span.attributes or {}).values():
            assert "secret-value" not in str(value)
            assert "user:1" not in str(value)
    assert command.resource.attributes["service.name"] == "postoffice-command"
    assert served.resource.attributes["service.name"] == "postoffice-store"


async def test_a_read_has_no_fsync_span_and_its_own_trace(traced: Traced) -> None:
    await _ask(traced.command, [b"SET", b"k", b"v"])
    assert await _ask(traced.command, [b"GET", b"k"], replies=2) == b"$1\r\nv\r\n"

    command_spans = await _spans(traced.command_spans, {"SET", "GET", "store GET"})
    store_spans = await _spans(traced.store_spans, {"store GET", "store fsync"})
    get = _one(command_spans, "GET")
    served = _one(store_spans, "store GET")
    assert get.context is not None
    assert served.context is not None
    assert served.context.trace_id == get.context.trace_id
    set_context = _one(command_spans, "SET").context
    assert set_context is not None
    assert set_context.trace_id != get.context.trace_id
    fsyncs = [s for s in store_spans if s.name == "store fsync"]
    assert all(f.parent is not None and f.parent.span_id != served.context.span_id for f in fsyncs)


async def test_a_command_without_the_store_is_one_span(traced: Traced) -> None:
    before = len(traced.store_spans.get_finished_spans())
    assert await _ask(traced.command, [b"PING"]) == b"+PONG\r\n"
    spans = await _spans(traced.command_spans, {"PING"})
    assert [s.name for s in spans if s.name == "PING"] == ["PING"]
    assert len(traced.store_spans.get_finished_spans()) == before


async def test_tracing_off_sends_no_context_and_starts_no_thread(tmp_path: Path) -> None:
    assert tracing.active() is None
    threads_before = {t.name for t in threading.enumerate()}
    command, store = await _start(tmp_path, traced=False)
    try:
        await _linked(command)
        assert await _ask(command, [b"SET", b"k", b"v"]) == b"+OK\r\n"
        assert store.tracing is None
        assert command.keyspace is not None
        started = {t.name for t in threading.enumerate()} - threads_before
        assert not [name for name in started if "span" in name.lower() or "otel" in name.lower()]
        # The store saw the PUT on its fast path, with no flag set: counted, not traced.
        assert store.stats.by_type[0x03] == 1
    finally:
        await command.shutdown()
        await store.shutdown()


async def test_the_store_follows_the_senders_sampled_flag(traced: Traced) -> None:
    """A context whose sampled flag is clear is followed, not recorded (parent-based)."""
    host, port = traced.store.addresses["store"]
    reader, writer = await asyncio.open_connection(host, port)
    try:
        unsampled = TraceContext(trace_id=7, span_id=8, flags=0)
        sampled = TraceContext(trace_id=9, span_id=10, flags=1)
        writer.write(encode_request(GetRequest(key=b"a"), 1, trace=unsampled))
        writer.write(encode_request(GetRequest(key=b"b"), 2, trace=sampled))
        async with asyncio.timeout(10):
            await reader.readexactly(2 * (24 + 1 + len(b"no such key")))
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    spans = await _spans(traced.store_spans, {"store GET"})
    assert [(s.context.trace_id if s.context else None) for s in spans] == [9]


async def test_a_read_recomputed_after_a_failed_fsync_has_one_span(
    traced: Traced, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GET behind a PUT whose fsync fails is answered again, without the write; it is
    still one request, so one span."""
    real_fsync = os.fsync
    failures = [OSError(errno.EIO, "Input/output error")]

    def failing_once(fd: int) -> None:
        if failures:
            raise failures.pop()
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_once)
    host, port = traced.store.addresses["store"]
    reader, writer = await asyncio.open_connection(host, port)
    context = TraceContext(trace_id=11, span_id=12, flags=1)
    try:
        writer.write(encode_request(PutRequest(key=b"k", value=b"v"), 1, trace=context))
        writer.write(encode_request(GetRequest(key=b"k"), 2, trace=context))
        frames = FrameDecoder()
        replies: list[Response] = []
        async with asyncio.timeout(10):
            while len(replies) < 2:
                frames.feed(await reader.read(4096))
                while isinstance(frame := frames.next_event(), Frame):
                    replies.append(decode_response(frame))
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    assert [r.status for r in replies] == [Status.STORAGE, Status.NOT_FOUND]
    spans = await _spans(traced.store_spans, {"store PUT", "store GET", "store fsync"})
    assert sorted(s.name for s in spans) == ["store GET", "store PUT", "store fsync"]
    fsync = _one(spans, "store fsync")
    assert fsync.status.status_code is StatusCode.ERROR
