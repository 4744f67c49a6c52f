"""The command connection's batch loop against a client that does not read or never stops
sending, over in-memory transports: replies written as they pass the budget, no command
run while the write side is blocked, and a turn handed back to the other clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from postoffice.command.config import CommandConfig
from postoffice.command.connection import REPLY_BUDGET_BYTES, SLICE_COMMANDS, SLICE_S
from postoffice.command.server import CommandConnection, CommandServer
from postoffice.core.clock import Clock, FakeClock
from postoffice.core.resp import encode_command
from postoffice.core.transport import ConnState
from tests.fakes import FakeTransport

#: Loop turns a test lets pass while it waits for the connection, at most.
MAX_TURNS = 10_000
TURNS_FOR_S = 10.0


class Peer:
    """A fake peer whose transport blocks the write side, as a real one does once its
    buffer passes the high-water mark, after `window` bytes it has not read."""

    def __init__(self, server: CommandServer, window: int | None = None) -> None:
        self.conn = CommandConnection(server)
        self.window = window
        self.unread = 0
        self.transport = FakeTransport(self.conn, on_write=self._wrote)
        self.received = bytearray()
        self.conn.connection_made(self.transport)

    def _wrote(self, data: bytes) -> None:
        self.received += data
        self.unread += len(data)
        if self.window is not None and self.unread > self.window:
            self.conn.pause_writing()

    def read_all(self) -> None:
        """The peer reads everything sent so far: the write side flows again."""
        self.unread = 0
        self.conn.resume_writing()

    def send(self, *commands: list[bytes]) -> None:
        self.conn.data_received(b"".join(encode_command(c) for c in commands))

    def take(self) -> bytes:
        data = bytes(self.received)
        self.received.clear()
        return data


@pytest.fixture
async def server() -> AsyncIterator[CommandServer]:
    made = CommandServer(CommandConfig(metrics_port=None), clock=FakeClock())
    made.pool.start()
    yield made
    made.pool.close()


async def turns_until(done: Callable[[], bool]) -> None:
    """Let the loop turn until `done()`: at least MAX_TURNS turns, and for as long as
    TURNS_FOR_S of wall time, since a durable write waits for a real fsync on a worker
    thread, which a disk busy with other work can keep for a good part of a second."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TURNS_FOR_S
    turns = 0
    while not done():
        if turns >= MAX_TURNS and loop.time() > deadline:
            raise AssertionError("the connection did not finish its batch")
        turns += 1
        await asyncio.sleep(0)


def state(conn: CommandConnection) -> ConnState:
    """The connection's state, read afresh (mypy would otherwise keep an old narrowing)."""
    return conn.state


def echo_reply(payload: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(payload), payload)


# -- the write side ------------------------------------------------------------------------


async def test_replies_are_written_as_they_pass_the_budget_and_wait_for_the_peer(
    server: CommandServer,
) -> None:
    """A read of 40 pipelined commands with 64 KiB replies, from a peer that reads
    nothing: once a write blocks the write side, no further command runs, so what the
    server holds is about one budget of replies, not the read's 2.5 MiB; each time the
    peer reads, the batch goes on in order."""
    peer = Peer(server, window=REPLY_BUDGET_BYTES)
    payloads = [b"%02d" % i + b"x" * (64 * 1024 - 2) for i in range(40)]
    peer.send(*([b"ECHO", p] for p in payloads))
    assert peer.conn.requests <= REPLY_BUDGET_BYTES // (64 * 1024) + 1
    assert len(peer.received) <= REPLY_BUDGET_BYTES + 64 * 1024 + 16
    assert state(peer.conn) is ConnState.WRITING_RESPONSE
    assert not peer.transport.reading
    got = peer.take()
    for _ in range(len(payloads)):
        if peer.conn.requests == len(payloads):
            break
        ran = peer.conn.requests
        peer.read_all()
        assert peer.conn.requests > ran  # the batch went on where it stopped
        got += peer.take()
    peer.read_all()
    assert got == b"".join(map(echo_reply, payloads))
    assert state(peer.conn) is ConnState.READING_HEADER
    assert peer.transport.reading


async def test_commands_arriving_while_the_peer_is_not_reading_wait(
    server: CommandServer,
) -> None:
    peer = Peer(server)
    peer.conn.pause_writing()
    peer.send([b"PING"])
    peer.send([b"ECHO", b"a"], [b"PING"])
    assert peer.take() == b""
    assert peer.conn.requests == 0
    peer.read_all()
    assert peer.take() == b"+PONG\r\n$1\r\na\r\n+PONG\r\n"
    assert state(peer.conn) is ConnState.READING_HEADER


async def test_replies_owed_behind_a_durable_write_stop_the_batch_at_the_budget(
    tmp_path: Path,
) -> None:
    """Under durability always, GETs pipelined behind a SET wait for its fsync with their
    replies held in memory: past the budget no further command runs until they are out."""
    config = CommandConfig(metrics_port=None, store_dir=tmp_path / "store")
    server = CommandServer(config, clock=FakeClock())
    server.pool.start()
    assert server.keyspace is not None
    await server.keyspace.start()
    try:
        peer = Peer(server)
        value = b"v" * (64 * 1024)
        peer.send([b"SET", b"big", value])
        await turns_until(lambda: bytes(peer.received) == b"+OK\r\n")
        peer.take()
        count = 40
        peer.send([b"SET", b"k", b"1"], *([b"GET", b"big"] for _ in range(count)))
        assert peer.conn.requests <= 1 + 1 + REPLY_BUDGET_BYTES // len(value) + 1
        want = b"+OK\r\n" + echo_reply(value) * count
        await turns_until(lambda: len(peer.received) >= len(want))
        assert peer.take() == want
        await turns_until(lambda: peer.conn.state is ConnState.READING_HEADER)
    finally:
        await server.shutdown()


# -- fairness ------------------------------------------------------------------------------


async def test_a_long_pipeline_hands_the_loop_back_after_its_turn(server: CommandServer) -> None:
    """Three turns' worth of PINGs in one read: one turn runs, another client is served
    before the rest, and the rest follow in order on the next turns."""
    greedy = Peer(server)
    other = Peer(server)
    count = 3 * SLICE_COMMANDS
    greedy.send(*([b"ECHO", b"%d" % i] for i in range(count)))
    assert greedy.conn.requests == SLICE_COMMANDS
    assert not greedy.transport.reading  # nothing more is read before its next turn
    other.send([b"PING"])
    assert other.take() == b"+PONG\r\n"
    assert greedy.conn.requests == SLICE_COMMANDS
    await turns_until(lambda: greedy.conn.state is ConnState.READING_HEADER)
    assert greedy.take() == b"".join(echo_reply(b"%d" % i) for i in range(count))
    assert greedy.transport.reading


class TickingClock:
    """A clock that moves on by `step` seconds each time it is read."""

    def __init__(self, step: float) -> None:
        self.now = 1000.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


async def test_a_pipeline_of_slow_commands_hands_the_loop_back_after_its_time() -> None:
    """Commands that take time end the turn after SLICE_S seconds, long before
    SLICE_COMMANDS of them have run."""
    clock: Clock = TickingClock(step=SLICE_S / 4)
    server = CommandServer(CommandConfig(metrics_port=None), clock=clock)
    greedy = Peer(server)
    greedy.send(*([b"PING"] for _ in range(200)))
    assert 0 < greedy.conn.requests < 50
    await turns_until(lambda: greedy.conn.state is ConnState.READING_HEADER)
    assert greedy.take() == b"+PONG\r\n" * 200
    assert greedy.conn.requests == 200
