"""Several IngestServers in-process as the nodes of a cluster, with a test Ownership (a
shared table of which node owns which file id, changed mid-test to model a takeover):
MOVED on the wire, and the real IngestClient following it and failing over, over real
sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import xxhash
import zstandard

from postoffice.core.errors import BrokenError
from postoffice.ingest.client import IngestClient
from postoffice.ingest.client.payload import open_payload, prepare, read_chunk_frame
from postoffice.ingest.config import IngestConfig
from postoffice.ingest.errors import (
    ErrorCode,
    IngestError,
    IngestStorageError,
    ShuttingDownError,
)
from postoffice.ingest.messages import (
    Ack,
    ErrorReply,
    Failed,
    FileId,
    Message,
    Published,
    Query,
    Status,
    UploadState,
)
from postoffice.ingest.ownership import Owner, moved_message
from postoffice.ingest.protocol import NEED_DATA, MessageDecoder, encode, encode_chunk
from postoffice.ingest.server import IngestServer
from tests.integration.conftest import POSTOFFICE, env_without_postoffice

pytestmark = pytest.mark.integration

REPLY_TIMEOUT_S = 10.0
SEED = 20261207
#: Chunks the survivor of a takeover holds already.
SEEDED = 10


@dataclass
class Table:
    """The cluster's ownership as one shared table: file id -> node name."""

    owners: dict[FileId, str] = field(default_factory=dict)
    nodes: dict[str, Owner] = field(default_factory=dict)
    #: Nodes held dead: their claims are there to be taken over.
    dead: set[str] = field(default_factory=set)
    #: Who a claim of a new upload goes to; None: the node asked (it claims it itself).
    claim_for: str | None = None
    claims: int = 0

    def lose(self, file_id: FileId, to: str) -> None:
        """A takeover: `to` owns `file_id` from now on (the old owner's lost notice)."""
        self.owners[file_id] = to


@dataclass
class NodeView:
    """One node's Ownership: the table, or, with `says`, its own opinion that node owns
    every upload (nodes that disagree, as mid-takeover)."""

    table: Table
    name: str
    says: str | None = None
    #: While set and not yet released: the node knows nothing and its claims hang (a
    #: node cut off from the cluster's store, which answers nothing).
    stall: asyncio.Event | None = None
    #: Raised by every claim (the cluster's store cannot be reached).
    fail: Exception | None = None

    @property
    def node(self) -> str:
        return self.name

    def owner(self, file_id: FileId) -> Owner | None:
        if self.stall is not None and not self.stall.is_set():
            return None
        name = self.says or self.table.owners.get(file_id)
        if name is None or name in self.table.dead:
            return None  # as the cluster: a dead owner is decided again
        return self.table.nodes[name]

    async def _ask(self) -> None:
        await asyncio.sleep(0)  # a real claim asks NATS: the chunk waits on the loop
        if self.fail is not None:
            raise self.fail
        if self.stall is not None:
            await self.stall.wait()

    async def claim(self, file_id: FileId) -> Owner:
        await self._ask()
        self.table.claims += 1
        name = self.table.owners.get(file_id)
        if name is None or name in self.table.dead:  # free, or a dead node's: taken
            name = self.table.owners[file_id] = self.table.claim_for or self.name
        return self.table.nodes[name]

    async def find(self, file_id: FileId) -> Owner | None:
        await self._ask()
        name = self.says or self.table.owners.get(file_id)
        if name is None:
            return None
        if name in self.table.dead:
            return await self.claim(file_id)
        return self.table.nodes[name]


@dataclass
class Cluster:
    table: Table
    servers: dict[str, IngestServer]
    views: dict[str, NodeView]
    stopped: set[str] = field(default_factory=set)

    def address(self, name: str) -> tuple[str, int]:
        return "127.0.0.1", self.servers[name].addresses["health"][1]

    def files(self, name: str) -> Path:
        return self.servers[name].config.files_path

    async def stop(self, name: str) -> None:
        self.stopped.add(name)
        await self.servers[name].shutdown()


