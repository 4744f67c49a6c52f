"""Events and published records on a real 3-server nats-server cluster: an event published
on one node reaches every other, also across the death of the stream's leader; a published
record is created once when nodes race to create it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import nats as nats_client
import pytest
from nats.js.errors import NotFoundError

from postoffice.ingest.cluster import PublishedRecord
from postoffice.ingest.cluster.events import consumer_name
from postoffice.ingest.cluster.records import EVENTS_STREAM
from postoffice.ingest.messages import FileId
from tests.integration.cluster_harness import (
    MotoServer,
    NatsCluster,
    cluster_config,
    cluster_nodes,
    moto_server,
    nats_cluster,
    needs_nats,
    owner,
    wait_until,
)

pytestmark = [
    pytest.mark.integration,
    needs_nats,
    pytest.mark.xdist_group("nats-cluster-events"),  # a NATS cluster of its own
    pytest.mark.timeout(60),
]

_RANDOM = random.Random(0xE7E7)


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with nats_cluster(tmp_path_factory.mktemp("nats")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with moto_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


class Inbox:
    """What one node's event callback received."""

    def __init__(self) -> None:
        self.events: list[tuple[FileId, bytes]] = []

    async def __call__(self, file_id: FileId, payload: bytes) -> None:
        self.events.append((file_id, payload))


async def test_events_published_on_one_node_reach_the_others_across_a_leader_kill_and_restart(
    nats: NatsCluster, s3: MotoServer
) -> None:
    config = cluster_config(nats.urls, s3)
    inboxes = {name: Inbox() for name in ("ev-b", "ev-c")}
    try:
        async with (
            cluster_nodes([(config, owner("ev-a"))]) as (a,),
            cluster_nodes([(config, owner("ev-b", 7200))], on_event=inboxes["ev-b"]),
            cluster_nodes([(config, owner("ev-c", 7300))], on_event=inboxes["ev-c"]) as (c,),
        ):
            before = [(FileId(_RANDOM.randbytes(16)), b"published %d" % i) for i in range(5)]
            for fid, payload in before:
                await a.events.publish(fid, payload)
            await wait_until(
                lambda: all(len(box.events) >= len(before) for box in inboxes.values()),
                10,
                "the first events at ev-b and ev-c",
            )
            for box in inboxes.values():
                assert box.events == before

            killed = nats.kill_leader(EVENTS_STREAM)
            loop = asyncio.get_running_loop()
            start = loop.time()
            after = [(FileId(_RANDOM.randbytes(16)), b"failed %d" % i) for i in range(5)]
            for fid, payload in after:
                await a.events.publish(fid, payload)  # retried through the election
            published = loop.time() - start
            await wait_until(
                lambda: all(len(box.events) >= 10 for box in inboxes.values()),
                30,
                "the events after the leader kill",
            )
            print(
                f"killed the stream leader {killed.name}: 5 events published in "
                f"{published:.2f}s, all delivered {loop.time() - start:.2f}s after the kill"
            )
            for box in inboxes.values():
                # delivery is at least once: an ack lost in the election brings an event
                # again (after ack_wait); what arrives first is every event, in order
                assert list(dict.fromkeys(box.events)) == before + after

            # the server ev-c is connected to restarts: ev-c reconnects and reads on
            nats.restart_killed()
            connected = c.nc.connected_url
            assert connected is not None
            server = next(node for node in nats.nodes if node.client_port == connected.port)
            nats.kill(server)
            start = loop.time()
            across = [(FileId(_RANDOM.randbytes(16)), b"restart %d" % i) for i in range(5)]
            for fid, payload in across[:2]:
                await a.events.publish(fid, payload)
            nats.restart_killed()
            for fid, payload in across[2:]:
                await a.events.publish(fid, payload)
            await wait_until(
                lambda: all(len(set(box.events)) >= 15 for box in inboxes.values()),
                30,
                "the events across the restart",
            )
            print(
                f"restarted {server.name} under ev-c: events delivered "
                f"{loop.time() - start:.2f}s after its kill"
            )
            for box in inboxes.values():
                assert list(dict.fromkeys(box.events)) == before + after + across
    finally:
        nats.restart_killed()


async def test_a_published_record_is_created_once_when_nodes_race(
    nats: NatsCluster, s3: MotoServer
) -> None:
    config = cluster_config(nats.urls, s3)
    names = ["pub-a", "pub-b", "pub-c"]
    async with cluster_nodes(
        [(config, owner(name, 7100 + 100 * i)) for i, name in enumerate(names)]
    ) as nodes:
        for _ in range(10):
            fid = FileId(_RANDOM.randbytes(16))
            records = [
                PublishedRecord(
                    file_id=fid,
                    name="report.csv",
                    size=1234,
                    digest=bytes(16),
                    payload_digest=bytes([i]) * 16,
                    replaced=False,
                    node=node.me.node,
                )
                for i, node in enumerate(nodes)
            ]
            standing = await asyncio.gather(
                *(
                    node.published.record(record)
                    for node, record in zip(nodes, records, strict=True)
                )
            )
            assert len(set(standing)) == 1, "every node sees the one record that stands"
            assert standing[0] in records
            for node in nodes:
                assert await node.published.get(fid) == standing[0]
        assert await nodes[0].published.get(FileId(bytes(16))) is None


async def test_a_gone_nodes_events_consumer_is_removed_once_idle(
    nats: NatsCluster, s3: MotoServer
) -> None:
    """A node's durable consumer stays while the node reads (fetches every second) and is
    removed by JetStream once it has been idle for consumer_idle_s: nodes that never come
    back leave nothing in the stream."""
    idle_s = 2.0
    config = cluster_config(nats.urls, s3, consumer_idle_s=idle_s)
    admin = await nats_client.connect(servers=nats.urls.split(","))
    try:
        js = admin.jetstream(timeout=5)
        name = consumer_name("idle-a")
        async with cluster_nodes([(config, owner("idle-a"))]):
            await asyncio.sleep(idle_s * 2)  # a live node's consumer outlives the threshold
            info = await js.consumer_info(EVENTS_STREAM, name)
            assert info.config.inactive_threshold == idle_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + idle_s + 15
        while True:
            try:
                await js.consumer_info(EVENTS_STREAM, name)
            except NotFoundError:
                break
            assert loop.time() < deadline, "the idle consumer was not removed"
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
