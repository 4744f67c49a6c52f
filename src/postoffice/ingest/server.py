"""IngestServer: the ingest server's parts put together, its listeners and lifecycle,
and what its connections, control port and telemetry ask of it.

Ingest layer, the I/O shell on one event loop; blocking work runs on its I/O threads.
"""

# Design
# ------
# One process, one event loop. Acceptors never wait on handlers: each accepted socket
# gets its own Protocol (connections.py, control.py). The server owns the parts and
# wires them together, each seeing the others only through small Protocols:
#
#   ChunkStore (storage.py)        the durable patches and published records
#   Intake (intake.py)             a chunk's pipeline: route, verify, store, ack, assemble
#   SinglePublishes (singles.py)   one-chunk uploads, published before their ACK
#   Assemblies (assembler.py)      one assembly per stored upload, streaming or not
#   Reports (reports.py)           counts (IngestStats), telemetry, ack-port events
#   EventHub, AckHub (events.py)   the /events streams and the ack-port subscribers
#
# Blocking work (fsync'd chunk writes, zstd, cleanup) runs on an I/O thread pool. The
# cleanup loop runs under a Supervisor that logs a crash and carries on; listeners
# retry binds with backoff (core.listeners).

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, TypeVar, final

from postoffice.core import metrics
from postoffice.core.clock import MONOTONIC, Clock
from postoffice.core.connections import ConnectionManager
from postoffice.core.framing import FrameError
from postoffice.core.http import (
    Response,
    Route,
    health_routes,
    metrics_route,
    serve_http,
)
from postoffice.core.httpapi import Endpoint, WebSocketRoute
from postoffice.core.listeners import bound_address, listen
from postoffice.core.reload import apply_log_level
from postoffice.core.runtime import Supervisor, serve_until_stopped
from postoffice.core.workers import WorkerPool
from postoffice.ingest.admin import admin_routes, events_route
from postoffice.ingest.assembler import Assemblies
from postoffice.ingest.config import MAX_DATA_PORTS, IngestConfig
from postoffice.ingest.connections import (
    MAX_SERVER_SUBSCRIPTIONS,
    AckConnection,
    DataConnection,
)
from postoffice.ingest.control import ControlConnection
from postoffice.ingest.errors import (
    IngestError,
    MovedError,
    ShuttingDownError,
    UnknownFileError,
)
from postoffice.ingest.events import AckHub, EventHub
from postoffice.ingest.intake import Intake
from postoffice.ingest.messages import (
    MAX_STATUS_RANGES,
    Ack,
    Chunk,
    Failed,
    FileId,
    Published,
    Status,
    UploadState,
    file_id_hex,
)
from postoffice.ingest.ownership import Ownership, moved_message
from postoffice.ingest.patches import PayloadInfo
from postoffice.ingest.protocol import CHUNK_OVERHEAD_BYTES
from postoffice.ingest.reports import IngestStats, Reports, published_message
from postoffice.ingest.singles import SinglePublishes
from postoffice.ingest.storage import ChunkStore
from postoffice.ingest.ttl import CleanupReport, cleanup_pass

if TYPE_CHECKING:  # imported in cluster mode only: it brings nats and obstore
    from postoffice.ingest.clustered import ClusteredNode

log = logging.getLogger(__name__)

#: Committed chunks the store keeps in memory for the streaming assemblies, in bytes
#: (storage.py's design note): about what the data connections have in flight at once,
#: so an assembly that keeps up with its upload never reads a patch back.
RESIDENT_CHUNK_BYTES: Final = 64 * 1024 * 1024

#: IngestStats' fields that /metrics shows as counters (the rest of its keys are gauges).
_COUNTERS: Final = (
    *(field.name for field in dataclasses.fields(IngestStats)),
    "connections_accepted",
    "connections_rejected",
    "events",
)

T = TypeVar("T")


