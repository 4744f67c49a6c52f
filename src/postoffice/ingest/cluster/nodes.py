"""Node liveness: this node's heartbeat in po_ingest_nodes, and its view of every node's
liveness from the age of that node's key revision on our own monotonic clock."""

# Design: nats-server 2.9 has no per-key TTL, and wall clocks are not compared across
# machines, so a node is alive while its key's revision keeps changing: an observer stamps
# each new revision with its own monotonic time and holds the node dead once the stamp is
# `stale_s` old. A deleted key (a clean shutdown) is dead at once. Two things would make a
# live node look dead, and each is corrected: our watcher may stall (so before acting on a
# death, `alive()` reads the key itself and compares revisions), and a NATS outage stops
# every heartbeat at once (so when our own heartbeat comes back after failing, every node's
# stamp restarts: nobody could renew while we could not). Our own side is the lease: a node
# whose last renewal is `lease_s` old is fenced and told so through `on_lapse`.

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, final

import nats.errors
import nats.js.errors
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from postoffice.core.clock import Clock
from postoffice.ingest.cluster.config import ClusterConfig
from postoffice.ingest.cluster.errors import ClusterError
from postoffice.ingest.cluster.records import check_node_name, decode_node, encode_node
from postoffice.ingest.ownership import Owner

log = logging.getLogger(__name__)

#: The watcher is restarted when it shows nothing, not even our own heartbeat, this many
#: heartbeats long: an ordered consumer can stay silent after its server died.
_WATCH_SILENCE_BEATS: Final = 3
#: Pause before retrying a watcher that could not be started.
_RETRY_S: Final = 0.2


@dataclass(slots=True)
class _Seen:
    revision: int
    stamp: float  # our monotonic time when this revision was first seen
    owner: Owner | None  # None: the key was deleted


@final
class NodeTable:
    """Pure: each node's last seen key revision, stamped on `clock`; a node is alive while
    its stamp is younger than `stale_s` and its key is not deleted."""

    __slots__ = ("_clock", "_seen", "stale_s")

    def __init__(self, *, stale_s: float, clock: Clock) -> None:
        self.stale_s = stale_s
        self._clock = clock
        self._seen: dict[str, _Seen] = {}

    def observe(self, node: str, revision: int, owner: Owner | None) -> bool:
        """Record revision `revision` of `node`'s key (`owner` None for a deletion); True
        when it is newer than the one known, which restarts the node's age."""
        known = self._seen.get(node)
        if known is not None and revision <= known.revision:
            return False
        self._seen[node] = _Seen(revision=revision, stamp=self._clock(), owner=owner)
        return True

    def alive(self, node: str) -> bool:
        """True when `node`'s key exists and its revision changed less than stale_s ago."""
        seen = self._seen.get(node)
        return (
            seen is not None
            and seen.owner is not None
            and self._clock() - seen.stamp < self.stale_s
        )

    def age(self, node: str) -> float | None:
        """Seconds since `node`'s key last changed, by our clock; None if never seen."""
        seen = self._seen.get(node)
        return None if seen is None else self._clock() - seen.stamp

    def revision(self, node: str) -> int | None:
        seen = self._seen.get(node)
        return None if seen is None else seen.revision

    def owner(self, node: str) -> Owner | None:
        """The record `node` last advertised, None if never seen or deleted."""
        seen = self._seen.get(node)
        return None if seen is None else seen.owner

    def grace(self) -> None:
        """Restart every node's age from now: called after an outage of our own, which
        stopped the others' heartbeats as it stopped ours."""
        now = self._clock()
        for seen in self._seen.values():
            seen.stamp = now

    def live(self) -> list[str]:
        """The nodes alive now, sorted."""
        return sorted(node for node in self._seen if self.alive(node))

    def __repr__(self) -> str:
        return f"<NodeTable nodes={len(self._seen)} live={len(self.live())}>"


