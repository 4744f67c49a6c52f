"""Tracing between real processes: `command serve --store` and `store serve` with --trace
send their spans, as OTLP over HTTP/protobuf, to a tiny collector in the test; without
--trace nothing is sent and OpenTelemetry is never imported."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.integration.conftest import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

Serve = Callable[..., ServerProcess]


@dataclass
class Received:
    """A span as the collector got it, with the service that sent it."""

    service: str
    name: str
    kind: int
    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    attributes: dict[str, str] = field(default_factory=dict)


class Collector(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP receiver of traces on 127.0.0.1: every request body decoded."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.posts = 0
        self.spans: list[Received] = []

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def target(self) -> str:
        return f"otlp://127.0.0.1:{self.port}"

    def take(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        got: list[Received] = []
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                got.extend(_received(attributes["service.name"], s) for s in scope_spans.spans)
        with self.lock:
            self.posts += 1
            self.spans.extend(got)

    def wait_for(self, wanted: set[tuple[str, str]], timeout_s: float = 30) -> list[Received]:
        """The spans received once every (service, name) in `wanted` is among them."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                spans = list(self.spans)
            if wanted <= {(s.service, s.name) for s in spans}:
                return spans
            time.sleep(0.05)
        raise AssertionError(f"{wanted} not all among {[(s.service, s.name) for s in spans]}")


def _received(service: str, span: Span) -> Received:
    return Received(
        service=service,
        name=span.name,
        kind=span.kind,
        trace_id=span.trace_id,
        span_id=span.span_id,
        parent_span_id=span.parent_span_id,
        attributes={a.key: a.value.string_value for a in span.attributes},
    )


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path == "/v1/traces":
            self.server.take(body)
            reply = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
        else:
            reply = b""
            self.send_response(404)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: object) -> None:
        pass  # the test's output is for its assertions


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def _pair(
    serve: Serve, tmp_path: Path, *trace: str, workers: int = 1
) -> tuple[ServerProcess, ServerProcess, redis.Redis]:
    store = serve(
        "store", "--port", "0", "--metrics-port", "0", "--data-dir", str(tmp_path), *trace
    )
    command = serve(
        "command",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--store",
        f"127.0.0.1:{store.port}",
        "--workers",
        str(workers),
        *trace,
    )
    host, port = command.listeners["command"]
    r = redis.Redis(host=host, port=port, socket_timeout=10)
    deadline = time.monotonic() + 10
    while r.info("keyspace")["store_connected"] != 1:
        assert time.monotonic() < deadline, "the command server never reached the store"
        time.sleep(0.02)
    return store, command, r


def test_a_command_and_its_store_request_share_one_trace_across_processes(
    serve: Serve, tmp_path: Path, collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # export every 0.1 s, not 5 s
    _, _, r = _pair(serve, tmp_path, "--trace", collector.target)
    assert r.set("user:1", "secret-value")

    spans = collector.wait_for(
        {
            ("postoffice-command", "SET"),
            ("postoffice-command", "store PUT"),
            ("postoffice-store", "store PUT"),
            ("postoffice-store", "store fsync"),
        }
    )
    by_name = {(s.service, s.name): s for s in spans if s.name != "INFO"}
    command = by_name["postoffice-command", "SET"]
    client = by_name["postoffice-command", "store PUT"]
    served = by_name["postoffice-store", "store PUT"]
    fsync = by_name["postoffice-store", "store fsync"]
    assert {s.trace_id for s in (command, client, served, fsync)} == {command.trace_id}
    assert len(command.trace_id) == 16
    assert command.parent_span_id == b""
    assert client.parent_span_id == command.span_id
    assert served.parent_span_id == client.span_id
    assert fsync.parent_span_id == served.span_id
    assert command.kind == Span.SpanKind.SPAN_KIND_SERVER
    assert client.kind == Span.SpanKind.SPAN_KIND_CLIENT
    assert served.kind == Span.SpanKind.SPAN_KIND_SERVER
    assert command.attributes == {"db.system": "redis-like", "db.operation.name": "SET"}
    assert all("secret-value" not in str(s.attributes) for s in spans)


def test_each_worker_traces_its_commands_under_workers(
    serve: Serve, tmp_path: Path, collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The primary hands --trace to its workers with the other settings.

    Under --workers no worker is the store's sole writer, so a SET also deletes the
    key's expiry: it reaches the store as one BATCH, not a PUT.
    """
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    _, _, r = _pair(serve, tmp_path, "--trace", collector.target, workers=2)
    assert r.set("k", "v")
    spans = collector.wait_for({("postoffice-command", "SET"), ("postoffice-store", "store BATCH")})
    command = next(s for s in spans if s.name == "SET")
    served = next(s for s in spans if s.service == "postoffice-store" and s.name == "store BATCH")
    assert served.trace_id == command.trace_id


def test_without_trace_nothing_is_sent(
    serve: Serve, tmp_path: Path, collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OTLP endpoint in the environment alone does not switch tracing on."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.port}")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    store, command, r = _pair(serve, tmp_path)
    for i in range(20):
        assert r.set(f"k{i}", "v")
        assert r.get(f"k{i}") == b"v"
    assert command.stop() == 0  # a traced server flushes its spans on the way out
    assert store.stop() == 0
    with collector.lock:
        assert collector.posts == 0


def test_the_servers_do_not_import_opentelemetry_when_tracing_is_off() -> None:
    code = (
        "import sys, postoffice.cli, postoffice.command.server, postoffice.store.server, "
        "postoffice.store.client, postoffice.ingest.server\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"
