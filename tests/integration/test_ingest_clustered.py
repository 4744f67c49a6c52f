"""`postoffice ingest serve --cluster` as real processes: two nodes on a 3-server NATS
JetStream cluster and moto_server as S3; uploads published to S3, PUBLISHED on every node's
ack port, an upload adopted from S3 after its node was killed, a failing S3 refusing chunks."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import nats as nats_client
import pytest
from nats.js.errors import KeyNotFoundError

from postoffice.ingest.client.payload import PreparedFile, prepare, read_chunk_frame
from postoffice.ingest.cluster import ClusterConfig, Objects
from postoffice.ingest.cluster.objects import open_store
from postoffice.ingest.cluster.records import OWNERS_BUCKET, file_key
from postoffice.ingest.errors import ErrorCode
from postoffice.ingest.messages import (
    Ack,
    ErrorReply,
    FileId,
    Message,
    Published,
    Query,
    Status,
    Subscribe,
    Subscribed,
    UploadState,
)
from postoffice.ingest.protocol import NEED_DATA, MessageDecoder, encode
from tests.integration.cluster_harness import (
    S3_KEY_ID,
    S3_SECRET,
    MotoServer,
    NatsCluster,
    _stop,
    free_port,
    moto_server,
    nats_cluster,
)
from tests.integration.conftest import POSTOFFICE, ServerProcess, env_without_postoffice
from tests.integration.test_ingest import Ingest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(90),
    pytest.mark.xdist_group("nats-ingest-clustered"),  # a NATS cluster of its own
]

Serve = Callable[..., ServerProcess]
SEED = 0xC1A5
WAIT_S = 20.0
#: From a node's kill -9 to another node taking its upload over: its heartbeat goes
#: stale after 4 s (the default stale_s), with room for a loaded machine.
TAKEOVER_S = 15.0


@dataclass
class Shared:
    """The engines every node of these tests shares."""

    nats: NatsCluster
    s3: MotoServer


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    with (
        nats_cluster(tmp_path_factory.mktemp("nats")) as nats,
        moto_server(tmp_path_factory.mktemp("moto")) as s3,
    ):
        yield Shared(nats=nats, s3=s3)


@pytest.fixture(autouse=True)
def _aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # the nodes read their S3 credentials from the usual environment
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)


def node_args(ingest: Ingest, nats_urls: str, s3: MotoServer, name: str) -> list[str]:
    return ingest.args(
        "--cluster",
        nats_urls,
        "--s3",
        s3.endpoint,
        "--bucket",
        s3.bucket,
        "--node-name",
        name,
        "--no-fsync",
    )


def objects_of(s3: MotoServer) -> Objects:
    config = ClusterConfig(
        nats_urls=("nats://127.0.0.1:4222",),  # never dialled
        s3_url=s3.endpoint,
        bucket=s3.bucket,
        access_key_id=S3_KEY_ID,
        secret_access_key=S3_SECRET,
    )
    return Objects(open_store(config))


def info(ingest: Ingest) -> dict[str, object]:
    url = f"http://127.0.0.1:{ingest.sys_base}/info"
    with urllib.request.urlopen(url, timeout=5) as reply:
        answer: dict[str, object] = json.load(reply)
        return answer


def source_file(tmp_path: Path, name: str, size: int) -> Path:
    """Text-like content that compresses somewhat, distinct per seed."""
    rng = random.Random(f"{SEED}-{name}")
    words = [rng.randbytes(rng.randrange(2, 9)).hex().encode() for _ in range(512)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(words, k=64)) + b"\n"
    path = tmp_path / name
    path.write_bytes(bytes(out[:size]))
    return path


class Peer:
    """A binary connection to one port of a node: frames out, messages back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = MessageDecoder(max_chunk_bytes=8 * 1024 * 1024)

    async def send(self, *parts: bytes) -> None:
        for part in parts:
            self.writer.write(part)
        await self.writer.drain()

    async def next(self, timeout_s: float = WAIT_S) -> Message:
        async with asyncio.timeout(timeout_s):
            while True:
                event = self.decoder.next_event()
                if event is not NEED_DATA:
                    assert not isinstance(event, type(NEED_DATA))
                    return event[1]
                data = await self.reader.read(65536)
                if not data:
                    raise EOFError("the node closed the connection")
                self.decoder.feed(data)

    async def events(self, quiet_s: float) -> list[Message]:
        """Every message that arrives until none has for `quiet_s`."""
        got: list[Message] = []
        while True:
            try:
                got.append(await self.next(quiet_s))
            except TimeoutError:
                return got


