"""Two in-process IngestServers whose Ownership is their claims on a real 3-server NATS
cluster (ClusterOwnership): a chunk sent to the node that does not own its upload is
answered MOVED naming the owner, and once the owner is dead the other node takes the
upload over and takes its chunks."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats as nats_client
import pytest
import xxhash
import zstandard
from nats.js.errors import KeyNotFoundError

from postoffice.ingest.cluster import Cluster
from postoffice.ingest.cluster.claims import LostReason
from postoffice.ingest.cluster.records import OWNERS_BUCKET, PublishedRecord, file_key
from postoffice.ingest.cluster.routes import ClusterOwnership
from postoffice.ingest.config import IngestConfig
from postoffice.ingest.errors import ErrorCode
from postoffice.ingest.messages import Ack, ErrorReply, FileId, Message, Query, Status, UploadState
from postoffice.ingest.ownership import Owner, moved_message
from postoffice.ingest.protocol import NEED_DATA, MessageDecoder, encode, encode_chunk
from postoffice.ingest.server import IngestServer
from tests.integration.cluster_harness import (
    MotoServer,
    NatsCluster,
    cluster_config,
    moto_server,
    nats_cluster,
    needs_nats,
    wait_until,
)

#: When a node is held dead: the servers' default stale_s.
STALE_S = 4.0

pytestmark = [
    pytest.mark.integration,
    needs_nats,
    pytest.mark.xdist_group("nats-cluster-routes"),  # a NATS cluster of its own
    pytest.mark.timeout(60),
]


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with nats_cluster(tmp_path_factory.mktemp("nats")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with moto_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


class Node:
    """One ingest node: an in-process server and its membership of the cluster."""

    def __init__(self, server: IngestServer, cluster: Cluster) -> None:
        self.server = server
        self.cluster = cluster
        self.ownership = ClusterOwnership(
            cluster.claims,
            cluster.nodes,
            published=cluster.published,
            holds=lambda file_id: server.store.info(file_id) is not None,
        )


@asynccontextmanager
async def node(name: str, tmp_path: Path, nats: NatsCluster, s3: MotoServer) -> AsyncIterator[Node]:
    config = IngestConfig(
        sys_base=0,
        data_base=0,
        x=1,
        data_dir=tmp_path / name,
        fsync=False,
        cleanup_interval_s=3600,
        shutdown_timeout_s=2.0,
    )
    server = IngestServer(config)
    await server.startup()
    me = Owner(
        node=name,
        host="127.0.0.1",
        health_port=server.addresses["health"][1],
        data_ports=tuple(server.data_ports()),
    )
    holder: list[ClusterOwnership] = []
    # The servers' own timing (heartbeat 1 s, stale after 4 s, lease 3 s), not the
    # harness's quick one: a lease of 0.6 s lapses on a machine busy with the parallel suite.
    timing = {"heartbeat_s": 1.0, "stale_s": STALE_S, "lease_s": STALE_S - 1.0}
    cluster = await Cluster.open(
        cluster_config(nats.urls, s3, **timing), me, on_lost=lambda f, r: holder[0].lost(f, r)
    )
    one = Node(server, cluster)
    holder.append(one.ownership)
    server.join(one.ownership)
    try:
        yield one
    finally:
        await cluster.close(leave=False)
        await server.shutdown()


async def ask(port: int, wire: bytes) -> Message:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(wire)
        decoder = MessageDecoder()
        async with asyncio.timeout(10):
            while (event := decoder.next_event()) is NEED_DATA:
                block = await reader.read(65536)
                assert block, "the server closed the connection"
                decoder.feed(block)
        _, message = event
        return message
    finally:
        writer.close()
        await writer.wait_closed()


def chunk(file_id: FileId, index: int, pieces: list[bytes]) -> bytes:
    payload = b"".join(pieces)
    return encode_chunk(
        file_id=file_id,
        index=index,
        total=len(pieces),
        size=len(payload),
        name="routed.log",
        payload_digest=xxhash.xxh3_128_digest(payload),
        data=pieces[index],
        request_id=index + 1,
    )


def pieces() -> list[bytes]:
    payload = zstandard.ZstdCompressor().compress(b"one owner at a time\n" * 500)
    third = len(payload) // 3
    return [payload[:third], payload[third : 2 * third], payload[2 * third :]]


async def test_the_node_that_does_not_own_an_upload_answers_moved_until_the_owner_dies(
    tmp_path: Path, nats: NatsCluster, s3: MotoServer
) -> None:
    file_id = FileId(os.urandom(16))
    parts = pieces()
    async with node("routes-b", tmp_path, nats, s3) as b:
        async with node("routes-a", tmp_path, nats, s3) as a:
            assert isinstance(await ask(a.server.data_ports()[0], chunk(file_id, 0, parts)), Ack)
            assert a.cluster.claims.owns(file_id)
            owner = a.ownership.owner(file_id)
            assert owner is not None
            assert owner.node == "routes-a"
            moved = await ask(b.server.data_ports()[0], chunk(file_id, 1, parts))
            assert moved == ErrorReply(code=ErrorCode.MOVED, message=moved_message(owner))
            assert b.server.store.info(file_id) is None  # nothing was stored on b
            a_name = a.ownership.node
        # a is gone without leaving (its key stays, its heartbeat stops): once b holds it
        # dead, b's next chunk of the upload takes the claim over and is stored there.
        await wait_until(
            lambda: not b.cluster.nodes.table.alive(a_name), STALE_S * 3, "a seen dead"
        )
        taken = await ask(b.server.data_ports()[0], chunk(file_id, 1, parts))
        assert isinstance(taken, Ack), taken
        assert b.cluster.claims.owns(file_id)
        routed = b.ownership.owner(file_id)
        assert routed is not None
        assert routed.node == "routes-b"
        assert b.cluster.claims.epoch(file_id) == 2  # the upload's second owner


async def test_a_node_that_lost_an_upload_published_elsewhere_names_the_publisher(
    tmp_path: Path, nats: NatsCluster, s3: MotoServer
) -> None:
    """After a publish the owner releases the claim: a node still holding chunks of the
    upload from before it lost the claim must not claim it afresh and take more."""
    file_id = FileId(os.urandom(16))
    parts = pieces()
    payload = b"".join(parts)
    async with node("after-b", tmp_path, nats, s3) as b, node("after-a", tmp_path, nats, s3) as a:
        assert isinstance(await ask(a.server.data_ports()[0], chunk(file_id, 0, parts)), Ack)
        # a loses the upload (as when its lease lapses); b publishes it and lets the key go
        a.ownership.lost(file_id, LostReason.LEASE_LAPSED)
        assert await a.cluster.claims.release(file_id)
        await b.cluster.published.record(
            PublishedRecord(
                file_id=file_id,
                name="routed.log",
                size=len(b"one owner at a time\n" * 500),
                digest=bytes(16),
                payload_digest=xxhash.xxh3_128_digest(payload),
                replaced=False,
                node="after-b",
            )
        )
        publisher = b.cluster.claims.me
        named = ErrorReply(code=ErrorCode.MOVED, message=moved_message(publisher))
        # a QUERY first (it claims nothing), then a chunk (its claim is given back)
        assert await ask(a.server.data_ports()[0], encode(Query(file_id=file_id), 9)) == named
        assert await ask(a.server.data_ports()[0], chunk(file_id, 1, parts)) == named
        held = a.server.store.info(file_id)
        assert held is not None
        assert held.committed == frozenset({0})  # nothing more taken
        assert not a.cluster.claims.owns(file_id)


async def test_queries_of_ids_nobody_uploads_leave_no_claim_in_nats(
    tmp_path: Path, nats: NatsCluster, s3: MotoServer
) -> None:
    """A client QUERYing ids at random gets UNKNOWN and leaves the owners bucket as it
    was; the first chunk of one of them claims it."""
    ids = [FileId(os.urandom(16)) for _ in range(30)]
    async with node("asked", tmp_path, nats, s3) as asked:
        port = asked.server.data_ports()[0]
        for request_id, file_id in enumerate(ids, 1):
            status = await ask(port, encode(Query(file_id=file_id), request_id))
            assert isinstance(status, Status), status
            assert status.state is UploadState.UNKNOWN
        admin = await nats_client.connect(servers=nats.urls.split(","))
        try:
            owners = await admin.jetstream(timeout=5).key_value(OWNERS_BUCKET)
            for file_id in ids:
                with pytest.raises(KeyNotFoundError):
                    await owners.get(file_key(file_id))
            assert isinstance(await ask(port, chunk(ids[0], 0, pieces())), Ack)
            claimed = await owners.get(file_key(ids[0]))
            assert claimed.value == b'{"epoch":1,"node":"asked"}'
        finally:
            await admin.close()