@pytest.fixture
async def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    """Three nodes a, b, c; every node's ack port delivers every node's final events, and
    replays them to a late subscriber, as the cluster's event stream and its record of
    publishes make them do."""
    table = Table()
    servers: dict[str, IngestServer] = {}
    views: dict[str, NodeView] = {}
    for name in "abc":
        config = IngestConfig(
            sys_base=0,
            data_base=0,
            x=2,
            data_dir=tmp_path / name,
            fsync=False,
            cleanup_interval_s=3600,
            shutdown_timeout_s=2.0,
        )
        views[name] = NodeView(table, name)
        servers[name] = IngestServer(config, ownership=views[name])
    for name, server in servers.items():
        await server.startup()
        table.nodes[name] = Owner(
            node=name,
            host="127.0.0.1",
            health_port=server.addresses["health"][1],
            data_ports=tuple(server.data_ports()),
        )
    hubs = [server.acks for server in servers.values()]
    local = {id(hub): hub.publish for hub in hubs}

    def fan_out(file_id: FileId, message: Message) -> None:
        for publish in local.values():
            publish(file_id, message)

    for hub in hubs:
        monkeypatch.setattr(hub, "publish", fan_out)
    finals = [server.final_event for server in servers.values()]

    def any_final(file_id: FileId) -> Published | Failed | None:
        for final in finals:
            event = final(file_id)
            if event is not None:
                return event
        return None

    for server in servers.values():
        monkeypatch.setattr(server, "final_event", any_final)
    result = Cluster(table=table, servers=servers, views=views)
    yield result
    for name, server in servers.items():
        if name not in result.stopped:
            await server.shutdown()