@asynccontextmanager
async def peer(port: int) -> AsyncIterator[Peer]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    try:
        yield Peer(reader, writer)
    finally:
        writer.close()


async def subscribed(ack_port: int, file_id: FileId) -> Peer:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", ack_port), 5)
    subscriber = Peer(reader, writer)
    await subscriber.send(encode(Subscribe(file_ids=(file_id,)), 1))
    assert isinstance(await subscriber.next(), Subscribed)
    return subscriber


async def send_chunk(data_port: Peer, prepared: PreparedFile, index: int) -> Message:
    fd = os.open(prepared.payload, os.O_RDONLY)
    try:
        head, data = read_chunk_frame(prepared, fd, index, index + 1)
    finally:
        os.close(fd)
    await data_port.send(head, data)
    return await data_port.next()


async def query(data_port: Peer, file_id: FileId) -> Message:
    await data_port.send(encode(Query(file_id=file_id), 999))
    return await data_port.next()


def published_count(messages: list[Message]) -> int:
    return sum(isinstance(message, Published) for message in messages)


async def test_an_upload_through_one_node_lands_in_s3_and_every_node_delivers_published(
    shared: Shared, serve: Serve, tmp_path: Path
) -> None:
    a, b = Ingest(tmp_path / "a", x=2), Ingest(tmp_path / "b", x=2)
    node_a = serve("ingest", *node_args(a, shared.nats.urls, shared.s3, "node-a"))
    serve("ingest", *node_args(b, shared.nats.urls, shared.s3, "node-b"))
    source = source_file(tmp_path, "report.log", 3 * 1024 * 1024 + 17)
    prepared = prepare(source, chunk_size=512 * 1024, work_dir=tmp_path / "work")
    assert prepared.total > 1
    on_b = await subscribed(b.sys_base + 3, prepared.file_id)
    on_a = await subscribed(a.sys_base + 3, prepared.file_id)
    began = time.monotonic()
    async with a.client(chunk_size=512 * 1024, timeout_s=WAIT_S) as client:
        result = await client.send(source)
    seconds = time.monotonic() - began
    print(f"2-node upload of {source.stat().st_size} bytes through node A: {seconds:.2f} s")
    assert result.size == source.stat().st_size

    # the file is in S3, whole; the chunks go once it is published; no copy in files/
    objects = objects_of(shared.s3)
    assert await objects.get_file("report.log") == source.read_bytes()
    for _ in range(100):
        if not await objects.chunk_indexes(prepared.file_id):
            break
        await asyncio.sleep(0.05)
    assert await objects.chunk_indexes(prepared.file_id) == []
    assert not (a.files / "report.log").exists()

    # both ack ports deliver PUBLISHED, each once
    from_b = await on_b.events(quiet_s=1.5)
    from_a = await on_a.events(quiet_s=0.5)
    assert published_count(from_b) == 1, from_b
    assert published_count(from_a) == 1, from_a
    event = next(m for m in from_b if isinstance(m, Published))
    assert (event.name, event.size, event.digest) == ("report.log", result.size, result.digest)
    on_a.writer.close()
    on_b.writer.close()

    # a late subscriber gets it again: on B from the event it relayed, and on a node that
    # joined after the publish from the published record, as a QUERY there does
    c = Ingest(tmp_path / "c", x=1)
    serve("ingest", *node_args(c, shared.nats.urls, shared.s3, "node-c"))
    for ingest in (b, c):
        late = await subscribed(ingest.sys_base + 3, prepared.file_id)
        replayed = await late.next()
        late.writer.close()
        assert isinstance(replayed, Published)
        assert replayed.payload_digest == prepared.payload_digest
    async with peer(c.data_base) as data_c:
        status = await query(data_c, prepared.file_id)
    assert isinstance(status, Status), status
    assert (status.state, status.name, status.size) == (
        UploadState.PUBLISHED,
        "report.log",
        result.size,
    )

    # FRAMED chunks are decompressed apart, so that file was read back into S3; an upload
    # of one zstd frame is assembled in order, its output streamed into S3 as it is made
    assert "put into s3 as files/report.log bytes=3145745 streamed=False" in node_a.log()
    plain = source_file(tmp_path, "plain.log", 2 * 1024 * 1024 + 5)
    async with a.client(chunk_size=256 * 1024, timeout_s=WAIT_S, framed=False) as client:
        first = await client.send(plain)
    assert (first.size, first.replaced) == (plain.stat().st_size, False)
    assert await objects.get_file("plain.log") == plain.read_bytes()
    assert "put into s3 as files/plain.log bytes=2097157 streamed=True" in node_a.log()
    # the same name again, through the other node: the bucket held it, so it was replaced
    again = tmp_path / "again" / "plain.log"
    again.parent.mkdir()
    again.write_bytes(b"another plain log\n" * 1000)
    async with b.client(timeout_s=WAIT_S) as client:
        second = await client.send(again)
    assert (second.size, second.replaced) == (18_000, True)
    assert await objects.get_file("plain.log") == again.read_bytes()

    # a one-chunk upload through the other node is published to S3 too (not before its ACK)
    small = tmp_path / "note.txt"
    small.write_bytes(b"a short note\n" * 10)
    async with b.client(timeout_s=WAIT_S) as client:
        assert (await client.send(small)).size == 130
    assert await objects.get_file("note.txt") == small.read_bytes()
    assert not (b.files / "note.txt").exists()

    # each node names itself and sees the other
    info_b = info(b)
    assert info_b["node"] == "node-b"
    nodes = info_b["nodes"]
    assert isinstance(nodes, list)
    assert {"node-a", "node-b", "node-c"} <= set(nodes), nodes
    assert nodes == sorted(nodes)


