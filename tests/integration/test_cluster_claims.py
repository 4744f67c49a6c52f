"""Upload ownership on a real 3-server nats-server cluster: claims race, dead nodes are taken
over by exactly one survivor, a fenced node stops owning, and all of it survives the loss
of the JetStream leader."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Iterator
from pathlib import Path

import nats as nats_client
import pytest

from postoffice.ingest.cluster import Claim, Cluster, ClusterError, LostReason
from postoffice.ingest.cluster.connection import CLOSE_BUDGET_S
from postoffice.ingest.cluster.records import (
    EVENTS_STREAM,
    NODES_BUCKET,
    OWNERS_BUCKET,
    PUBLISHED_BUCKET,
)
from postoffice.ingest.messages import FileId
from tests.integration.cluster_harness import (
    LEASE_S,
    STALE_S,
    MotoServer,
    NatsCluster,
    TcpProxy,
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
    pytest.mark.xdist_group("nats-cluster-claims"),  # a NATS cluster of its own
    pytest.mark.timeout(60),
]

_RANDOM = random.Random(0x5EED)


def new_file_id() -> FileId:
    return FileId(_RANDOM.randbytes(16))


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with nats_cluster(tmp_path_factory.mktemp("nats")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with moto_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


async def test_two_nodes_claiming_one_id_at_once_exactly_one_wins(
    nats: NatsCluster, s3: MotoServer
) -> None:
    config = cluster_config(nats.urls, s3)
    async with cluster_nodes([(config, owner("race-a")), (config, owner("race-b", 7200))]) as (
        a,
        b,
    ):
        for _ in range(50):
            fid = new_file_id()
            got_a, got_b = await asyncio.gather(a.claims.claim(fid), b.claims.claim(fid))
            assert got_a == got_b, "both nodes must name the same owner"
            assert got_a in (a.me, b.me)
            assert [a.claims.owns(fid), b.claims.owns(fid)].count(True) == 1


async def test_a_claim_of_ours_is_released_once_and_a_stale_release_is_refused(
    nats: NatsCluster, s3: MotoServer
) -> None:
    config = cluster_config(nats.urls, s3)
    async with cluster_nodes([(config, owner("rel-a")), (config, owner("rel-b", 7200))]) as (
        a,
        b,
    ):
        fid = new_file_id()
        assert await a.claims.claim(fid) == a.me
        assert await b.claims.claim(fid) == a.me, "a live owner keeps its claim"
        assert await a.claims.release(fid) is True
        assert not a.claims.owns(fid)
        assert await a.claims.release(fid) is False, "nothing left to release"
        assert await b.claims.claim(fid) == b.me, "a released id is free to claim"


async def test_a_handed_over_claim_is_taken_over_at_once_while_its_owner_lives(
    nats: NatsCluster, s3: MotoServer
) -> None:
    """A draining owner hands its upload over: the other nodes, which remembered it as the
    owner, are told, and the next one to ask takes the claim over with the next epoch, its
    owner still alive; a second hand-over, or one of a claim taken meanwhile, does nothing."""
    config = cluster_config(nats.urls, s3)
    async with cluster_nodes(
        [
            (config, owner("hand-a")),
            (config, owner("hand-b", 7200)),
            (config, owner("hand-c", 7300)),
        ]
    ) as (a, b, c):
        told: list[FileId] = []
        b.claims.on_handed_over = told.append
        fid, other = new_file_id(), new_file_id()
        assert await a.claims.claim(fid) == a.me
        assert await a.claims.claim(other) == a.me
        assert await b.claims.find(fid) == a.me, "a live owner is named before"
        assert await a.claims.hand_over(fid) is True
        assert not a.claims.owns(fid)
        await wait_until(lambda: told == [fid], 5.0, "b is told of the hand-over")
        assert b.nodes.table.alive("hand-a"), "the owner still lives"
        got_b, got_c = await asyncio.gather(b.claims.find(fid), c.claims.claim(fid))
        assert got_b == got_c, "both name one owner"
        assert got_b in (b.me, c.me), "one of them took it over"
        assert [b.claims.owns(fid), c.claims.owns(fid)].count(True) == 1
        winner = b if got_b == b.me else c
        assert winner.claims.epoch(fid) == 2
        assert await a.claims.find(fid) == winner.me, "the old owner is sent there too"
        assert await a.claims.hand_over(fid) is False, "not ours any more"
        # a claim written over by another node is not handed over by its old owner
        revision = a.claims.held()[other]
        writer = await nats_client.connect(servers=[nats.nodes[2].url])
        try:
            kv = await writer.jetstream().key_value(OWNERS_BUCKET)
            await kv.update(other.hex(), Claim(node="hand-c", epoch=2).encode(), last=revision)
        finally:
            await writer.close()
        assert await a.claims.hand_over(other) is False
        entry = await c.claims._kv.get(other.hex())
        assert Claim.decode(entry.value or b"") == Claim(node="hand-c", epoch=2)


async def test_a_dead_nodes_claims_are_taken_over_by_exactly_one_survivor(
    nats: NatsCluster, s3: MotoServer
) -> None:
    config = cluster_config(nats.urls, s3)
    lost: list[tuple[FileId, LostReason]] = []
    async with cluster_nodes(
        [
            (config, owner("dead-a")),
            (config, owner("dead-b", 7200)),
            (config, owner("dead-c", 7300)),
        ],
        on_lost=lambda fid, why: lost.append((fid, why)),
    ) as (a, b, c):
        fids = [new_file_id() for _ in range(20)]
        for fid in fids:
            assert await a.claims.claim(fid) == a.me
        await a.close(leave=False)  # a crash: the key stays, the heartbeat stops
        loop = asyncio.get_running_loop()
        killed_at = loop.time()
        assert await b.claims.claim(fids[0]) == a.me, "dead only after stale_s"
        seen = await wait_until(
            lambda: not b.nodes.table.alive("dead-a") and not c.nodes.table.alive("dead-a"),
            STALE_S * 3,
            "the survivors see dead-a dead",
        )
        print(f"dead-a seen dead {seen:.2f}s after its heartbeat stopped (stale_s={STALE_S})")
        assert loop.time() - killed_at >= STALE_S - 0.25
        for fid in fids:
            got_b, got_c = await asyncio.gather(b.claims.claim(fid), c.claims.claim(fid))
            assert got_b == got_c
            assert got_b in (b.me, c.me)
            winner = b if got_b == b.me else c
            assert [b.claims.owns(fid), c.claims.owns(fid)].count(True) == 1
            assert winner.claims.epoch(fid) == 2, "a takeover counts one more owner"
        assert lost == [], "the survivors lost nothing"


async def test_a_fenced_node_stops_owning_within_its_lease(
    nats: NatsCluster, s3: MotoServer
) -> None:
    proxy = TcpProxy(nats.nodes[0].client_port)
    await proxy.start()
    fenced_config = cluster_config(proxy.url, s3)
    config = cluster_config(nats.urls, s3)
    lost: list[tuple[FileId, LostReason]] = []
    async with cluster_nodes(
        [(fenced_config, owner("fence-a")), (config, owner("fence-b", 7200))],
        on_lost=lambda fid, why: lost.append((fid, why)),
    ) as (a, b):
        fid = new_file_id()
        assert await a.claims.claim(fid) == a.me
        assert a.claims.owns(fid)
        assert a.nodes.renewed_at is not None
        last_renewal = a.nodes.renewed_at
        await proxy.cut()
        took = await wait_until(lambda: not a.claims.owns(fid), LEASE_S * 3, "fence-a fenced")
        loop = asyncio.get_running_loop()
        fenced_after = loop.time() - last_renewal
        print(
            f"fence-a stopped owning {fenced_after:.2f}s after its last renewal (lease {LEASE_S}s)"
        )
        # owns() reads the clock itself: the slack is only this loop's polling, which a
        # loaded machine slows
        assert LEASE_S <= fenced_after <= LEASE_S + 0.5
        await wait_until(lambda: bool(lost), 1.0, "the lapse callback")
        assert lost == [(fid, LostReason.LEASE_LAPSED)]
        assert took <= LEASE_S + 0.5
        await wait_until(lambda: not b.nodes.table.alive("fence-a"), STALE_S * 3, "seen dead")
        assert await b.claims.claim(fid) == b.me, "the fenced node's claim is taken over"


async def test_a_fenced_node_back_on_the_network_finds_its_upload_taken_over(
    nats: NatsCluster, s3: MotoServer
) -> None:
    proxy = TcpProxy(nats.nodes[1].client_port)
    await proxy.start()
    async with cluster_nodes(
        [
            (cluster_config(proxy.url, s3), owner("back-a")),
            (cluster_config(nats.urls, s3), owner("back-b", 7200)),
        ]
    ) as (a, b):
        fid = new_file_id()
        assert await a.claims.claim(fid) == a.me
        await proxy.cut()
        await wait_until(lambda: a.nodes.fenced, LEASE_S * 3, "back-a fenced")
        with pytest.raises(
            ClusterError, match=r"^node back-a is fenced: cannot claim [0-9a-f]{32}$"
        ):
            await a.claims.claim(new_file_id())
        await wait_until(lambda: not b.nodes.table.alive("back-a"), STALE_S * 3, "seen dead")
        assert await b.claims.claim(fid) == b.me
        await proxy.start()  # the network comes back: back-a reconnects and renews
        await wait_until(lambda: not a.nodes.fenced, 10, "back-a renews")
        assert await a.claims.claim(fid) == b.me, "the upload is back-b's now"
        assert not a.claims.owns(fid)
        assert b.claims.owns(fid)
    await proxy.cut()


async def test_a_claim_written_over_by_another_node_is_reported_lost(
    nats: NatsCluster, s3: MotoServer
) -> None:
    lost: list[tuple[FileId, LostReason]] = []
    async with cluster_nodes(
        [(cluster_config(nats.urls, s3), owner("over-a"))],
        on_lost=lambda fid, why: lost.append((fid, why)),
    ) as (a,):
        fid = new_file_id()
        assert await a.claims.claim(fid) == a.me
        revision = a.claims.held()[fid]
        # another node's write, as one that (wrongly) held over-a dead would make it
        other = await nats_client.connect(servers=[nats.nodes[2].url])
        try:
            kv = await other.jetstream().key_value(OWNERS_BUCKET)
            await kv.update(fid.hex(), Claim(node="over-b", epoch=2).encode(), last=revision)
        finally:
            await other.close()
        await wait_until(lambda: bool(lost), 5, "the takeover reported")
        assert lost == [(fid, LostReason.TAKEN_OVER)]
        assert not a.claims.owns(fid)
        assert await a.claims.release(fid) is False, "not ours to release"


async def test_claims_and_takeover_survive_killing_the_nats_leader(
    nats: NatsCluster, s3: MotoServer
) -> None:
    config = cluster_config(nats.urls, s3)
    try:
        async with cluster_nodes([(config, owner("lead-a")), (config, owner("lead-b", 7200))]) as (
            a,
            b,
        ):
            held = new_file_id()
            assert await a.claims.claim(held) == a.me
            killed = nats.kill_leader(f"KV_{OWNERS_BUCKET}")
            loop = asyncio.get_running_loop()
            start = loop.time()
            fid = new_file_id()
            while True:  # bounded by the test's timeout and the deadline below
                try:
                    assert await b.claims.claim(fid) == b.me
                    break
                except ClusterError:
                    assert loop.time() - start < 30, "no claim within 30 s of the leader kill"
                    await asyncio.sleep(0.1)
            recovered = loop.time() - start
            print(f"killed leader {killed.name}: first claim after {recovered:.2f}s")
            # every node fenced itself during the election; lead-a renews and re-reads
            await wait_until(lambda: not a.nodes.fenced, 10, "lead-a renews")
            assert await a.claims.claim(held) == a.me, "an untouched claim is ours again"
            await a.close(leave=False)
            start = loop.time()
            # b's watchers may have missed revisions during the election: b then reads
            # lead-a's key itself, counts its newest revision as a renewal, and takes the
            # claim over only once that revision too is stale_s old
            while (got := await b.claims.claim(held)) != b.me:
                assert got == a.me
                assert loop.time() - start < STALE_S * 5, "no takeover within 5 stale_s"
                await asyncio.sleep(0.05)
            print(f"takeover after the leader kill: {loop.time() - start:.2f}s after lead-a died")
            assert b.claims.epoch(held) == 2
    finally:
        nats.restart_killed()


async def test_opening_fails_clearly_when_nats_is_unreachable(
    nats: NatsCluster, s3: MotoServer, tmp_path: Path
) -> None:
    config = cluster_config("nats://127.0.0.1:1", s3, connect_timeout_s=1.0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(ClusterError, match=r"^NATS at nats://127\.0\.0\.1:1 not reachable"):
        await Cluster.open(config, owner("lonely"))
    assert loop.time() - start < 3.0


async def test_opening_fails_clearly_when_s3_is_unreachable(
    nats: NatsCluster, s3: MotoServer
) -> None:
    unreachable = MotoServer(proc=s3.proc, port=1)
    config = cluster_config(nats.urls, unreachable, connect_timeout_s=1.0)
    with pytest.raises(ClusterError, match=r"^S3 at http://127\.0\.0\.1:1 "):
        await Cluster.open(config, owner("no-s3"))


async def test_a_node_whose_nats_is_gone_closes_within_its_budget(
    nats: NatsCluster, s3: MotoServer
) -> None:
    """A node told to stop while its NATS goes down (a director killed with everything
    under it) must exit, not wait out a request timeout per step of leaving."""
    proxy = TcpProxy(nats.nodes[2].client_port)
    await proxy.start()
    # Requests that could each wait longer than the whole close budget.
    config = cluster_config(proxy.url, s3, request_timeout_s=CLOSE_BUDGET_S + 3)
    node = await Cluster.open(config, owner("leaving"))
    try:
        assert await node.claims.claim(new_file_id()) == node.me
        assert node.connected
        await proxy.cut()
        await wait_until(lambda: not node.connected, 5, "the cut seen by the client")
    finally:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await node.close()
        took = loop.time() - start
    assert took < CLOSE_BUDGET_S + 2.5, f"close took {took:.2f}s"


async def test_a_node_given_one_url_of_three_servers_creates_three_replicas(
    nats: NatsCluster, s3: MotoServer
) -> None:
    """The servers do not advertise each other, so the client knows one server: the buckets
    and the stream are still made with three replicas, and survive a server's loss."""
    streams = [f"KV_{name}" for name in (NODES_BUCKET, OWNERS_BUCKET, PUBLISHED_BUCKET)]
    streams.append(EVENTS_STREAM)
    admin = await nats_client.connect(servers=nats.urls.split(","))
    try:
        js = admin.jetstream(timeout=5)
        for stream in streams:  # no node of this module is open: start from nothing
            with contextlib.suppress(nats_client.js.errors.NotFoundError):
                await js.delete_stream(stream)
        proxy = TcpProxy(nats.nodes[0].client_port)
        await proxy.start()
        try:
            async with cluster_nodes([(cluster_config(proxy.url, s3), owner("one-url"))]) as (
                node,
            ):
                assert len(node.nc.servers) == 1
                for stream in streams:
                    info = await js.stream_info(stream)
                    assert info.config.num_replicas == 3, stream
        finally:
            await proxy.cut()
    finally:
        await admin.close()