@final
class Nodes:
    """This node's heartbeat and its watcher of po_ingest_nodes (see the design note).

    `on_lapse` (settable after construction) is called on the event loop when our lease
    lapses: the last successful renewal is `lease` seconds old. It is not called again
    until a renewal has succeeded.
    """

    def __init__(
        self,
        kv: KeyValue,
        *,
        me: Owner,
        config: ClusterConfig,
        clock: Clock,
        on_lapse: Callable[[], None] | None = None,
    ) -> None:
        check_node_name(me.node)
        self.me = me
        self.table = NodeTable(stale_s=config.stale_s, clock=clock)
        self._kv = kv
        self._config = config
        self._clock = clock
        self.on_lapse = on_lapse
        self.renewed_at: float | None = None
        self._outage = False
        self._lapsed = False
        self._synced = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._lapse_timer: asyncio.TimerHandle | None = None

    @property
    def fenced(self) -> bool:
        """True when our last renewal is `lease` old or older (or there was none)."""
        return self.renewed_at is None or self._clock() - self.renewed_at >= self._config.lease

    async def start(self) -> None:
        """Write our key, start the heartbeat and the watcher, and wait until the watcher
        has read every node's key. Raises ClusterError when NATS does not answer in time."""
        await self._renew()
        self._tasks = [
            asyncio.create_task(self._watch(), name=f"po-nodes-watch-{self.me.node}"),
            asyncio.create_task(self._beat(), name=f"po-nodes-beat-{self.me.node}"),
        ]
        try:
            await asyncio.wait_for(self._synced.wait(), self._config.request_timeout_s)
        except TimeoutError:
            await self.stop(leave=False)
            raise ClusterError(
                f"the watcher of the nodes bucket read nothing within "
                f"{self._config.request_timeout_s}s"
            ) from None

    async def stop(self, *, leave: bool = True) -> None:
        """Stop the heartbeat and watcher; with `leave`, delete our key so that the others
        see us gone at once rather than after stale_s."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._lapse_timer is not None:
            self._lapse_timer.cancel()
        if leave:
            try:
                await asyncio.wait_for(
                    self._kv.delete(self.me.node), self._config.request_timeout_s
                )
            except (TimeoutError, nats.errors.Error) as exc:
                log.warning("node=%s could not delete its key: %s", self.me.node, exc)

    async def alive(self, node: str) -> bool:
        """Whether `node` is alive; before answering dead, read its key to be sure the
        watcher did not miss a renewal. Raises ClusterError when NATS does not answer."""
        if self.table.alive(node):
            return True
        try:
            entry = await asyncio.wait_for(self._kv.get(node), self._config.request_timeout_s)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return False
        except (TimeoutError, nats.errors.Error) as exc:
            raise ClusterError(f"cannot read the key of node {node}: {exc!r}") from exc
        if entry.revision is not None and entry.value is not None:
            self._apply(node, entry.revision, entry.value, None)
        return self.table.alive(node)

    def owner(self, node: str) -> Owner | None:
        """The record `node` last advertised."""
        return self.table.owner(node)

    # -- the heartbeat -----------------------------------------------------------------

    async def _renew(self) -> None:
        try:
            revision = await asyncio.wait_for(
                self._kv.put(self.me.node, encode_node(self.me)), self._config.request_timeout_s
            )
        except (TimeoutError, nats.errors.Error) as exc:
            self._outage = True
            raise ClusterError(f"node {self.me.node} could not renew its key: {exc!r}") from exc
        self.renewed_at = self._clock()
        self.table.observe(self.me.node, revision, self.me)
        if self._outage:
            self._outage = False
            self.table.grace()
        self._lapsed = False
        self._arm_lapse()

    def _arm_lapse(self) -> None:
        if self._lapse_timer is not None:
            self._lapse_timer.cancel()
        assert self.renewed_at is not None
        left = max(0.0, self.renewed_at + self._config.lease - self._clock())
        self._lapse_timer = asyncio.get_running_loop().call_later(left, self._check_lapse)

    def _check_lapse(self) -> None:
        if self._lapsed or not self.fenced:
            if not self._lapsed:
                self._arm_lapse()  # the clock has not reached the lease yet
            return
        self._lapsed = True
        log.warning("node=%s lease lapsed: its claims are lost until it renews", self.me.node)
        if self.on_lapse is not None:
            self.on_lapse()

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        period = self._config.heartbeat_s
        next_at = loop.time() + period
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at = max(next_at + period, loop.time())
            try:
                await self._renew()
            except ClusterError as exc:
                log.debug("%s", exc)

    # -- the watcher -------------------------------------------------------------------

    def _apply(self, node: str, revision: int, value: bytes, operation: str | None) -> None:
        if operation in (KV_DEL, KV_PURGE):
            self.table.observe(node, revision, None)
            return
        try:
            owner = decode_node(node, value)
        except ClusterError as exc:
            log.warning("node=%s unreadable node record ignored: %s", node, exc)
            return
        self.table.observe(node, revision, owner)

    async def _watch(self) -> None:
        silence_s = _WATCH_SILENCE_BEATS * self._config.heartbeat_s
        while True:
            try:
                watcher = await self._kv.watchall()
            except (TimeoutError, nats.errors.Error) as exc:
                log.debug("node=%s nodes watcher not started: %r", self.me.node, exc)
                await asyncio.sleep(_RETRY_S)
                continue
            try:
                while True:
                    entry = await watcher.updates(timeout=silence_s)  # type: ignore[no-untyped-call]  # nats-py leaves KeyWatcher untyped
                    if entry is None:
                        self._synced.set()
                    elif not isinstance(entry, KeyValue.Entry):
                        break  # the watcher was stopped under us: start another
                    elif entry.revision is not None:
                        self._apply(entry.key, entry.revision, entry.value or b"", entry.operation)
            except (TimeoutError, nats.errors.Error) as exc:
                log.debug("node=%s nodes watcher restarts: %r", self.me.node, exc)
            finally:
                with contextlib.suppress(TimeoutError, nats.errors.Error):
                    await asyncio.wait_for(
                        watcher.stop(),  # type: ignore[no-untyped-call]  # untyped in nats-py
                        self._config.request_timeout_s,
                    )

    def __repr__(self) -> str:
        state = "FENCED" if self.fenced else "LIVE"
        return f"<Nodes {self.me.node} {state} live={self.table.live()}>"
