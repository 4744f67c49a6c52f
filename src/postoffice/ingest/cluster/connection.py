"""Cluster: the one object a node opens to join the ingest cluster (NATS JetStream for
ownership and events, S3 for the bytes), and closes when it leaves."""

from __future__ import annotations

import asyncio
import logging
from typing import Final, final

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from postoffice.core.clock import MONOTONIC, Clock
from postoffice.ingest.cluster.claims import Claims, OnLost
from postoffice.ingest.cluster.config import ClusterConfig
from postoffice.ingest.cluster.errors import ClusterError
from postoffice.ingest.cluster.events import Events, OnEvent, ensure_stream
from postoffice.ingest.cluster.nodes import Nodes
from postoffice.ingest.cluster.objects import Objects, open_store
from postoffice.ingest.cluster.published import Publications
from postoffice.ingest.cluster.records import (
    NODES_BUCKET,
    OWNERS_BUCKET,
    PUBLISHED_BUCKET,
)
from postoffice.ingest.cluster.replicas import create_replicated, replica_choices
from postoffice.ingest.ownership import Owner

log = logging.getLogger(__name__)

#: Pause between reconnect attempts to NATS once connected (the first connect is bounded by
#: the config's connect timeout instead).
RECONNECT_WAIT_S: Final = 0.25
#: The most a node spends leaving (stopping its watchers, deleting its key) before it
#: disconnects regardless: a node told to stop while NATS is going down must still exit.
CLOSE_BUDGET_S: Final = 5.0


async def _bucket(
    js: JetStreamContext, name: str, *, replicas: tuple[int, ...], timeout_s: float
) -> tuple[KeyValue, int | None]:
    """Open KV bucket `name`, creating it (one value per key, file storage) when missing
    with the first of `replicas` the cluster can hold; returns it and the replicas it was
    created with (None when it was there already)."""
    try:
        return await asyncio.wait_for(js.key_value(name), timeout_s), None
    except nats.js.errors.BucketNotFoundError:
        pass
    except (TimeoutError, nats.errors.Error) as exc:
        raise ClusterError(f"cannot open KV bucket {name}: {exc!r}") from exc

    async def create(count: int) -> KeyValue:
        # two nodes creating it at once is fine: the same config is accepted twice
        return await asyncio.wait_for(
            js.create_key_value(
                bucket=name, history=1, replicas=count, storage=api.StorageType.FILE
            ),
            timeout_s,
        )

    try:
        kv, used = await create_replicated(create, replicas, f"KV bucket {name}")
    except (TimeoutError, nats.errors.Error) as exc:
        raise ClusterError(f"cannot create KV bucket {name}: {exc!r}") from exc
    return kv, used


