"""The command protocol over WebSocket (command/websocket.py) with a fake channel: one command
per message, one reply per message in order, errors closing with 1002."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from postoffice.command.config import CommandConfig
from postoffice.command.server import CommandServer
from postoffice.command.websocket import CommandBridge, max_message_bytes, one_command
from postoffice.core.clock import FakeClock
from postoffice.core.errors import RespProtocolError


@dataclass
class FakeChannel:
    """What the bridge sends, and how it closed."""

    sent: list[bytes | str] = field(default_factory=list)
    closed: tuple[int, str] | None = None
    sent_one: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def peer(self) -> str:
        return "127.0.0.1:5555"

    def send(self, message: bytes | str) -> None:
        self.sent.append(message)
        self.sent_one.set()

    def close(self, code: int, reason: str = "") -> None:
        if self.closed is None:
            self.closed = (code, reason)

    def extra_info(self, name: str) -> object:
        return {"peername": ("127.0.0.1", 5555), "sockname": ("127.0.0.1", 6381)}.get(name)

    def write_buffer_size(self) -> int:
        return 0


@pytest.fixture
async def server() -> AsyncIterator[CommandServer]:
    server = CommandServer(CommandConfig(metrics_port=None, max_bulk_bytes=4096), clock=FakeClock())
    server.pool.start()
    yield server
    server.pool.close()


class TestOneCommand:
    @pytest.mark.parametrize(
        ("message", "fed"),
        [
            (b"PING", b"PING\r\n"),
            (b"PING\n", b"PING\n"),
            (b"*1\r\n$4\r\nPING\r\n", b"*1\r\n$4\r\nPING\r\n"),
            (b"ECHO 'a b'", b"ECHO 'a b'\r\n"),
        ],
    )
    def test_one_command_is_fed_as_the_port_would_read_it(
        self, server: CommandServer, message: bytes, fed: bytes
    ) -> None:
        assert one_command(server, message) == fed

    @pytest.mark.parametrize(
        ("message", "error"),
        [
            (b"", "Protocol error: empty message, expected one command"),
            (b"  \r\n", "Protocol error: empty message, expected one command"),
            (b"PING\r\nPING\r\n", "Protocol error: more than one command in message"),
            (b"*2\r\n$4\r\nECHO\r\n", "Protocol error: incomplete command in message"),
            (b"*1\r\n$5000\r\n", "Protocol error: invalid bulk length"),
            (b'SET """k""" v', "Protocol error: unbalanced quotes in request"),
        ],
    )
    def test_anything_but_one_whole_command_is_refused(
        self, server: CommandServer, message: bytes, error: str
    ) -> None:
        with pytest.raises(RespProtocolError, match=rf"^{error}"):
            one_command(server, message)

    def test_the_message_limit_follows_proto_max_bulk_len(self, server: CommandServer) -> None:
        assert max_message_bytes(server) == 4096 + 64 * 1024
        server.config_set([("proto-max-bulk-len", "8192")])
        assert max_message_bytes(server) == 8192 + 64 * 1024


class TestBridge:
    async def test_each_reply_is_one_message_of_the_requests_kind(
        self, server: CommandServer
    ) -> None:
        channel = FakeChannel()
        bridge = CommandBridge(server, channel)
        bridge.on_message("PING")
        bridge.on_message(b"*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n")
        assert channel.sent == ["+PONG\r\n", b"$2\r\nhi\r\n"]

    async def test_the_client_is_one_of_the_servers(self, server: CommandServer) -> None:
        channel = FakeChannel()
        bridge = CommandBridge(server, channel)
        bridge.on_message("CLIENT SETNAME browser")
        assert [c.name for c in server.clients()] == [b"browser"]
        assert bridge.conn.peer == "127.0.0.1:5555"
        bridge.on_close()
        assert list(server.clients()) == []
        assert server.manager.active == 0

    async def test_two_commands_in_a_message_get_the_error_and_1002(
        self, server: CommandServer
    ) -> None:
        channel = FakeChannel()
        bridge = CommandBridge(server, channel)
        bridge.on_message("PING\r\nPING\r\n")
        bridge.on_message("PING")  # after the close: never run
        assert channel.sent == ["-ERR Protocol error: more than one command in message\r\n"]
        assert channel.closed == (1002, "Protocol error: more than one command in message")

    async def test_quit_is_answered_then_closed_with_1000(self, server: CommandServer) -> None:
        channel = FakeChannel()
        bridge = CommandBridge(server, channel)
        bridge.on_message("QUIT")
        assert channel.sent == ["+OK\r\n"]
        assert channel.closed is not None
        assert channel.closed[0] == 1000

    async def test_auth_is_needed_as_on_the_port(self) -> None:
        server = CommandServer(
            CommandConfig(metrics_port=None, requirepass="pw"), clock=FakeClock()
        )
        channel = FakeChannel()
        bridge = CommandBridge(server, channel)
        bridge.on_message("PING")
        bridge.on_message("AUTH pw")
        bridge.on_message("PING")
        first, second, third = channel.sent
        assert str(first).startswith("-NOAUTH")
        assert (second, third) == ("+OK\r\n", "+PONG\r\n")
