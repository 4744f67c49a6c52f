"""The command server with an embedded store, in-process on a real socket and a real engine:
when replies leave. A durable write's OK waits for the fsync that covers it, replies keep
request order behind it, and one fsync answers every connection's writes."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from postoffice.command.config import CommandConfig
from postoffice.command.embedded import EmbeddedKeyspace
from postoffice.command.server import CommandServer
from postoffice.core.resp import encode_command
from postoffice.store.errors import StoreStorageError
from tests.fakes import SyncGate, committer_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class Peer:
    """A raw RESP connection to the server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, server: CommandServer) -> Peer:
        host, port = server.addresses["command"]
        return cls(*await asyncio.open_connection(host, port))

    def send(self, *commands: list[bytes]) -> None:
        self.writer.write(b"".join(encode_command(c) for c in commands))

    async def read_exactly(self, expected: bytes, timeout_s: float = 10) -> bytes:
        async with asyncio.timeout(timeout_s):
            return await self.reader.readexactly(len(expected))

    async def nothing_within(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                return not await self.reader.read(1)
        except TimeoutError:
            return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[CommandServer]:
    config = CommandConfig(port=0, metrics_port=None, store_dir=tmp_path / "store")
    srv = CommandServer(config)
    await srv.startup()
    try:
        yield srv
    finally:
        await srv.shutdown()


def keyspace_of(server: CommandServer) -> EmbeddedKeyspace:
    keyspace = server.keyspace
    assert isinstance(keyspace, EmbeddedKeyspace)
    return keyspace


async def test_an_ok_for_set_leaves_only_after_its_fsync(server: CommandServer) -> None:
    gate = SyncGate(keyspace_of(server).commit)
    peer = await Peer.open(server)
    peer.send([b"SET", b"k", b"v"], [b"GET", b"k"], [b"PING"])
    assert await peer.nothing_within(0.3)  # the fsync is held: no reply, not even the GET's
    assert gate.calls
    gate.opened.set()
    assert await peer.read_exactly(b"+OK\r\n$1\r\nv\r\n+PONG\r\n") == b"+OK\r\n$1\r\nv\r\n+PONG\r\n"
    await peer.close()


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        ([b"MSET", b"a", b"1", b"b", b"2"], b"+OK\r\n"),
        ([b"DEL", b"there", b"absent"], b":1\r\n"),
    ],
)
async def test_mset_and_del_wait_for_their_fsync_too(
    server: CommandServer, command: list[bytes], reply: bytes
) -> None:
    peer = await Peer.open(server)
    peer.send([b"SET", b"there", b"1"])
    assert await peer.read_exactly(b"+OK\r\n") == b"+OK\r\n"
    gate = SyncGate(keyspace_of(server).commit)
    peer.send(command)
    assert await peer.nothing_within(0.3)
    assert gate.calls
    gate.opened.set()
    assert await peer.read_exactly(reply) == reply
    await peer.close()


async def test_reads_are_answered_at_once_while_another_connection_waits(
    server: CommandServer,
) -> None:
    gate = SyncGate(keyspace_of(server).commit)
    writer = await Peer.open(server)
    reader = await Peer.open(server)
    writer.send([b"SET", b"k", b"v"])
    while not gate.calls:
        await asyncio.sleep(0.01)
    reader.send([b"GET", b"k"], [b"DEL", b"absent"], [b"DBSIZE"])  # no write of its own
    expected = b"$1\r\nv\r\n:0\r\n:1\r\n"
    assert await reader.read_exactly(expected) == expected
    assert await writer.nothing_within(0.1)
    gate.opened.set()
    assert await writer.read_exactly(b"+OK\r\n") == b"+OK\r\n"
    await writer.close()
    await reader.close()


