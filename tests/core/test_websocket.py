"""WebSocket on HttpProtocol (core/websocket.py) over an in-memory transport: the handshake,
whole messages to the handler, and the closes a bad peer gets (1009, 1002, 1007)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, Pong, TextMessage

from postoffice.core.http import HttpProtocol
from postoffice.core.httpapi import (
    HttpRequest,
    MessageHandler,
    Response,
    Routes,
    WebSocketChannel,
    WebSocketRoute,
)
from postoffice.core.websocket import handshake, stream_opener
from tests.fakes import FakeTransport

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3's example
LIMIT = 1000


@dataclass
class Echo:
    """A handler that answers each message with itself, and remembers its end."""

    channel: WebSocketChannel
    seen: list[bytes | str] = field(default_factory=list)
    closed: bool = False

    def on_message(self, message: bytes | str) -> None:
        self.seen.append(message)
        self.channel.send(message)

    def on_close(self) -> None:
        self.closed = True

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


HANDLERS: list[Echo] = []


def _open(request: HttpRequest, channel: WebSocketChannel) -> MessageHandler:
    handler = Echo(channel)
    HANDLERS.append(handler)
    return handler


ROUTES: Routes = {
    "/ws": WebSocketRoute(opener=_open, max_message_bytes=lambda: LIMIT),
    "/locked": WebSocketRoute(opener=_open, max_message_bytes=lambda: LIMIT, password=lambda: "pw"),
}


def _upgrade(path: str = "/ws", extra: str = "") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


def connect() -> tuple[HttpProtocol, FakeTransport, Connection, Echo]:
    """An upgraded connection: the server side, its transport, a client, the handler."""
    HANDLERS.clear()
    protocol = HttpProtocol(ROUTES)
    transport = FakeTransport(protocol, auto_lost=False)
    protocol.connection_made(transport)
    protocol.data_received(_upgrade())
    head = transport.take()
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
    [handler] = HANDLERS
    return protocol, transport, Connection(ConnectionType.CLIENT), handler


def send(
    protocol: HttpProtocol, transport: FakeTransport, client: Connection, *events: Event
) -> list[Event]:
    for event in events:
        protocol.data_received(client.send(event))
    client.receive_data(transport.take())
    return list(client.events())


def close_code(events: list[Event]) -> int:
    [close] = [e for e in events if isinstance(e, CloseConnection)]
    return close.code


class TestHandshake:
    def test_the_accept_token_is_rfc_6455s(self) -> None:
        request = HttpRequest(
            method="GET",
            path="/ws",
            headers=(("sec-websocket-key", KEY), ("sec-websocket-version", "13")),
        )
        headers = handshake(request)
        assert isinstance(headers, list)
        assert ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") in headers

    @pytest.mark.parametrize(
        ("method", "headers", "status"),
        [
            ("POST", (("sec-websocket-key", KEY), ("sec-websocket-version", "13")), 405),
            ("GET", (("sec-websocket-key", KEY), ("sec-websocket-version", "8")), 426),
            ("GET", (("sec-websocket-version", "13"),), 400),
            ("GET", (("sec-websocket-key", "short"), ("sec-websocket-version", "13")), 400),
        ],
    )
    def test_bad_handshakes_are_refused(
        self, method: str, headers: tuple[tuple[str, str], ...], status: int
    ) -> None:
        refused = handshake(HttpRequest(method=method, path="/ws", headers=headers))
        assert isinstance(refused, Response)
        assert refused.status == status

    def test_a_locked_route_needs_credentials_before_the_upgrade(self) -> None:
        protocol = HttpProtocol(ROUTES)
        transport = FakeTransport(protocol, auto_lost=False)
        protocol.connection_made(transport)
        protocol.data_received(_upgrade("/locked"))
        assert transport.take().startswith(b"HTTP/1.1 401 ")
        protocol.data_received(_upgrade("/locked", "Authorization: Bearer pw\r\n"))
        assert transport.take().startswith(b"HTTP/1.1 101 ")


class TestMessages:
    def test_text_and_binary_messages_reach_the_handler_whole(self) -> None:
        protocol, transport, client, handler = connect()
        events = send(
            protocol,
            transport,
            client,
            TextMessage(data="hel", message_finished=False),
            TextMessage(data="lo"),
            BytesMessage(data=b"\x00\xff"),
        )
        assert handler.seen == ["hello", b"\x00\xff"]
        assert [(type(e), e.data) for e in events if isinstance(e, TextMessage | BytesMessage)] == [
            (TextMessage, "hello"),
            (BytesMessage, b"\x00\xff"),
        ]

    def test_bytes_after_the_handshake_in_the_same_read_are_served(self) -> None:
        HANDLERS.clear()
        protocol = HttpProtocol(ROUTES)
        transport = FakeTransport(protocol, auto_lost=False)
        protocol.connection_made(transport)
        client = Connection(ConnectionType.CLIENT)
        protocol.data_received(_upgrade() + client.send(TextMessage(data="early")))
        assert HANDLERS[0].seen == ["early"]

    def test_a_ping_is_answered_with_a_pong(self) -> None:
        protocol, transport, client, _ = connect()
        events = send(protocol, transport, client, Ping(payload=b"hi"))
        assert [e for e in events if isinstance(e, Pong)] == [Pong(payload=b"hi")]

    def test_a_message_over_the_limit_is_closed_with_1009(self) -> None:
        protocol, transport, client, handler = connect()
        events = send(protocol, transport, client, BytesMessage(data=b"x" * (LIMIT + 1)))
        assert close_code(events) == 1009
        assert handler.seen == []
        assert transport.closed

    def test_fragments_over_the_limit_together_are_closed_with_1009(self) -> None:
        protocol, transport, client, _ = connect()
        parts = [BytesMessage(data=b"x" * 400, message_finished=False) for _ in range(3)]
        assert close_code(send(protocol, transport, client, *parts)) == 1009

    def test_garbage_is_closed_with_1002(self) -> None:
        protocol, transport, client, handler = connect()
        protocol.data_received(b"\xf1\x85\x00\x00\x00\x00hello")  # reserved bits set
        client.receive_data(transport.take())
        assert close_code(list(client.events())) == 1002
        assert transport.closed
        protocol.connection_lost(None)
        assert handler.closed

    def test_invalid_utf8_in_a_text_message_is_closed_with_1007(self) -> None:
        protocol, transport, client, _ = connect()
        # A text frame (opcode 1), masked with a zero key, carrying 0xff.
        protocol.data_received(b"\x81\x81\x00\x00\x00\x00\xff")
        client.receive_data(transport.take())
        assert close_code(list(client.events())) == 1007

    def test_the_peers_close_is_answered(self) -> None:
        protocol, transport, client, _ = connect()
        events = send(protocol, transport, client, CloseConnection(code=1000, reason="bye"))
        assert close_code(events) == 1000
        assert transport.closed

    def test_shutdown_closes_with_1001(self) -> None:
        protocol, transport, client, _ = connect()
        protocol.shutdown_requested()
        client.receive_data(transport.take())
        assert close_code(list(client.events())) == 1001


async def _lines() -> AsyncIterator[bytes]:
    yield b'{"event": "hello"}\n'
    yield b'{"event": "published"}\n'


async def test_a_stream_route_sends_one_line_per_text_message_then_closes() -> None:
    routes: Routes = {
        "/events": WebSocketRoute(opener=stream_opener(_lines), max_message_bytes=lambda: 10)
    }
    protocol = HttpProtocol(routes)
    transport = FakeTransport(protocol, auto_lost=False)
    protocol.connection_made(transport)
    protocol.data_received(_upgrade("/events"))
    assert transport.take().startswith(b"HTTP/1.1 101 ")
    client = Connection(ConnectionType.CLIENT)
    events: list[Event] = []
    while not any(isinstance(e, CloseConnection) for e in events):  # the feed is a task
        client.receive_data(await transport.next_write(timeout_s=5.0))
        events += client.events()
    texts = [e.data for e in events if isinstance(e, TextMessage)]
    assert texts == ['{"event": "hello"}', '{"event": "published"}']
    assert close_code(events) == 1000