@final
class IngestServer:
    """Owns the store, the listeners, the intake, the assemblies and the cleanup loop.

    Two-phase init: the constructor only sets memory up; `startup()` opens the store,
    binds every port and starts the background work. `serve(stop)` runs until `stop` is
    set, then drains: acceptors stop, chunks in flight and assemblies in progress finish.
    `ownership` makes it a node of a cluster: chunks and QUERYs of uploads another node
    owns are answered MOVED (ownership.py); without it, it is a single node.
    """

    def __init__(
        self,
        config: IngestConfig,
        *,
        clock: Clock = MONOTONIC,
        ownership: Ownership | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.ownership = ownership
        streams = config.stream_assemblies > 0 and not config.assemble_via_part
        self.store = ChunkStore(
            config.patches_path,
            config.published_path,
            fsync=config.fsync,
            resident_bytes=RESIDENT_CHUNK_BYTES if streams else 0,
            max_payloads=config.max_uploads,
        )
        limits = config.connection_limits(self.max_frame_payload)
        self.data_manager = ConnectionManager(limits, clock=clock)
        self.sys_manager = ConnectionManager(
            dataclasses.replace(limits, idle_timeout_s=0), clock=clock
        )
        self.pool = WorkerPool(config.io_threads, name="ingest-io")
        self.stats = IngestStats()
        self.events = EventHub()
        self.acks = AckHub(limit=MAX_SERVER_SUBSCRIPTIONS)
        self.reports = Reports(stats=self.stats, events=self.events, acks=self.acks)
        self.assembler = Assemblies(
            config=config, store=self.store, pool=self.pool, reports=self.reports
        )
        self.singles = SinglePublishes(
            config=config, store=self.store, pool=self.pool, reports=self.reports
        )
        self.intake = Intake(
            config=config,
            store=self.store,
            pool=self.pool,
            singles=self.singles,
            assemblies=self.assembler,
            reports=self.reports,
            ownership=ownership,
        )
        self.supervisor = Supervisor()
        self.addresses: dict[str, tuple[str, int]] = {}
        self._data_listeners: dict[int, asyncio.Server] = {}
        self._sys_listeners: list[asyncio.Server] = []
        self._ready = False
        #: Set once shutdown begins: a cluster node then sends QUERYs elsewhere.
        self._draining = False
        #: This node's side of the cluster in cluster mode (--cluster), else None.
        self.cluster: ClusteredNode | None = None
        self._scale_lock = asyncio.Lock()
        self.registry = metrics.new_registry()
        self.registry.register(
            metrics.StatsCollector("postoffice_ingest", self.metrics, counters=_COUNTERS)
        )

    @property
    def accepting(self) -> bool:
        """Whether chunks are taken: False while starting and once draining."""
        return self.intake.accepting

    @property
    def max_frame_payload(self) -> int:
        """The largest frame payload a data port accepts: one full chunk."""
        return self.config.max_chunk_bytes + CHUNK_OVERHEAD_BYTES

    @property
    def busy(self) -> set[FileId]:
        """File ids being assembled now, one-chunk publishes included."""
        return self.assembler.running.keys() | self.singles.pending.keys()

    def __repr__(self) -> str:
        return (
            f"<IngestServer x={len(self._data_listeners)} uploads={len(self.store.payloads())}"
            f" assembling={len(self.assembler.running)}>"
        )

    # -- lifecycle ---------------------------------------------------------------------

    async def startup(self) -> None:
        """Open the store (recovering what a crash left), bind every port, start cleanup."""
        config = self.config
        self.pool.start()
        recovered = await self.blocking(self.store.open)
        config.files_path.mkdir(parents=True, exist_ok=True)
        self.data_manager.startup()
        self.sys_manager.startup()
        for name, offset, factory in (
            ("health", 0, None),
            ("telemetry", 1, None),
            ("control", 2, lambda: ControlConnection(self.sys_manager, self, config.control_token)),
            ("ack", 3, lambda: AckConnection(self)),
        ):
            port = config.sys_base + offset if config.sys_base else 0
            if name == "health":
                server = await serve_http(self._health_routes(), host=config.host, port=port)
            elif name == "telemetry":
                server = await serve_http(self._telemetry_routes(), host=config.host, port=port)
            else:
                assert factory is not None
                server = await listen(factory, host=config.host, port=port, name=name)
            self._sys_listeners.append(server)
            self.addresses[name] = bound_address(server)
        for index in range(config.x):
            await self._open_data_port(index)
        if config.cluster is not None:
            await self._join_cluster()
        self.intake.open()
        self.supervisor.start("cleanup", self._cleanup_forever)
        for info in recovered:
            if info.complete:
                self.assembler.start(info.file_id)
        log.info(
            "ingest ready uploads_recovered=%d data_ports=%s",
            len(recovered),
            [a[1] for k, a in sorted(self.addresses.items()) if k.startswith("data")],
        )
        self._ready = True

    async def serve(self, stop: asyncio.Event, *, ready_file: str | None = None) -> None:
        """Start, announce, run until `stop`, then drain and close."""
        await serve_until_stopped(self, stop, service="ingest", ready_file=ready_file)

    async def shutdown(self) -> None:
        """Stop acceptors, finish chunks in flight and assemblies in progress, close."""
        self._ready = False
        self._draining = True
        self.intake.close()
        self.assembler.drain()
        for server in [*self._data_listeners.values(), *self._sys_listeners]:
            server.close()
        deadline = self.config.shutdown_timeout_s
        await self.data_manager.shutdown(deadline_s=deadline)
        if self.cluster is not None:
            # No chunk is in flight now: the uploads this node will not finish go to the
            # others at once, while it still waits for its assemblies below.
            await self.cluster.hand_over()
        running = self.assembler.running
        if running:
            log.info("waiting for assemblies count=%d", len(running))
            await asyncio.wait(list(running.values()), timeout=deadline)
        await self.sys_manager.shutdown(deadline_s=1.0)
        await self.supervisor.stop()
        if self.cluster is not None:
            await self.cluster.close()
        self.pool.close()
        self.assembler.close()
        self.singles.close()
        self._data_listeners.clear()
        self._sys_listeners.clear()
        log.info("ingest stopped chunks=%d published=%d", self.stats.chunks, self.stats.published)

    async def _join_cluster(self) -> None:
        """Open the cluster (clustered.py) and wire its seams into the intake, the
        assemblies and the events. Raises ClusterError naming NATS or S3."""
        from postoffice.ingest.cluster import Owner
        from postoffice.ingest.clustered import ClusteredNode, default_node_name

        config = self.config
        health_port = self.addresses["health"][1]
        node = ClusteredNode(
            config=config.cluster_config(),
            files_dir=config.files_path,
            store=self.store,
            pool=self.pool,
            assemblies=self.assembler,
            acks=self.acks,
            events=self.events,
            known=lambda fid: self.final_event(fid, local=True) is not None,
            failure=lambda fid: None if (f := self.reports.failure(fid)) is None else f.event,
        )
        me = Owner(
            node=config.node_name or default_node_name(health_port),
            host=config.advertise or config.host,
            health_port=health_port,
            data_ports=tuple(self.data_ports()),
        )
        await node.open(me)
        self.cluster = node
        assert node.ownership is not None  # open made it
        self.join(node.ownership)
        self.intake.replicate = node.replicate
        self.assembler.record = node.record
        self.assembler.outputs = node.outputs

    # -- data ports --------------------------------------------------------------------

    async def _open_data_port(self, index: int) -> None:
        config = self.config
        port = config.data_base + index if config.data_base else 0
        server = await listen(
            lambda: DataConnection(self, index).protocol,
            host=config.host,
            port=port,
            name=f"data{index}",
        )
        self._data_listeners[index] = server
        self.addresses[f"data{index}"] = bound_address(server)

    async def set_x(self, x: int) -> None:
        """Scale the data ports: bind new ones, or close the highest, whose connections
        drain (DataConnection.shutdown_requested). Raises ConfigError for an x outside
        1..MAX_DATA_PORTS."""
        new = dataclasses.replace(self.config, x=x)
        async with self._scale_lock:
            before = len(self._data_listeners)
            for index in range(before, x):
                await self._open_data_port(index)
            for index in range(before - 1, x - 1, -1):
                server = self._data_listeners.pop(index)
                server.close()
                self.addresses.pop(f"data{index}", None)
            for conn in self.data_manager:
                if isinstance(conn, DataConnection) and conn.port_index >= x:
                    conn.shutdown_requested()
            self.config = new
        self.events.emit("listener_scaled", x_before=before, x=x, data_ports=self.data_ports())
        log.info("data ports scaled x_before=%d x=%d", before, x)

    def set_ttl(self, ttl_s: float) -> None:
        """Use `ttl_s` from the next cleanup pass on; raises ConfigError when out of range."""
        self.config = dataclasses.replace(self.config, ttl_s=ttl_s)
        self.events.emit("ttl_changed", ttl_s=ttl_s)

    def set_max_uploads(self, max_uploads: int) -> None:
        """Refuse chunks that would start an upload past `max_uploads` from now on (those
        in progress go on); raises ConfigError when out of range."""
        self.config = dataclasses.replace(self.config, max_uploads=max_uploads)
        self.store.max_payloads = max_uploads
        self.events.emit("max_uploads_changed", max_uploads=max_uploads)

    def set_output_limits(
        self, *, max_output_bytes: int | None = None, max_output_ratio: int | None = None
    ) -> None:
        """Bound the assemblies and one-chunk publishes that start from now on (those
        running keep the limits they started with); raises ConfigError when out of range."""
        config = self.config
        config = dataclasses.replace(
            config,
            max_output_bytes=config.max_output_bytes
            if max_output_bytes is None
            else max_output_bytes,
            max_output_ratio=config.max_output_ratio
            if max_output_ratio is None
            else max_output_ratio,
        )
        self.config = config
        self.assembler.config = config
        self.singles.limits = dataclasses.replace(
            self.singles.limits,
            max_output_bytes=config.max_output_bytes,
            max_output_ratio=config.max_output_ratio,
        )
        self.events.emit(
            "output_limits_changed",
            max_output_bytes=config.max_output_bytes,
            max_output_ratio=config.max_output_ratio,
        )

    async def reconfigure(self, new: IngestConfig) -> None:
        """Run with the settings `new` from now on (a reload's live ones, core/reload.py),
        each as its CONFIG SET does it; the data ports first, the one change that can
        fail (a port that cannot be bound). Raises PostOfficeError then, the others not
        made."""
        old = self.config
        if new.x != old.x:
            await self.set_x(new.x)
        if new.ttl_s != old.ttl_s:
            self.set_ttl(new.ttl_s)
        if new.max_uploads != old.max_uploads:
            self.set_max_uploads(new.max_uploads)
        if (new.max_output_bytes, new.max_output_ratio) != (
            old.max_output_bytes,
            old.max_output_ratio,
        ):
            self.set_output_limits(
                max_output_bytes=new.max_output_bytes, max_output_ratio=new.max_output_ratio
            )
        limits = new.connection_limits(self.max_frame_payload)
        self.data_manager.limits = limits
        self.sys_manager.limits = dataclasses.replace(limits, idle_timeout_s=0)
        self.intake.min_chunk_bytes = new.min_chunk_bytes
        if new.log_level != old.log_level:
            apply_log_level(new.log_level)
        self.config = new
        self.assembler.resize(new)

    def data_ports(self) -> list[int]:
        """The data ports listening now, in order."""
        return [self.addresses[f"data{i}"][1] for i in sorted(self._data_listeners)]

    def join(self, ownership: Ownership) -> None:
        """Become a node of a cluster: from now on `ownership` routes chunks and QUERYs. For
        a cluster joined once the ports are bound, since a node advertises them."""
        self.ownership = ownership
        self.intake.ownership = ownership

    # -- what the connections ask (connections.DataPortHost, AckPortHost) --------------

    @property
    def max_chunk_bytes(self) -> int:
        """The chunk data limit."""
        return self.config.max_chunk_bytes

    @property
    def max_in_flight(self) -> int:
        """Chunks per data connection being accepted at once."""
        return self.config.max_in_flight

    def accept_chunk(self, chunk: Chunk) -> Awaitable[Ack]:
        """Take one chunk in: Intake.accept, whose awaitable is handed back as it is (no
        coroutine of its own per chunk). It gives the ACK once the chunk is durable and
        raises IngestError subclasses (conflict, storage, shutting down...)."""
        return self.intake.accept(chunk)

    def answer_query(self, file_id: FileId) -> Status | Awaitable[Status]:
        """The reply to a QUERY: `query`, on a single node. In a cluster, raises MovedError
        for an upload another node owns, and hands back an awaitable of the STATUS while
        the ownership decides (it raises the same); for an upload this node holds nothing
        of, the awaitable looks in the cluster too (the upload's published record, its
        chunks in S3, adopted)."""
        ownership = self.ownership
        if ownership is not None:
            if self._draining and not self._finishing_here(file_id):
                # Draining: this node takes no chunk now, and hands its uploads over.
                raise ShuttingDownError(
                    f"node {ownership.node} is leaving: query {file_id_hex(file_id)} on another"
                )
            owner = ownership.owner(file_id)
            if owner is None:
                return self._query_claimed(file_id, ownership)
            if owner.node != ownership.node:
                raise MovedError(moved_message(owner))
        return self._query_here(file_id)

    def _finishing_here(self, file_id: FileId) -> bool:
        """Whether this node has every chunk of the upload (it assembles and publishes it
        while it drains) or has published it."""
        info = self.store.info(file_id)
        return (info is not None and info.complete) or self.store.published(file_id) is not None

    def _query_here(self, file_id: FileId) -> Status | Awaitable[Status]:
        status = self.query(file_id)
        if self.cluster is not None and status.state is UploadState.UNKNOWN:
            return self.cluster.query(file_id, self.query)
        return status

    async def _query_claimed(self, file_id: FileId, ownership: Ownership) -> Status:
        """The STATUS of an upload this node has not decided yet: MOVED to its live owner,
        this node's answer once the claim is ours (a dead owner's taken over), and for an
        upload no node claims, what this node and the published records know, claiming
        nothing."""
        owner = await ownership.find(file_id)
        if owner is None:
            status = self.query(file_id)
            if self.cluster is not None and status.state is UploadState.UNKNOWN:
                return await self.cluster.query(file_id, self.query, adopt=False)
            return status
        if owner.node != ownership.node:
            raise MovedError(moved_message(owner))
        here = self._query_here(file_id)
        return here if isinstance(here, Status) else await here

    def query(self, file_id: FileId) -> Status:
        """What this server knows of an upload: state, progress and missing ranges."""
        done = self.store.published(file_id)
        if done is not None:
            return Status(
                file_id=file_id,
                state=UploadState.PUBLISHED,
                total=0,
                committed=0,
                size=done.size,
                name=done.name,
                missing=(),
            )
        failed = self.reports.failure(file_id)
        if failed is not None:
            return Status(
                file_id=file_id,
                state=UploadState.FAILED,
                total=failed.total,
                committed=0,  # its chunks were dropped
                size=failed.size,
                name=failed.name,
                missing=(),
            )
        info = self.store.info(file_id)
        if info is None:
            return Status(
                file_id=file_id,
                state=UploadState.UNKNOWN,
                total=0,
                committed=0,
                size=0,
                name="",
                missing=(),
            )
        state = (
            UploadState.ASSEMBLING
            if info.complete and file_id in self.assembler.running
            else UploadState.UPLOADING
        )
        return Status(
            file_id=file_id,
            state=state,
            total=info.total,
            committed=len(info.committed),
            size=info.size,
            name=info.name,
            missing=_missing(info),
        )

    def final_event(self, file_id: FileId, *, local: bool = False) -> Published | Failed | None:
        """The final event of an upload that already ended, for late subscribers. In
        cluster mode (unless `local`), another node's outcome too: the event it relayed,
        or PUBLISHED pushed to the subscribers later from its published record."""
        done = self.store.published(file_id)
        if done is not None:
            return published_message(done)
        failed = self.reports.failure(file_id)
        if failed is not None:
            return failed.event
        if self.cluster is not None and not local:
            return self.cluster.final_event(file_id)
        return None

    def chunk_refused(self, chunk: Chunk, error: IngestError) -> None:
        """A chunk was answered with ERROR."""
        self.reports.chunk_refused(chunk, error)

    def bad_frame(self, peer: str, error: FrameError) -> None:
        """A connection sent a broken frame."""
        self.reports.bad_frame(peer, error)

    def message_refused(self, peer: str, error: IngestError) -> None:
        """A connection sent a message that did not parse."""
        self.reports.message_refused(peer, error)

    # -- what the control port asks (commands.IngestControl) ---------------------------

    def status(self) -> dict[str, object]:
        """The STATUS reply and /info: listeners, uploads in progress, totals."""
        stats = self.stats
        uploads = len(self.store.payloads())
        return {
            "x": len(self._data_listeners),
            "ttl_s": self.config.ttl_s,
            "data_ports": self.data_ports(),
            "sys_ports": {k: v[1] for k, v in self.addresses.items() if not k.startswith("data")},
            "uploads_in_progress": uploads,
            "assembling": len(self.busy),
            "uploads_total": uploads + stats.published,
            "chunks_total": stats.chunks,
            "published_total": stats.published,
            "bytes_in": stats.chunk_bytes,
            "connections": self.data_manager.active,
            **({} if self.cluster is None else self.cluster.status()),
        }

    def uploads(self) -> list[PayloadInfo]:
        """Uploads not yet published."""
        return self.store.payloads()

    def missing(self, file_id: bytes) -> tuple[tuple[int, int], ...]:
        """Missing index ranges of an upload; raises UnknownFileError."""
        info = self.store.info(FileId(file_id))
        if info is None:
            raise UnknownFileError(f"unknown upload {file_id.hex()}")
        return _missing(info)

    async def abort(self, file_id: bytes) -> bool:
        """Drop an upload's chunks and forget it; False when there is no such upload.

        Its subscribers get FAILED (ABORTED) now; afterwards the id is unknown, as if never
        seen: QUERY answers UNKNOWN and a chunk sent again starts a fresh upload. In
        cluster mode its chunks in S3 go first, or no node could forget it (raises
        ClusterError then, the upload kept).
        """
        fid = FileId(file_id)
        if self.store.info(fid) is None:
            return False
        if self.cluster is not None:
            await self.cluster.joined.objects.delete_chunks(fid)
        removed = await self.blocking(lambda: self.store.remove(fid))
        if removed:
            self.reports.aborted(fid)
        if self.cluster is not None and self.cluster.ownership is not None:
            await self.cluster.ownership.release(fid)  # the id is free for any node again
        return removed

    async def cleanup_now(self) -> CleanupReport:
        """Run one TTL cleanup pass now and report what it removed."""
        config = self.config
        busy = self.busy
        report = await self.blocking(
            lambda: cleanup_pass(
                store=self.store,
                files_dir=config.files_path,
                ttl_s=config.ttl_s,
                now=time.time(),
                busy=busy,
            )
        )
        if self.cluster is not None:
            # An upload its owner let expire is nobody's: its chunks leave S3 and its claim
            # is given back (else abandoned uploads would keep keys in NATS for ever).
            for hex_id in report.expired_uploads:
                self.cluster.forget(FileId(bytes.fromhex(hex_id)))
        # Failure records are in memory only: forgotten on the loop, with the same TTL.
        forgotten = self.reports.prune_failures(ttl_s=config.ttl_s)
        if forgotten:
            report = dataclasses.replace(report, expired_failures=forgotten)
        self.stats.cleanup_removed += report.total
        if report.total or report.errors:
            self.events.emit(
                "cleanup",
                expired_uploads=list(report.expired_uploads),
                expired_files=list(report.expired_files),
                expired_records=report.expired_records,
                stray_files=list(report.stray_files),
                expired_failures=report.expired_failures,
                errors=list(report.errors),
            )
            log.info("cleanup removed=%d errors=%d", report.total, len(report.errors))
        return report

    async def _cleanup_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.cleanup_interval_s)
            await self.cleanup_now()

    # -- HTTP ----------------------------------------------------------------------------

    def _health_routes(self) -> dict[str, Route | Endpoint]:
        routes = health_routes(lambda: self._ready)

        def info() -> Response:
            return Response(
                status=200,
                body=json.dumps(self.status()).encode() + b"\n",
                content_type="application/json",
            )

        routes["/info"] = info
        return {**routes, **admin_routes(self)}

    def _telemetry_routes(self) -> dict[str, Route | WebSocketRoute]:
        return {
            "/metrics": metrics_route(self.registry),
            "/events": events_route(self.events.stream),
        }

    def metrics(self) -> dict[str, int]:
        """Counters and gauges for /metrics, read at scrape time."""
        return {
            **self.data_manager.stats(),
            **self.stats.counters(),
            "uploads_in_progress": len(self.store.payloads()),
            "assembling": len(self.busy),
            "data_ports": len(self._data_listeners),
            "failed_uploads": self.reports.failures,
            "ack_subscriptions": self.acks.subscriptions,
            "event_streams": self.events.streams,
            "events": self.events.emitted,
        }

    # -- helpers -------------------------------------------------------------------------

    async def blocking(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the I/O pool."""
        return await self.pool.submit(fn)


def _missing(info: PayloadInfo) -> tuple[tuple[int, int], ...]:
    """The first MAX_STATUS_RANGES missing ranges, from the committed indexes: never a walk
    over 0..total-1, which for a total of 2**24 took seconds of the loop per QUERY."""
    return info.missing[:MAX_STATUS_RANGES]


__all__ = ["MAX_DATA_PORTS", "IngestConfig", "IngestServer", "ShuttingDownError"]
