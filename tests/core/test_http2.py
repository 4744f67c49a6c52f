"""HTTP/2 on HttpProtocol (core/http2.py) over an in-memory transport, driven by h2's own
client state machine, or by raw frames where a well-behaved client would refuse to send."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
)
from h2.settings import SettingCodes
from hpack import Encoder
from hyperframe.frame import DataFrame, HeadersFrame, SettingsFrame

from postoffice.core.http import H2_PREFACE, HttpProtocol
from postoffice.core.http2 import (
    INITIAL_WINDOW_BYTES,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_BYTES,
    MAX_HEADER_LIST_BYTES,
)
from postoffice.core.httpapi import (
    Endpoint,
    HttpRequest,
    Response,
    Routes,
    Stream,
    json_response,
)
from tests.fakes import FakeTransport


def _put(request: HttpRequest) -> Response:
    return json_response({"got": json.loads(request.body)})


async def _slow() -> Response:
    await asyncio.sleep(0)
    return Response(status=200, body=b"later\n")


async def _two_lines() -> AsyncIterator[bytes]:
    yield b"one\n"
    yield b"two\n"


ROUTES: Routes = {
    "/events": lambda: Stream(chunks=_two_lines(), content_type="application/x-ndjson"),
    "/healthz": lambda: Response(status=200, body=b"ok\n"),
    "/big": lambda: Response(status=200, body=b"x" * 100_000),
    "/slow": _slow,
    "/config": Endpoint(handlers={"PUT": _put}, max_body_bytes=100),
}


def connect() -> tuple[HttpProtocol, FakeTransport]:
    protocol = HttpProtocol(ROUTES)
    transport = FakeTransport(protocol, auto_lost=False)
    protocol.connection_made(transport)
    return protocol, transport


def client(*, window: int | None = None) -> H2Connection:
    conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    if window is not None:
        conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: window})
    return conn


def exchange(protocol: HttpProtocol, transport: FakeTransport, conn: H2Connection) -> list[Event]:
    """Send what `conn` queued, and feed it what the server answered."""
    protocol.data_received(conn.data_to_send())
    return conn.receive_data(transport.take())


def headers(
    path: str, method: str = "GET", *extra: tuple[bytes, bytes]
) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", method.encode()),
        (b":path", path.encode()),
        (b":scheme", b"http"),
        (b":authority", b"t"),
        *extra,
    ]


def response(events: Sequence[Event], stream_id: int) -> tuple[int, bytes, bool]:
    """(status, body, ended) of `stream_id` in `events`."""
    status, body, ended = 0, b"", False
    for event in events:
        if getattr(event, "stream_id", None) != stream_id:
            continue
        if isinstance(event, ResponseReceived):
            status = int(dict(event.headers or [])[b":status"])
        elif isinstance(event, DataReceived):
            body += event.data or b""
        elif isinstance(event, StreamEnded):
            ended = True
    return status, body, ended


def goaway(events: Sequence[Event]) -> ConnectionTerminated:
    [terminated] = [e for e in events if isinstance(e, ConnectionTerminated)]
    return terminated


class TestRequests:
    def test_prior_knowledge_get_is_answered_on_its_stream(self) -> None:
        protocol, transport = connect()
        conn = client()
        conn.send_headers(1, headers("/healthz"), end_stream=True)
        events = exchange(protocol, transport, conn)
        assert response(events, 1) == (200, b"ok\n", True)
        assert "HTTP2" in repr(protocol)

    def test_the_preface_split_across_reads_is_recognised(self) -> None:
        protocol, transport = connect()
        conn = client()
        conn.send_headers(1, headers("/healthz"), end_stream=True)
        data = conn.data_to_send()
        for i in range(len(data)):
            protocol.data_received(data[i : i + 1])
        assert response(conn.receive_data(transport.take()), 1) == (200, b"ok\n", True)

    def test_our_settings_announce_the_limits(self) -> None:
        protocol, transport = connect()
        events = exchange(protocol, transport, client())
        [changed] = [e for e in events if isinstance(e, RemoteSettingsChanged)]
        values = {code: s.new_value for code, s in changed.changed_settings.items()}
        assert values[SettingCodes.MAX_CONCURRENT_STREAMS] == MAX_CONCURRENT_STREAMS
        assert values[SettingCodes.MAX_HEADER_LIST_SIZE] == MAX_HEADER_LIST_BYTES
        assert values[SettingCodes.MAX_FRAME_SIZE] == MAX_FRAME_BYTES
        assert values[SettingCodes.INITIAL_WINDOW_SIZE] == INITIAL_WINDOW_BYTES
        assert values[SettingCodes.ENABLE_PUSH] == 0

    def test_unknown_path_and_put_body(self) -> None:
        protocol, transport = connect()
        conn = client()
        conn.send_headers(1, headers("/nowhere"), end_stream=True)
        put = headers("/config", "PUT", (b"content-type", b"application/json"))
        conn.send_headers(3, put)
        conn.send_data(3, b'{"a": 1}', end_stream=True)
        events = exchange(protocol, transport, conn)
        assert response(events, 1)[0] == 404
        status, body, _ = response(events, 3)
        assert (status, json.loads(body)) == (200, {"got": {"a": 1}})

    def test_body_over_the_limit_is_413_and_the_connection_goes_on(self) -> None:
        protocol, transport = connect()
        conn = client()
        put = headers("/config", "PUT", (b"content-type", b"application/json"))
        conn.send_headers(1, put)
        conn.send_data(1, b"x" * 101, end_stream=True)
        events = exchange(protocol, transport, conn)
        status, body, _ = response(events, 1)
        assert status == 413
        assert json.loads(body)["message"] == "request body exceeds limit 100 bytes"
        conn.send_headers(3, headers("/healthz"), end_stream=True)
        assert response(exchange(protocol, transport, conn), 3) == (200, b"ok\n", True)

    async def test_an_async_route_answers_later(self) -> None:
        protocol, transport = connect()
        conn = client()
        conn.send_headers(1, headers("/slow"), end_stream=True)
        protocol.data_received(conn.data_to_send())
        conn.receive_data(transport.take())
        events = conn.receive_data(await transport.next_write())
        assert response(events, 1) == (200, b"later\n", True)

    async def test_a_stream_route_sends_its_chunks_as_data_frames(self) -> None:
        protocol, transport = connect()
        conn = client()
        conn.send_headers(1, headers("/events"), end_stream=True)
        protocol.data_received(conn.data_to_send())
        events = conn.receive_data(transport.take())
        while response(events, 1)[2] is False:  # bounded by next_write's timeout
            events += conn.receive_data(await transport.next_write(timeout_s=5.0))
        assert response(events, 1) == (200, b"one\ntwo\n", True)

    async def test_shutdown_answers_the_streams_in_flight_then_says_goaway(self) -> None:
        protocol, transport = connect()
        conn = client()
        conn.send_headers(1, headers("/slow"), end_stream=True)
        exchange(protocol, transport, conn)
        protocol.shutdown_requested()
        assert not transport.closed  # stream 1 is still owed its answer
        events = conn.receive_data(await transport.next_write())
        assert response(events, 1) == (200, b"later\n", True)
        assert goaway(events).error_code == ErrorCodes.NO_ERROR
        assert transport.closed

    def test_idle_timeout_says_goaway_before_the_close(self) -> None:
        protocol, transport = connect()
        conn = client()
        conn.send_headers(1, headers("/healthz"), end_stream=True)
        exchange(protocol, transport, conn)
        assert protocol.can_idle_close()
        protocol.on_idle_timeout()
        assert goaway(conn.receive_data(transport.take())).error_code == ErrorCodes.NO_ERROR
        assert transport.closed

    def test_a_body_larger_than_the_clients_window_waits_for_window_updates(self) -> None:
        protocol, transport = connect()
        conn = client(window=1000)
        conn.send_headers(1, headers("/big"), end_stream=True)
        events = exchange(protocol, transport, conn)
        status, body, ended = response(events, 1)
        assert (status, len(body), ended) == (200, 1000, False)
        received = body
        for _ in range(200):  # bounded: each round grants the window back
            conn.acknowledge_received_data(len(body), 1)
            conn.increment_flow_control_window(len(body) or 1, 1)
            events = exchange(protocol, transport, conn)
            _, body, ended = response(events, 1)
            received += body
            if ended:
                break
        assert received == b"x" * 100_000
        assert ended


class TestUpgrade:
    def test_upgrade_h2c_answers_101_then_the_request_over_http2(self) -> None:
        protocol, transport = connect()
        conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        settings = conn.initiate_upgrade_connection()
        assert settings is not None
        protocol.data_received(
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: " + settings + b"\r\n\r\n"
        )
        written = transport.take()
        head, sep, frames = written.partition(b"\r\n\r\n")
        assert sep
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"upgrade: h2c" in head.lower()
        protocol.data_received(conn.data_to_send())  # the client's preface
        events = conn.receive_data(frames + transport.take())
        assert response(events, 1) == (200, b"ok\n", True)

    def test_an_invalid_http2_settings_header_is_ignored_and_answered_over_http1(self) -> None:
        protocol, transport = connect()
        protocol.data_received(
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: !!\r\n\r\n"
        )
        assert transport.take().startswith(b"HTTP/1.1 200 OK\r\n")


def _raw(frames: Sequence[object]) -> bytes:
    return (
        H2_PREFACE
        + SettingsFrame(0).serialize()
        + b"".join(
            f.serialize()  # type: ignore[attr-defined]  # hyperframe frames are untyped here
            for f in frames
        )
    )


def _headers_frame(stream_id: int, block: bytes, *, end: bool = False) -> HeadersFrame:
    flags = ["END_HEADERS", "END_STREAM"] if end else ["END_HEADERS"]
    return HeadersFrame(stream_id, data=block, flags=flags)


class TestLimits:
    def _events(self, data: bytes) -> tuple[list[Event], FakeTransport]:
        protocol, transport = connect()
        protocol.data_received(data)
        conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        conn.data_to_send()
        return conn.receive_data(transport.take()), transport

    def test_streams_past_the_concurrent_limit_get_goaway(self) -> None:
        encoder = Encoder()
        frames = [
            _headers_frame(2 * i + 1, encoder.encode(headers("/healthz")))  # body to come
            for i in range(MAX_CONCURRENT_STREAMS + 1)
        ]
        events, transport = self._events(_raw(frames))
        terminated = goaway(events)
        assert terminated.error_code == ErrorCodes.PROTOCOL_ERROR
        assert terminated.last_stream_id == 2 * MAX_CONCURRENT_STREAMS - 1  # the last served
        assert transport.closed

    def test_a_header_list_over_the_limit_gets_goaway(self) -> None:
        # Many headers that compress well: the block fits one frame, the list does not fit
        # the limit (RFC 9113 counts each header as name + value + 32).
        small = [(f"x-h{i}".encode(), b"v" * 600) for i in range(30)]
        block = Encoder().encode(headers("/healthz", "GET", *small))
        assert len(block) < MAX_FRAME_BYTES
        events, transport = self._events(_raw([_headers_frame(1, block, end=True)]))
        assert goaway(events).error_code == ErrorCodes.ENHANCE_YOUR_CALM
        assert transport.closed

    def test_a_frame_over_the_size_limit_gets_goaway(self) -> None:
        encoder = Encoder()
        frames = [
            _headers_frame(1, encoder.encode(headers("/config", "PUT"))),
            DataFrame(1, data=b"x" * (MAX_FRAME_BYTES + 1)),
        ]
        events, _ = self._events(_raw(frames))
        assert goaway(events).error_code == ErrorCodes.FRAME_SIZE_ERROR

    def test_data_past_the_window_gets_goaway(self) -> None:
        encoder = Encoder()
        data = [DataFrame(1, data=b"x" * MAX_FRAME_BYTES) for _ in range(5)]
        frames = [_headers_frame(1, encoder.encode(headers("/config", "PUT"))), *data]
        events, _ = self._events(_raw(frames))
        assert goaway(events).error_code == ErrorCodes.FLOW_CONTROL_ERROR

    def test_garbage_after_the_preface_gets_goaway_and_other_connections_go_on(self) -> None:
        events, transport = self._events(H2_PREFACE + b"\x00\x00\x04\xff" + b"\x00" * 50)
        assert goaway(events).error_code in (ErrorCodes.PROTOCOL_ERROR, ErrorCodes.FRAME_SIZE_ERROR)
        assert transport.closed
        protocol, other = connect()
        conn = client()
        conn.send_headers(1, headers("/healthz"), end_stream=True)
        assert response(exchange(protocol, other, conn), 1) == (200, b"ok\n", True)


@pytest.mark.parametrize("cut", [1, 10])
def test_a_request_that_only_looks_like_the_preface_at_first_is_http1(cut: int) -> None:
    protocol, transport = connect()
    protocol.data_received(H2_PREFACE[:cut])
    assert transport.written == b""
    protocol.data_received(b"XX / HTTP/1.1\r\n\r\n")
    assert transport.take().startswith(b"HTTP/1.1 400 ")
