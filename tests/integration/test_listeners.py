"""listen() on real loopback sockets: serving, bind retry with backoff, SO_REUSEPORT."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator

import pytest

from postoffice.core import listeners
from postoffice.core.listeners import bound_address, listen, make_socket
from postoffice.core.runtime import Backoff

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

_WAIT_S = 5.0  # upper bound on waits that should end quickly
_FAST = Backoff(initial_s=0.01, max_s=0.01)


class Echo(asyncio.Protocol):
    """Sends back what it receives."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def roundtrip(port: int, data: bytes = b"ping\n") -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), _WAIT_S)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.readexactly(len(data)), _WAIT_S)
    finally:
        writer.close()
        await writer.wait_closed()


async def stop(server: asyncio.Server) -> None:
    server.close()
    await asyncio.wait_for(server.wait_closed(), _WAIT_S)


class BindFailures(logging.Handler):
    """Counts listen()'s "bind failed" warnings; `first` is set at the first one."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.first = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("bind failed listener=test"):
            self.count += 1
            self.first.set()


@pytest.fixture
def bind_failures() -> Iterator[BindFailures]:
    handler = BindFailures()
    logger = logging.getLogger("postoffice.core.listeners")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.WARNING)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def blocker(*, listening: bool) -> socket.socket:
    """A socket holding a loopback port, bound with SO_REUSEADDR like ours."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    if listening:
        sock.listen()
    return sock


async def test_serves_on_an_ephemeral_port() -> None:
    server = await listen(Echo, host="127.0.0.1", port=0, name="test")
    try:
        host, port = bound_address(server)
        assert host == "127.0.0.1"
        assert port != 0
        assert await roundtrip(port) == b"ping\n"
    finally:
        await stop(server)


async def test_retries_until_a_busy_port_frees(bind_failures: BindFailures) -> None:
    holder = blocker(listening=True)
    port = holder.getsockname()[1]
    try:
        starting = asyncio.create_task(
            listen(Echo, host="127.0.0.1", port=port, name="test", backoff=_FAST)
        )
        await asyncio.wait_for(bind_failures.first.wait(), _WAIT_S)
        assert not starting.done()
    finally:
        holder.close()
    server = await asyncio.wait_for(starting, _WAIT_S)
    try:
        assert bound_address(server) == ("127.0.0.1", port)
        assert bind_failures.count >= 1
        assert await roundtrip(port) == b"ping\n"
    finally:
        await stop(server)


async def test_a_failed_listen_is_retried_too(
    bind_failures: BindFailures, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: bind succeeded, listen() failed, and listen() gave up (leaking the socket)."""
    rival = blocker(listening=False)
    port = rival.getsockname()[1]

    def bind_then_lose_the_race(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
        sock = make_socket(host, port, reuse_port=reuse_port)
        if rival.fileno() != -1:
            rival.listen()  # another process starts listening between our bind and listen
        return sock

    monkeypatch.setattr(listeners, "make_socket", bind_then_lose_the_race)
    starting = asyncio.create_task(
        listen(Echo, host="127.0.0.1", port=port, name="test", backoff=_FAST)
    )
    try:
        await asyncio.wait_for(bind_failures.first.wait(), _WAIT_S)
    finally:
        rival.close()
    server = await asyncio.wait_for(starting, _WAIT_S)
    try:
        assert await roundtrip(port) == b"ping\n"
    finally:
        await stop(server)


async def test_cancel_gives_up_retrying(bind_failures: BindFailures) -> None:
    holder = blocker(listening=True)
    try:
        port = holder.getsockname()[1]
        starting = asyncio.create_task(
            listen(Echo, host="127.0.0.1", port=port, name="test", backoff=_FAST)
        )
        await asyncio.wait_for(bind_failures.first.wait(), _WAIT_S)
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
    finally:
        holder.close()


async def test_reuse_port_shares_one_port() -> None:
    first = await listen(Echo, host="127.0.0.1", port=0, name="test", reuse_port=True)
    try:
        port = bound_address(first)[1]
        second = await asyncio.wait_for(
            listen(Echo, host="127.0.0.1", port=port, name="test", reuse_port=True, backoff=_FAST),
            _WAIT_S,
        )
        try:
            assert bound_address(second) == ("127.0.0.1", port)
            await stop(first)
            assert await roundtrip(port) == b"ping\n"  # the second one still serves
        finally:
            await stop(second)
    finally:
        await stop(first)


def test_make_socket_refuses_a_busy_port() -> None:
    holder = blocker(listening=True)
    try:
        with pytest.raises(OSError, match="Address already in use"):
            make_socket("127.0.0.1", holder.getsockname()[1])
    finally:
        holder.close()


async def test_a_host_that_does_not_resolve_is_a_config_error() -> None:
    """Retrying cannot fix a typo in the address: fail at once, naming it."""
    from postoffice.core.errors import ConfigError
    from postoffice.core.listeners import listen

    with pytest.raises(ConfigError, match=r"^cannot listen on host 'no-such-host\.invalid': "):
        await listen(asyncio.Protocol, host="no-such-host.invalid", port=0, name="typo")