async def test_a_node_killed_mid_upload_is_taken_over_from_s3(
    shared: Shared, serve: Serve, tmp_path: Path
) -> None:
    a, b = Ingest(tmp_path / "a", x=1), Ingest(tmp_path / "b", x=1)
    node_a: ServerProcess = serve("ingest", *node_args(a, shared.nats.urls, shared.s3, "kill-a"))
    serve("ingest", *node_args(b, shared.nats.urls, shared.s3, "kill-b"))
    source = source_file(tmp_path, "big.log", 6 * 1024 * 1024)
    chunk_size = 256 * 1024
    prepared = prepare(source, chunk_size=chunk_size, work_dir=tmp_path / "work")
    total = prepared.total
    half = total // 2
    assert total >= 8
    acked: list[int] = []
    async with peer(a.data_base) as data_a:
        for index in range(half):
            reply = await send_chunk(data_a, prepared, index)
            assert isinstance(reply, Ack), reply
            acked.append(index)
        os.kill(node_a.proc.pid, signal.SIGKILL)
        node_a.proc.wait(10)

    # B sends the upload's QUERY to its owner, A, until it holds A dead; then it takes the
    # claim over and adopts from S3: only what A never acknowledged is missing
    killed = time.monotonic()
    async with peer(b.data_base) as data_b:
        status = await query(data_b, prepared.file_id)
        assert isinstance(status, ErrorReply), status
        assert status.code is ErrorCode.MOVED
        assert status.message.startswith("moved kill-a 127.0.0.1:")
        while isinstance(status, ErrorReply) and time.monotonic() - killed < TAKEOVER_S:
            await asyncio.sleep(0.1)
            status = await query(data_b, prepared.file_id)
    print(f"B took the upload over {time.monotonic() - killed:.2f} s after A was killed")
    assert isinstance(status, Status), status
    assert status.state is UploadState.UPLOADING
    assert status.committed == half
    assert status.missing == ((half, total - 1),)

    # a plain client pointed at B sends the rest, and the file is published
    async with b.client(chunk_size=chunk_size, timeout_s=WAIT_S) as client:
        result = await client.send(source)
    assert result.skipped_chunks == half
    assert result.sent_chunks == total - half
    assert result.digest == prepared.digest
    assert await objects_of(shared.s3).get_file("big.log") == source.read_bytes()