class Peer:
    """A raw connection to one data port: frames out, messages in, within a timeout."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = MessageDecoder()

    async def ask(self, wire: bytes) -> Message:
        self.writer.write(wire)
        await self.writer.drain()
        async with asyncio.timeout(REPLY_TIMEOUT_S):
            while (event := self.decoder.next_event()) is NEED_DATA:
                block = await self.reader.read(65536)
                assert block, "the server closed the connection"
                self.decoder.feed(block)
        _, message = event
        return message

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


@pytest.fixture
async def peer() -> AsyncIterator[Callable[[IngestServer], Awaitable[Peer]]]:
    peers: list[Peer] = []

    async def open_peer(server: IngestServer) -> Peer:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.data_ports()[0])
        peers.append(Peer(reader, writer))
        return peers[-1]

    yield open_peer
    for p in peers:
        await p.close()


def chunk_wire(file_id: FileId, index: int, pieces: list[bytes], request_id: int) -> bytes:
    payload = b"".join(pieces)
    return encode_chunk(
        file_id=file_id,
        index=index,
        total=len(pieces),
        size=len(payload),
        name="moved.bin",
        payload_digest=xxhash.xxh3_128_digest(payload),
        data=pieces[index],
        request_id=request_id,
    )


def three_pieces() -> list[bytes]:
    payload = zstandard.ZstdCompressor().compress(b"several nodes, one owner\n" * 200)
    third = len(payload) // 3
    return [payload[:third], payload[third : 2 * third], payload[2 * third :]]


def random_file(tmp_path: Path, name: str, size: int) -> tuple[Path, bytes]:
    data = random.Random(SEED).randbytes(size)
    path = tmp_path / name
    path.write_bytes(data)
    return path, data


def client(cluster: Cluster, tmp_path: Path, *names: str, **kwargs: object) -> IngestClient:
    options: dict[str, object] = {
        "chunk_size": 16 * 1024,
        "parallel": 2,
        "timeout_s": 5.0,
        "failover_s": 10.0,
        "work_dir": tmp_path / "work",
    }
    options.update(kwargs)
    return IngestClient(nodes=[cluster.address(n) for n in names], **options)  # type: ignore[arg-type]  # the options above are IngestClient's


async def test_a_chunk_sent_to_the_wrong_node_is_moved_and_nothing_is_stored(
    cluster: Cluster, peer: Callable[[IngestServer], Awaitable[Peer]]
) -> None:
    file_id = FileId(os.urandom(16))
    cluster.table.owners[file_id] = "b"
    a = cluster.servers["a"]
    on_a = await peer(a)
    reply = await on_a.ask(chunk_wire(file_id, 0, three_pieces(), 1))
    assert reply == ErrorReply(
        code=ErrorCode.MOVED, message=moved_message(cluster.table.nodes["b"])
    )
    assert reply.message == (
        f"moved b 127.0.0.1:{cluster.address('b')[1]} "
        + ",".join(str(p) for p in cluster.servers["b"].data_ports())
    )
    query = await on_a.ask(encode(Query(file_id=file_id), 2))
    assert query == reply
    assert a.store.info(file_id) is None
    assert a.query(file_id).state is UploadState.UNKNOWN
    assert a.stats.chunks == 0
    # The owner takes the same chunk.
    on_b = await peer(cluster.servers["b"])
    assert isinstance(await on_b.ask(chunk_wire(file_id, 0, three_pieces(), 1)), Ack)


async def test_a_lost_claim_makes_the_node_answer_moved_to_later_chunks(
    cluster: Cluster, peer: Callable[[IngestServer], Awaitable[Peer]]
) -> None:
    file_id = FileId(os.urandom(16))
    pieces = three_pieces()
    a = cluster.servers["a"]
    on_a = await peer(a)
    first = await on_a.ask(chunk_wire(file_id, 0, pieces, 1))
    assert isinstance(first, Ack)
    assert cluster.table.owners[file_id] == "a"
    assert isinstance(await on_a.ask(chunk_wire(file_id, 1, pieces, 2)), Ack)
    assert cluster.table.claims == 1  # one decision per upload, then from memory
    cluster.table.lose(file_id, to="c")
    moved = await on_a.ask(chunk_wire(file_id, 2, pieces, 3))
    assert moved == ErrorReply(
        code=ErrorCode.MOVED, message=moved_message(cluster.table.nodes["c"])
    )
    info = a.store.info(file_id)
    assert info is not None
    assert sorted(info.committed) == [0, 1]  # chunk 2 was not stored
    assert await on_a.ask(encode(Query(file_id=file_id), 4)) == moved


async def test_a_query_of_an_id_nobody_uploads_claims_nothing(
    cluster: Cluster, peer: Callable[[IngestServer], Awaitable[Peer]]
) -> None:
    """A client QUERYing ids at random must not fill the cluster's store with claims:
    UNKNOWN, and no owner recorded; the first chunk then claims the upload."""
    on_c = await peer(cluster.servers["c"])
    for request_id in range(1, 51):
        status = await on_c.ask(encode(Query(file_id=FileId(os.urandom(16))), request_id))
        assert isinstance(status, Status)
        assert status.state is UploadState.UNKNOWN
    assert cluster.table.owners == {}
    assert cluster.table.claims == 0
    file_id = FileId(os.urandom(16))
    assert isinstance(await on_c.ask(chunk_wire(file_id, 0, three_pieces(), 51)), Ack)
    assert cluster.table.owners == {file_id: "c"}


async def test_a_draining_node_sends_queries_of_uploads_it_will_not_finish_elsewhere(
    cluster: Cluster, peer: Callable[[IngestServer], Awaitable[Peer]]
) -> None:
    """Once a node drains, a QUERY of an upload it has not every chunk of (or of an id it
    knows nothing of) is refused with SHUTTING_DOWN, which the client takes as "ask another
    node"; an upload it publishes is still answered."""
    a = cluster.servers["a"]
    unfinished, finished = FileId(os.urandom(16)), FileId(os.urandom(16))
    pieces = three_pieces()
    port = await peer(a)
    assert isinstance(await port.ask(chunk_wire(unfinished, 0, pieces, 1)), Ack)
    assert isinstance(await port.ask(chunk_wire(finished, 0, [b"".join(pieces)], 2)), Ack)
    assert a.query(finished).state is UploadState.PUBLISHED
    before = a.answer_query(unfinished)
    assert isinstance(before, Status)
    assert before.state is UploadState.UPLOADING
    stopping = asyncio.create_task(cluster.stop("a"))
    await asyncio.sleep(0)  # the drain has begun
    for file_id in (unfinished, FileId(os.urandom(16))):
        with pytest.raises(ShuttingDownError, match=r"^node a is leaving: query [0-9a-f]{32}"):
            a.answer_query(file_id)
    done = a.answer_query(finished)
    assert isinstance(done, Status)
    assert done.state is UploadState.PUBLISHED
    await stopping