@final
class Cluster:
    """A node's membership of the ingest cluster.

    `claims` holds upload ownership (claim, owns, release; `on_lost` told of each claim
    lost), `nodes` this node's heartbeat and its view of the others, `objects` the chunks
    and published files in S3, `published` the published records, `events` the events
    stream (`on_event` fed every node's events). Open with `Cluster.open`, and `close`.
    """

    def __init__(
        self,
        *,
        config: ClusterConfig,
        me: Owner,
        nc: NatsClient,
        nodes: Nodes,
        claims: Claims,
        objects: Objects,
        published: Publications,
        events: Events,
    ) -> None:
        self.config = config
        self.me = me
        self.nc = nc
        self.nodes = nodes
        self.claims = claims
        self.objects = objects
        self.published = published
        self.events = events
        self._closed = False

    @classmethod
    async def open(
        cls,
        config: ClusterConfig,
        me: Owner,
        *,
        on_lost: OnLost | None = None,
        on_event: OnEvent | None = None,
        clock: Clock = MONOTONIC,
    ) -> Cluster:
        """Connect to NATS and S3, create the buckets and stream where missing, start the
        heartbeat, the watchers and the events consumer. Raises ClusterError, naming NATS or
        S3, when either cannot be reached within `config.connect_timeout_s`."""
        objects = Objects(open_store(config))
        nc = await _connect(config)
        try:
            try:
                await asyncio.wait_for(objects.check(), config.connect_timeout_s)
            except TimeoutError:
                raise ClusterError(
                    f"S3 at {config.s3_url} did not answer within {config.connect_timeout_s}s"
                ) from None
            except ClusterError as exc:
                raise ClusterError(f"S3 at {config.s3_url} unusable: {exc}") from exc
            js = nc.jetstream(timeout=config.request_timeout_s)
            replicas = replica_choices(config.replicas)
            timeout_s = config.request_timeout_s
            nodes_kv, _ = await _bucket(js, NODES_BUCKET, replicas=replicas, timeout_s=timeout_s)
            owners_kv, created = await _bucket(
                js, OWNERS_BUCKET, replicas=replicas, timeout_s=timeout_s
            )
            published_kv, _ = await _bucket(
                js, PUBLISHED_BUCKET, replicas=replicas, timeout_s=timeout_s
            )
            await ensure_stream(js, replicas=replicas, timeout_s=timeout_s)
            nodes = Nodes(nodes_kv, me=me, config=config, clock=clock)
            claims = Claims(owners_kv, js, nodes=nodes, config=config, on_lost=on_lost)
            nodes.on_lapse = claims.lapse
            events = Events(
                js,
                node=me.node,
                on_event=on_event,
                timeout_s=timeout_s,
                publish_timeout_s=config.publish_timeout_s,
                idle_s=config.consumer_idle_s,
            )
            await nodes.start()
            try:
                await claims.start()
                await events.start()
            except ClusterError:
                await claims.stop()
                await nodes.stop(leave=True)
                raise
        except BaseException:
            await _close_nats(nc)
            raise
        log.info(
            "node=%s joined the cluster%s",
            me.node,
            "" if created is None else f" (created the buckets, replicas={created})",
        )
        return cls(
            config=config,
            me=me,
            nc=nc,
            nodes=nodes,
            claims=claims,
            objects=objects,
            published=Publications(published_kv, timeout_s=timeout_s),
            events=events,
        )

    async def close(self, *, leave: bool = True) -> None:
        """Stop every task and disconnect. With `leave`, delete this node's key first, so
        the others see it gone at once; without, it is seen dead after stale_s, as after a
        crash. Never raises for a NATS that is gone."""
        if self._closed:
            return
        self._closed = True
        try:
            async with asyncio.timeout(CLOSE_BUDGET_S):
                await self.events.stop()
                await self.claims.stop()
                # Without a connection the delete could only wait out its timeout.
                await self.nodes.stop(leave=leave and self.connected)
        except TimeoutError:
            log.warning("node=%s left NATS unannounced after %ss", self.me.node, CLOSE_BUDGET_S)
        await _close_nats(self.nc)

    @property
    def connected(self) -> bool:
        """Whether the NATS connection is up now (nats-py reconnects in the background)."""
        return bool(self.nc.is_connected)

    def __repr__(self) -> str:
        state = "CLOSED" if self._closed else ("FENCED" if self.nodes.fenced else "LIVE")
        return f"<Cluster {self.me.node} {state} claims={len(self.claims.held())}>"


async def _connect(config: ClusterConfig) -> NatsClient:
    """Connect to any of the configured NATS servers within the connect timeout."""

    async def quiet(exc: Exception) -> None:
        # nats-py reports every failed reconnect attempt here; the heartbeat logs outages
        log.debug("nats: %r", exc)

    try:
        return await asyncio.wait_for(
            nats.connect(
                servers=list(config.nats_urls),
                connect_timeout=min(2.0, config.connect_timeout_s),
                reconnect_time_wait=RECONNECT_WAIT_S,
                max_reconnect_attempts=-1,
                error_cb=quiet,
            ),
            config.connect_timeout_s,
        )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        raise ClusterError(
            f"NATS at {','.join(config.nats_urls)} not reachable within "
            f"{config.connect_timeout_s}s: {exc!r}"
        ) from exc


async def _close_nats(nc: NatsClient) -> None:
    try:
        await asyncio.wait_for(nc.close(), 2.0)
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        log.debug("nats close: %r", exc)