async def test_a_node_stopped_mid_upload_hands_it_over_as_it_drains(
    shared: Shared, serve: Serve, tmp_path: Path
) -> None:
    """SIGTERM, not a crash: the draining node hands the upload it will not finish over,
    so the other node takes it over from its claim at once (not a stale heartbeat later),
    with every acknowledged chunk."""
    a, b = Ingest(tmp_path / "a", x=1), Ingest(tmp_path / "b", x=1)
    node_a: ServerProcess = serve("ingest", *node_args(a, shared.nats.urls, shared.s3, "drain-a"))
    node_b: ServerProcess = serve("ingest", *node_args(b, shared.nats.urls, shared.s3, "drain-b"))
    source = source_file(tmp_path, "drained.log", 2 * 1024 * 1024)
    prepared = prepare(source, chunk_size=128 * 1024, work_dir=tmp_path / "work")
    half = prepared.total // 2
    assert half >= 2
    async with peer(a.data_base) as data_a:
        for index in range(half):
            assert isinstance(await send_chunk(data_a, prepared, index), Ack)
    node_a.proc.send_signal(signal.SIGTERM)
    assert node_a.proc.wait(WAIT_S) == 0
    assert "handed over uploads=1" in node_a.log()

    async with peer(b.data_base) as data_b:
        status = await query(data_b, prepared.file_id)
    assert isinstance(status, Status), status
    assert status.committed == half
    assert status.missing == ((half, prepared.total - 1),)
    assert "taken over from draining node=drain-a epoch=2" in node_b.log()
    async with b.client(chunk_size=128 * 1024, timeout_s=WAIT_S) as client:
        result = await client.send(source)
    assert result.skipped_chunks == half
    assert await objects_of(shared.s3).get_file("drained.log") == source.read_bytes()


async def test_a_failing_s3_refuses_the_chunk_with_storage_and_commits_nothing(
    shared: Shared, serve: Serve, tmp_path: Path
) -> None:
    with moto_server(tmp_path) as own_s3:
        a = Ingest(tmp_path / "a", x=1)
        serve("ingest", *node_args(a, shared.nats.urls, own_s3, "s3-fails"))
        source = source_file(tmp_path, "doomed.log", 1024 * 1024)
        prepared = prepare(source, chunk_size=256 * 1024, work_dir=tmp_path / "work")
        async with peer(a.data_base) as data_a:
            assert isinstance(await send_chunk(data_a, prepared, 0), Ack)
            _stop(own_s3.proc)
            began = time.monotonic()
            refused = await send_chunk(data_a, prepared, 1)
            print(f"a chunk refused {time.monotonic() - began:.2f} s after S3 went away")
            assert isinstance(refused, ErrorReply), refused
            assert refused.code.name == "STORAGE"
            status = await query(data_a, prepared.file_id)
        assert isinstance(status, Status), status
        assert status.committed == 1
        assert status.missing == ((1, prepared.total - 1),)