async def test_a_query_of_a_dead_owners_upload_takes_it_over(
    cluster: Cluster, peer: Callable[[IngestServer], Awaitable[Peer]]
) -> None:
    """The failover QUERY: the claim names a dead node, so the node asked takes it over."""
    file_id = FileId(os.urandom(16))
    cluster.table.owners[file_id] = "a"
    on_b = await peer(cluster.servers["b"])
    moved = await on_b.ask(encode(Query(file_id=file_id), 1))
    assert moved == ErrorReply(
        code=ErrorCode.MOVED, message=moved_message(cluster.table.nodes["a"])
    )
    cluster.table.dead.add("a")
    status = await on_b.ask(encode(Query(file_id=file_id), 2))
    assert isinstance(status, Status)
    assert status.state is UploadState.UNKNOWN
    assert cluster.table.owners[file_id] == "b"


async def test_a_claim_that_fails_is_answered_with_an_error(
    cluster: Cluster, peer: Callable[[IngestServer], Awaitable[Peer]]
) -> None:
    """A claim that cannot be decided refuses the chunk with its error (STORAGE: send it
    again later), and a claim that breaks answers the QUERY all the same."""
    a = cluster.servers["a"]
    on_a = await peer(a)
    file_id = FileId(os.urandom(16))
    cluster.views["a"].fail = IngestStorageError("cluster store unreachable")
    assert await on_a.ask(chunk_wire(file_id, 0, three_pieces(), 1)) == ErrorReply(
        code=ErrorCode.STORAGE, message="cluster store unreachable"
    )
    assert await on_a.ask(encode(Query(file_id=file_id), 2)) == ErrorReply(
        code=ErrorCode.STORAGE, message="cluster store unreachable"
    )
    cluster.views["a"].fail = RuntimeError("claim broke")
    reply = await on_a.ask(encode(Query(file_id=file_id), 3))
    assert reply == ErrorReply(
        code=ErrorCode.STORAGE, message="internal error: RuntimeError('claim broke')"
    )
    assert a.store.info(file_id) is None