async def test_one_fsync_answers_every_connection(server: CommandServer) -> None:
    keyspace = keyspace_of(server)
    gate = SyncGate(keyspace.commit)
    first = await Peer.open(server)
    first.send([b"SET", b"first", b"1"])
    while not gate.calls:  # the first sync is running (held)
        await asyncio.sleep(0.01)
    peers = [await Peer.open(server) for _ in range(20)]
    for i, peer in enumerate(peers):
        peer.send(*([b"SET", b"p%d-%d" % (i, n), b"x" * 100] for n in range(5)))
    async with asyncio.timeout(10):  # every write is appended while the first sync is held
        while keyspace.requests < 101:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # and the loop iteration that appended the last one is over
    gate.opened.set()
    assert await first.read_exactly(b"+OK\r\n") == b"+OK\r\n"
    for peer in peers:
        assert await peer.read_exactly(b"+OK\r\n" * 5) == b"+OK\r\n" * 5
    # The first sync was asked for ticket 1, and covers all that was written when it ran:
    # every reply may leave after it. The committer then syncs for the newest ticket
    # asked for, 101, at most once more: two fsyncs at most for 101 writes on 21
    # connections (the second may not have started yet when the replies are read).
    assert gate.calls[0] == 1
    assert gate.calls[1:] in ([], [101])
    for peer in (first, *peers):
        await peer.close()


async def test_a_failed_fsync_fails_the_writes_it_covers(server: CommandServer) -> None:
    committer = committer_of(keyspace_of(server).commit)
    real_sync = committer.sync
    failures = [StoreStorageError("cannot fsync the log: disk on fire")]

    def sync(ticket: int) -> int:
        if failures:
            raise failures.pop()
        return real_sync(ticket)

    committer.sync = sync
    peer = await Peer.open(server)
    peer.send([b"SET", b"a", b"1"], [b"GET", b"a"])
    expected = (
        b"-ERR store refused the request (STORAGE): cannot fsync the log: disk on fire\r\n"
        b"$1\r\n1\r\n"  # not a write: only the writes fail
    )
    assert await peer.read_exactly(expected) == expected
    peer.send([b"SET", b"b", b"2"])
    assert await peer.read_exactly(b"+OK\r\n") == b"+OK\r\n"  # the next sync succeeds
    await peer.close()


async def test_interval_durability_answers_writes_at_once(tmp_path: Path) -> None:
    config = CommandConfig(
        port=0, metrics_port=None, store_dir=tmp_path / "store", store_durability="interval"
    )
    srv = CommandServer(config)
    await srv.startup()
    try:
        keyspace = keyspace_of(srv)
        commit = keyspace.commit  # writes go out once per loop iteration, with no fsync to wait for
        assert commit is not None
        assert commit.committer is None
        peer = await Peer.open(srv)
        peer.send([b"SET", b"k", b"v"], [b"GET", b"k"])
        assert await peer.read_exactly(b"+OK\r\n$1\r\nv\r\n") == b"+OK\r\n$1\r\nv\r\n"
        await peer.close()
    finally:
        await srv.shutdown()
    assert keyspace.store is None  # closed by the shutdown


@pytest.mark.parametrize("durability", ["interval", "never"])
async def test_pipelined_sets_are_written_once_per_read_not_once_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durability: str
) -> None:
    """Without fsync too, a read's SETs go to the log in one write(2), and each OK leaves
    only once its record is in the file."""
    config = CommandConfig(
        port=0, metrics_port=None, store_dir=tmp_path / "store", store_durability=durability
    )
    srv = CommandServer(config)
    await srv.startup()
    log_dir = tmp_path / "store" / "log"
    writes: list[int] = []
    real_pwrite = os.pwrite

    def pwrite(fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        writes.append(len(data))
        return real_pwrite(fd, data, offset)

    try:
        peer = await Peer.open(srv)
        peer.send([b"SET", b"warm", b"up"])
        assert await peer.read_exactly(b"+OK\r\n") == b"+OK\r\n"
        monkeypatch.setattr(os, "pwrite", pwrite)
        n = 200
        peer.send(*([b"SET", b"k%03d" % i, b"v" * 100] for i in range(n)))
        assert await peer.read_exactly(b"+OK\r\n" * n) == b"+OK\r\n" * n
        # Every record is in the file once its OK is read (the server shares this process).
        assert sum(p.stat().st_size for p in log_dir.iterdir()) >= n * 100
        # One write per read of the pipeline (a few reads at most), not one per SET.
        assert 1 <= len(writes) <= 10
        await peer.close()
    finally:
        monkeypatch.undo()
        await srv.shutdown()