async def test_an_aborted_upload_is_not_adopted_again(
    shared: Shared, serve: Serve, tmp_path: Path
) -> None:
    a, b = Ingest(tmp_path / "a", x=1), Ingest(tmp_path / "b", x=1)
    serve("ingest", *node_args(a, shared.nats.urls, shared.s3, "abort-a"))
    serve("ingest", *node_args(b, shared.nats.urls, shared.s3, "abort-b"))
    source = source_file(tmp_path, "dropped.log", 1024 * 1024)
    prepared = prepare(source, chunk_size=256 * 1024, work_dir=tmp_path / "work")
    async with peer(a.data_base) as data_a:
        assert isinstance(await send_chunk(data_a, prepared, 0), Ack)
    with a.control() as control:
        assert control.execute_command("ABORT", prepared.file_id.hex()) in (b"OK", "OK", True)
    # neither node brings the aborted upload's chunks back from S3
    async with peer(b.data_base) as data_b:
        status = await query(data_b, prepared.file_id)
    assert isinstance(status, Status), status
    assert status.state is UploadState.UNKNOWN
    assert await objects_of(shared.s3).chunk_indexes(prepared.file_id) == []


async def test_an_upload_left_to_expire_gives_its_claim_and_chunks_back(
    shared: Shared, serve: Serve, tmp_path: Path
) -> None:
    """The TTL cleanup of an abandoned upload releases its key in NATS and deletes its
    chunks in S3, as a publish or an ABORT does: abandoned uploads leave nothing behind."""
    a = Ingest(tmp_path / "a", x=1)
    args = node_args(a, shared.nats.urls, shared.s3, "expire-a")
    serve("ingest", *args, "--ttl", "1", "--cleanup-interval", "0.2")
    source = source_file(tmp_path, "abandoned.log", 1024 * 1024)
    prepared = prepare(source, chunk_size=256 * 1024, work_dir=tmp_path / "work")
    async with peer(a.data_base) as data_a:
        assert isinstance(await send_chunk(data_a, prepared, 0), Ack)
    objects = objects_of(shared.s3)
    admin = await nats_client.connect(servers=shared.nats.urls.split(","))
    try:
        owners = await admin.jetstream(timeout=5).key_value(OWNERS_BUCKET)
        key = file_key(prepared.file_id)
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                await owners.get(key)
            except KeyNotFoundError:
                break
            assert time.monotonic() < deadline, "the expired upload kept its claim"
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    deadline = time.monotonic() + WAIT_S
    while await objects.chunk_indexes(prepared.file_id):
        assert time.monotonic() < deadline, "the expired upload's chunks stayed in S3"
        await asyncio.sleep(0.1)
    async with peer(a.data_base) as data_a:
        status = await query(data_a, prepared.file_id)
    assert isinstance(status, Status), status
    assert status.state is UploadState.UNKNOWN


@pytest.mark.parametrize("missing", ["nats", "s3"])
def test_a_start_without_nats_or_s3_exits_naming_which(
    tmp_path: Path, shared: Shared, missing: str
) -> None:
    ingest = Ingest(tmp_path)
    nowhere = f"127.0.0.1:{free_port()}"
    nats_urls = f"nats://{nowhere}" if missing == "nats" else shared.nats.urls
    s3 = MotoServer(proc=shared.s3.proc, port=int(nowhere.split(":")[1]))
    done = subprocess.run(
        [
            *POSTOFFICE,
            "ingest",
            "serve",
            *node_args(ingest, nats_urls, shared.s3 if missing == "nats" else s3, "lonely"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env_without_postoffice(),
        check=False,
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    if missing == "nats":
        assert last.startswith(f"Error: NATS at nats://{nowhere} not reachable"), done.stderr
    else:
        assert last.startswith(f"Error: S3 at http://{nowhere} "), done.stderr


def test_a_single_node_server_imports_no_cluster_library() -> None:
    code = (
        "import sys\n"
        "from postoffice.ingest.config import IngestConfig\n"
        "from postoffice.ingest.server import IngestServer\n"
        "IngestServer(IngestConfig())\n"
        "print(sorted(m for m in ('nats', 'obstore', 'postoffice.ingest.cluster',"
        " 'postoffice.ingest.clustered') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"