async def test_the_client_follows_moved_and_publishes_on_the_owner(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.table.claim_for = "b"  # every new upload is b's, whoever is asked
    source, data = random_file(tmp_path, "follow.bin", 200_000)
    small, small_data = random_file(tmp_path, "small.bin", 3000)
    async with client(cluster, tmp_path, "a", "c") as sender:
        result = await sender.send(source)
        single = await sender.send(small)
    assert (result.size, result.digest) == (len(data), xxhash.xxh3_128_digest(data))
    assert result.sent_chunks == result.chunks > 1
    assert (cluster.files("b") / "follow.bin").read_bytes() == data
    assert (cluster.files("b") / "small.bin").read_bytes() == small_data
    assert single.digest == xxhash.xxh3_128_digest(small_data)
    for name in "ac":
        assert not (cluster.files(name) / "follow.bin").exists()
        assert cluster.servers[name].stats.chunks == 0
        assert cluster.servers[name].store.payloads() == []


async def test_a_redirect_loop_is_cut_with_a_clear_error(cluster: Cluster, tmp_path: Path) -> None:
    source, _ = random_file(tmp_path, "loop.bin", 100_000)
    async with client(cluster, tmp_path, "a") as sender:
        # a says b owns every upload, b says a: each chunk would go round for ever.
        cluster.views["a"].says = "b"
        cluster.views["b"].says = "a"
        with pytest.raises(IngestError, match=r"moved more than 5 times, last to [ab] at "):
            await sender.send(source)
    for name in "ab":
        assert cluster.servers[name].stats.chunks == 0


async def test_the_owner_stopped_mid_upload_fails_over_to_the_survivor(
    cluster: Cluster, tmp_path: Path, peer: Callable[[IngestServer], Awaitable[Peer]]
) -> None:
    """a owns the upload and dies at a quarter of it; c takes it over already holding its
    first SEEDED chunks (as a takeover finds what the old owner stored in the object
    store): the client QUERYs b (MOVED to c), then c, and sends c only what it lacks."""
    source, data = random_file(tmp_path, "failover.bin", 1_200_000)
    prepared = prepare(source, chunk_size=16 * 1024, work_dir=tmp_path / "work", framed=False)
    file_id = prepared.file_id
    cluster.table.owners[file_id] = "c"
    on_c = await peer(cluster.servers["c"])
    fd = open_payload(prepared.payload)
    try:
        for index in range(SEEDED):
            frame = b"".join(read_chunk_frame(prepared, fd, index, index + 1))
            assert isinstance(await on_c.ask(frame), Ack)
    finally:
        os.close(fd)
    cluster.table.owners[file_id] = "a"
    stopping: list[asyncio.Task[None]] = []

    def progress(done: int, total: int) -> None:
        if done >= total // 4 and not stopping:
            cluster.table.lose(file_id, to="c")
            stopping.append(asyncio.ensure_future(cluster.stop("a")))

    async with client(cluster, tmp_path, "a", "b", "c", framed=False) as sender:
        async with asyncio.timeout(30):
            result = await sender.send(source, progress=progress)
        await stopping[0]
    assert result.file_id == file_id
    assert (result.size, result.digest) == (len(data), xxhash.xxh3_128_digest(data))
    assert (cluster.files("c") / "failover.bin").read_bytes() == data
    assert not (cluster.files("a") / "failover.bin").exists()
    assert 0 < cluster.servers["a"].stats.chunks < result.chunks
    assert cluster.servers["b"].stats.chunks == 0  # b answered MOVED to c, stored nothing
    c = cluster.servers["c"].stats
    assert (c.chunks, c.duplicates) == (result.chunks, 0)  # only the missing ones came


async def test_a_node_that_stops_replying_is_failed_over_after_the_reply_timeout(
    cluster: Cluster, tmp_path: Path
) -> None:
    """a stops answering chunks (they hang in its claim) without closing anything: past
    the client's reply timeout, the upload goes on at b, its new owner."""
    source, data = random_file(tmp_path, "silent.bin", 600_000)
    stall = asyncio.Event()
    stalled: list[FileId] = []

    def progress(done: int, total: int) -> None:
        if done >= total // 4 and not stalled:
            (file_id,) = cluster.table.owners
            stalled.append(file_id)
            cluster.views["a"].stall = stall
            cluster.table.lose(file_id, to="b")

    try:
        async with client(cluster, tmp_path, "a", "b", framed=False, timeout_s=1.0) as sender:
            async with asyncio.timeout(30):
                result = await sender.send(source, progress=progress)
    finally:
        stall.set()  # a's hung chunks end (MOVED, to connections long gone)
    assert stalled
    assert (result.size, result.digest) == (len(data), xxhash.xxh3_128_digest(data))
    assert (cluster.files("b") / "silent.bin").read_bytes() == data
    assert cluster.servers["b"].stats.chunks == result.chunks


async def test_a_failover_query_refused_with_storage_is_asked_again_until_the_claim_succeeds(
    cluster: Cluster, tmp_path: Path
) -> None:
    """a dies mid-upload while the cluster's store cannot decide claims (a NATS election):
    b answers the failover QUERY with STORAGE until it can claim, and the client keeps
    asking within failover_s rather than failing the upload."""
    source, data = random_file(tmp_path, "electing.bin", 600_000)
    stopping: list[asyncio.Task[None]] = []
    refused: list[int] = []

    class Refusing(NodeView):
        async def claim(self, file_id: FileId) -> Owner:
            if len(refused) < 2:
                refused.append(1)
                raise IngestStorageError("owners bucket request failed: NoStreamResponseError()")
            return await super().claim(file_id)

    async def a_dies() -> None:
        await cluster.stop("a")
        # a is held dead once stopped (not before: a chunk still in flight to a live a
        # is a's to take): its claim is b's to take over
        cluster.table.dead.add("a")

    def progress(done: int, total: int) -> None:
        if done >= total // 4 and not stopping:
            cluster.servers["b"].join(Refusing(cluster.table, "b"))
            stopping.append(asyncio.ensure_future(a_dies()))

    async with client(cluster, tmp_path, "a", "b", framed=False) as sender:
        async with asyncio.timeout(30):
            result = await sender.send(source, progress=progress)
        await stopping[0]
    assert len(refused) == 2
    assert (result.size, result.digest) == (len(data), xxhash.xxh3_128_digest(data))
    assert (cluster.files("b") / "electing.bin").read_bytes() == data


async def test_the_client_fails_when_no_node_answers_within_the_failover_budget(
    cluster: Cluster, tmp_path: Path
) -> None:
    source, _ = random_file(tmp_path, "nowhere.bin", 600_000)
    stopping: list[asyncio.Task[None]] = []

    def progress(done: int, total: int) -> None:
        if done >= total // 4 and not stopping:
            stopping.append(asyncio.ensure_future(_stop_all(cluster, "ab")))

    async with client(cluster, tmp_path, "a", "b", framed=False, failover_s=0.5) as sender:
        with pytest.raises(
            BrokenError, match=r"no node answered for nowhere\.bin \(\w{32}\) within 0\.5 s: "
        ):
            async with asyncio.timeout(30):
                await sender.send(source, progress=progress)
    await stopping[0]


async def _stop_all(cluster: Cluster, names: str) -> None:
    await asyncio.gather(*(cluster.stop(name) for name in names))


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_send_with_several_nodes_skips_a_dead_one_and_follows_moved(
    cluster: Cluster, tmp_path: Path
) -> None:
    """`postoffice ingest send --node DEAD --node a,b`: starts at a, publishes on b."""
    cluster.table.claim_for = "b"
    source, data = random_file(tmp_path, "cli.bin", 100_000)
    (tmp_path / "tmp").mkdir()
    a, b = cluster.address("a"), cluster.address("b")
    proc = await asyncio.create_subprocess_exec(
        *POSTOFFICE,
        "ingest",
        "send",
        str(source),
        "--quiet",
        "--node",
        f"127.0.0.1:{_dead_port()}",
        "--node",
        f"{a[0]}:{a[1]},{b[0]}:{b[1]}",
        "--chunk-size",
        "16384",
        "--timeout",
        "20",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env_without_postoffice() | {"TMPDIR": str(tmp_path / "tmp")},
    )
    async with asyncio.timeout(45):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert f"published as cli.bin ({len(data)} bytes" in out.decode()
    assert (cluster.files("b") / "cli.bin").read_bytes() == data
    assert cluster.servers["a"].stats.chunks == 0


async def test_send_refuses_a_bad_node(tmp_path: Path) -> None:
    source, _ = random_file(tmp_path, "bad.bin", 10)
    proc = await asyncio.create_subprocess_exec(
        *POSTOFFICE,
        "ingest",
        "send",
        str(source),
        "--node",
        "nohostport",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env_without_postoffice(),
    )
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode == 2
    assert (
        "Invalid value for --node: node 'nohostport': 'nohostport' is not HOST:PORT" in err.decode()
    )
