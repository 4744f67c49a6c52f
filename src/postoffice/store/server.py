"""The store server: `StoreConnection` (one client's frames in, replies out, in order) and
`StoreServer` (the engine, the connection manager, statistics and listeners).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final, final

from postoffice.core import metrics
from postoffice.core.clock import MONOTONIC, Clock
from postoffice.core.connections import ConnectionManager
from postoffice.core.errors import LimitExceeded, PostOfficeError
from postoffice.core.framing import MAX_PAYLOAD_BYTES, MAX_REQUEST_ID, FrameDecoder, FrameError
from postoffice.core.http import serve_http
from postoffice.core.listeners import bound_address, listen
from postoffice.core.reload import apply_log_level
from postoffice.core.runtime import serve_until_stopped
from postoffice.core.tracecontext import TraceContext
from postoffice.core.tracing import active as active_tracing
from postoffice.core.transport import WRITE_HIGH_WATER_BYTES, BaseProtocol, ConnInput
from postoffice.core.workers import WorkerPool
from postoffice.store.admin import http_routes
from postoffice.store.config import StoreConfig
from postoffice.store.engine.commit import GroupCommit, OwedReplies
from postoffice.store.engine.engine import BatchOp, Delete, Put, Store, StoreStats
from postoffice.store.engine.logstore import Durability
from postoffice.store.errors import StoreClosedError, status_of
from postoffice.store.stats import COUNTER_KEYS, HELP, ServerStats
from postoffice.store.tracing import StoreTracing
from postoffice.store.wire import (
    CONNECTION_REPLY_ID,
    MAX_KEY_BYTES,
    TRACED_FLAG,
    BatchRequest,
    DeleteRequest,
    GetRequest,
    PingRequest,
    PutRequest,
    Request,
    RequestType,
    ScanRequest,
    StatsRequest,
    Status,
    StoreProtocolError,
    decode_request_parts,
    encode_delete_body,
    encode_error,
    encode_response,
    encode_scan_body,
    encode_stats_body,
    response_head,
    split_put,
    split_trace_context,
)

# Design
# ------
# Requests run on the event loop, in the order they arrive: the engine's get and its
# `_nowait` writes are quick, and order is what makes a pipelined PUT then GET read the
# new value. A connection takes every whole frame of a read at once (`read_frames`); GET
# and PUT, nearly all the traffic, go from the frame's fields straight to the engine
# with no request objects, the others through `store.wire` and `StoreServer.run`.
# Replies not held back leave in one write per read.
# A write's reply is held in the connection's `owed` queue with the write's ticket, and
# every reply behind it waits too. The first such write of an event-loop iteration asks
# GroupCommit (store/engine/commit.py) to sync at the end of the iteration: the appended
# writes go to the file in one write(2), under `--durability always` the committer
# thread fsyncs once for all of them, and then each waiting connection sends what it
# owes up to the covered ticket. Under `interval` and `never` the replies leave right
# after that write: no write pays a write(2) of its own (one per PUT let go of the GIL
# per PUT, for the index's flush thread to keep for a switch interval). Past
# `max_in_flight` owed replies a connection stops reading.
# A request is executed only when its reply can go somewhere: while the peer is not
# reading our replies (`write_blocked`), or the replies owed behind a write already hold
# _OWED_HIGH_WATER_BYTES, the frames already read wait in `_batch`, unexecuted, and
# `on_writable` or `synced` goes on with them. Replies leave in a write every
# WRITE_HIGH_WATER_BYTES, so a read full of GETs of large values stops at the first write
# the peer does not take, instead of building every reply first. What a client that
# still does not read may hold is then the core's output limits' business.
# A read (GET, SCAN) behind a durable write of its connection still waiting for its fsync
# must not show that write unless it succeeds. It is computed at once, as if the write
# will succeed (nearly always true, and then its reply is already made), and owed with
# what it asked (`redo`); nothing that writes runs behind it until it is sent, so the
# connection's own writes never change what it should see. If a write before it fails,
# its fsync rolls back every write not yet durable, and the read is computed again when
# its turn comes: it then shows the store without them. Reads and other requests behind
# it go on, so a pipeline of reads behind a write still costs one fsync.
# A broken frame loses framing: its error reply goes out after the replies owed before
# it, then the connection closes. A bad request inside a good frame gets an error reply
# and the connection goes on.
# A request carrying a trace context has a frame flag set, so it never takes the GET/PUT
# fast path: `run` strips the context and, when tracing is on, wraps the request in a
# span (store/tracing.py). With tracing off the context is checked and dropped.

log = logging.getLogger(__name__)

# What a request comes to: the ticket of a durable write to wait for (0: none), a status
# and the reply body.
_Outcome = tuple[int, Status, bytes]
# A read to compute again if a write before it fails: its type, flags and payload.
_Redo = tuple[int, int, bytes]
# A reply owed behind a durable write: its ticket (0: not a write), request id, wire
# bytes, when its read began (for the latency histogram), and for a read behind a write
# not yet durable, what to compute again (else None).
_Owed = tuple[int, int, bytes, float, _Redo | None]

#: A SCAN page's items must fit one frame with the status byte and the page head, and
#: each item costs its head plus its key and value.
_SCAN_BODY_ROOM: Final = MAX_PAYLOAD_BYTES - 1 - 5
_SCAN_ITEM_HEAD: Final = 6
#: Replies owed behind a durable write are held in memory until its fsync: past this many
#: bytes of them, no further request is executed until they are sent.
_OWED_HIGH_WATER_BYTES: Final = 1024 * 1024
_GET: Final = int(RequestType.GET)
_PUT: Final = int(RequestType.PUT)
_SCAN: Final = int(RequestType.SCAN)
#: Requests that read the store: one behind a write not yet durable may be recomputed.
_READS: Final = frozenset({_GET, _SCAN})
#: Requests that change the store: none runs behind a read still owed a recheck.
_WRITES: Final = frozenset({_PUT, int(RequestType.DELETE), int(RequestType.BATCH)})
_OK: Final = Status.OK
_NOT_FOUND: Final = Status.NOT_FOUND
_NO_SUCH_KEY: Final = b"no such key"
_RESERVED_ID: Final = (
    f"request id {CONNECTION_REPLY_ID} is reserved for replies that answer no request,"
    f" expected 1..{MAX_REQUEST_ID}"
)


@final
class StoreConnection(BaseProtocol):
    """One client of the store server."""

    def __init__(self, server: StoreServer) -> None:
        super().__init__(server.manager)
        self.server = server
        self.frames = FrameDecoder(server.config.max_request_bytes)
        self._batch: list[tuple[int, int, int, bytes]] = []
        #: Replies owed behind a durable write still waiting for its fsync, in request
        #: order; a reply goes out once everything before it has.
        self.owed: OwedReplies[_Owed] = OwedReplies()
        self._owed_bytes = 0  # the wire bytes of the replies in `owed`
        #: A broken frame met after the frames in `_batch`: answered once they are.
        self._broken: FrameError | None = None
        #: A whole request was read or a reply sent since the last `batch_done`.
        self._progress = False
        #: Reads in `owed` computed behind a write not yet durable (see the design note).
        self._reads_owed = 0
        #: A write owed here failed since `owed` was last empty: its reads are recomputed.
        self._write_failed = False
        #: `_serve` stopped at a write behind such a read: `synced` goes on with it.
        self._held = False

    def reject(self, reason: str) -> None:
        self.write(encode_error(CONNECTION_REPLY_ID, Status.BUSY, reason))
        self.close(reason)

    def on_data(self, data: bytes) -> ConnInput | None:
        if self.closing:  # a last reply is owed: read nothing more, close once it is out
            return None if self.owed else ConnInput.IDLE
        frames = self.frames
        if data:
            frames.feed(data)
        owed = self.owed
        batch = self._batch
        limit = self.server.config.max_in_flight
        more = True  # whole frames may still be buffered
        while not self.closing:
            if not batch:
                broken = self._broken
                if broken is not None:
                    self._broken = None
                    return self._bad_frame(broken)
                if not more or self.transport is None:
                    break
                room = limit - len(owed)
                if room <= 0:
                    self.pause_reading()
                    return None
                try:
                    got = frames.read_frames(batch, room)
                except FrameError as exc:
                    self._broken, got = exc, 0
                more = got >= room
                if not batch:
                    continue
                self._progress = True
                self.requests += len(batch)
            if self.write_blocked or self._owed_bytes > _OWED_HIGH_WATER_BYTES:
                return None  # their replies could not go out: on_writable or synced goes on
            served, reserved = self._serve(batch)
            del batch[:served]
            if self._held:
                self.pause_reading()  # `synced` resumes once the reads before it are sent
                return None
            if reserved:
                batch.clear()
                self._broken = None
                log.info("reserved request id conn=%s", self)
                return self._refuse(CONNECTION_REPLY_ID, Status.BAD_REQUEST, _RESERVED_ID)
        if owed:
            return None
        return ConnInput.PARTIAL if frames.buffered_bytes else ConnInput.IDLE

    def on_writable(self) -> None:
        """The peer read enough of our replies: execute the requests held back meanwhile."""
        if self.closing or not (self._batch or self._broken or self.frames.buffered_bytes):
            return
        outcome = self.on_data(b"")
        if outcome is not None:
            self.batch_done(outcome)

    def partial_bytes(self) -> int:
        return self.frames.buffered_bytes

    def _serve(self, batch: list[tuple[int, int, int, bytes]]) -> tuple[int, bool]:
        """Execute a read's requests in order; send the replies not owed behind a write.

        Returns how many of `batch` were executed, and whether it stopped at a request
        carrying the reserved id 0 (that one and those after it are not served: the
        connection is to be refused). It stops early, leaving the rest for later, when a
        write of its replies blocks, the replies owed pass _OWED_HIGH_WATER_BYTES, or a
        write comes behind a read owed behind a write not yet durable (`_held`).
        """
        server = self.server
        store = server.store
        owed = self.owed
        stats = server.stats
        counts = stats.by_type
        out: list[bytes] = []
        pending = 0  # bytes in `out`
        answered = 0
        served = 0
        newest = 0  # the last durable write's ticket
        began = time.monotonic()
        reserved = False
        self._held = False
        for type_, flags, request_id, payload in batch:
            if not request_id:
                reserved = True
                break
            if self._reads_owed and type_ in _WRITES:
                self._held = True
                break
            served += 1
            counts[type_] += 1
            ticket = 0
            if store is None:
                ticket, status, body = server.run(type_, flags, payload)
                wire = encode_response(request_id, status, body)
            elif type_ == _GET and not flags and 0 < len(payload) <= MAX_KEY_BYTES:
                try:
                    value = store.get(payload)
                except PostOfficeError as exc:
                    wire = encode_response(request_id, *server.failure(exc))
                else:
                    if value is None:
                        wire = encode_response(request_id, _NOT_FOUND, _NO_SUCH_KEY)
                    elif owed:
                        wire = response_head(request_id, _OK, value) + value
                    else:
                        out.append(response_head(request_id, _OK, value))
                        out.append(value)
                        answered += 1
                        pending += len(value)
                        if pending >= WRITE_HIGH_WATER_BYTES:
                            self.write(b"".join(out))
                            out.clear()
                            pending = 0
                            if self.write_blocked or self.closing:
                                break
                        continue
            elif type_ == _PUT and not flags:
                try:
                    key, value = split_put(payload)
                    ticket = store.put_nowait(key, value)
                except StoreProtocolError as exc:
                    stats.errors += 1
                    ticket = 0
                    wire = encode_response(request_id, status_of(exc), str(exc).encode())
                except PostOfficeError as exc:
                    ticket = 0
                    wire = encode_response(request_id, *server.failure(exc))
                else:
                    wire = response_head(request_id, _OK)
            else:
                ticket, status, body = server.run(type_, flags, payload)
                wire = encode_response(request_id, status, body)
            if ticket:
                owed.owe((ticket, request_id, wire, began, None), ticket=ticket)
                newest = ticket
                self._owed_bytes += len(wire)
            elif owed:
                redo: _Redo | None = None
                if type_ in _READS and owed.waiting_for_sync:
                    redo = (type_, flags, payload)
                    self._reads_owed += 1
                owed.owe((0, request_id, wire, began, redo))
                self._owed_bytes += len(wire)
            else:
                out.append(wire)
                answered += 1
                pending += len(wire)
                if pending >= WRITE_HIGH_WATER_BYTES:
                    self.write(out[0] if len(out) == 1 else b"".join(out))
                    out.clear()
                    pending = 0
                    if self.write_blocked or self.closing:
                        break
            if self._owed_bytes > _OWED_HIGH_WATER_BYTES:
                break
        if newest:
            server.wait_for_sync(self, newest)
        if answered:
            observe = stats.latency.observe
            elapsed = time.monotonic() - began
            for _ in range(answered):
                observe(elapsed)
        if out:
            self.write(out[0] if len(out) == 1 else b"".join(out))
        return served, reserved

    def _bad_frame(self, exc: FrameError) -> ConnInput | None:
        """Answer a broken frame (after the replies owed before it), then close.

        The reply carries the frame's request id when its header was read, else id 0.
        """
        status = Status.TOO_LARGE if isinstance(exc, LimitExceeded) else Status.BAD_REQUEST
        log.info("bad frame conn=%s error=%r", self, str(exc))
        return self._refuse(exc.request_id or CONNECTION_REPLY_ID, status, str(exc))

    def _refuse(self, request_id: int, status: Status, message: str) -> ConnInput | None:
        """Send one last error reply (after the replies owed before it), then close."""
        self.server.stats.errors += 1
        wire = encode_response(request_id, status, message.encode())
        self.close_when_done(message)
        if self.owed:
            self.owed.owe((0, request_id, wire, time.monotonic(), None))
            self._owed_bytes += len(wire)
            return None
        self.write(wire)
        return ConnInput.IDLE

    def synced(self, covered: int, error: BaseException | None) -> bool:
        """Send the replies owed up to ticket `covered` (writes get the error reply if the
        fsync failed with `error`); return whether a later write is still owed."""
        owed = self.owed
        if self.transport is None:
            self.on_close()
            return False
        stats = self.server.stats
        owed.synced(covered)
        ready: list[_Owed] = []
        owed.pop_ready(ready)
        if ready:
            failure = None if error is None else self.server.sync_failure(error)
            now = time.monotonic()
            out: list[bytes] = []
            observe = stats.latency.observe
            for ticket, request_id, wire, began, redo in ready:
                self._owed_bytes -= len(wire)
                if ticket and failure is not None:
                    stats.errors += 1
                    wire = encode_response(request_id, *failure)
                    self._write_failed = True
                elif redo is not None:
                    self._reads_owed -= 1
                    if self._write_failed:  # it may have seen a write now undone
                        # The same request again: its span is the one already made.
                        again = self.server.run(*redo, traced=False)
                        wire = encode_response(request_id, *again[1:])
                out.append(wire)
                observe(now - began)
            self._progress = True
            self.write(out[0] if len(out) == 1 else b"".join(out))
        if owed:
            if len(owed) < self.server.config.max_in_flight and not self._held:
                self.resume_reading()
            return True
        self._write_failed = False
        self._held = False
        self.resume_reading()
        # What was read meanwhile runs now; nothing new once the connection is to close.
        held = self._batch or self._broken or self.frames.buffered_bytes
        outcome = self.on_data(b"") if held else ConnInput.IDLE
        if outcome is not None:
            self.batch_done(outcome)
        return bool(self.owed)

    def batch_done(self, outcome: ConnInput) -> None:
        # Idle means no whole request read and no reply sent: the bytes of a request that
        # is still incomplete do not count, or a peer dripping a byte at a time would
        # hold its connection (and its buffer) forever.
        idle_since = self.last_active
        super().batch_done(outcome)
        if not self._progress:
            self.last_active = idle_since
        self._progress = False

    def on_close(self) -> None:
        self.owed.clear()
        self._owed_bytes = 0
        self._batch.clear()
        self._reads_owed = 0
        self._write_failed = False
        self._held = False


@final
class StoreServer:
    """The engine, the connection manager, the I/O pool, statistics and listeners.

    Two-phase init: the constructor sets memory up; `startup()` opens the store (recovery
    included) and binds. `serve(stop)` runs until `stop`, then drains and closes.
    """

    def __init__(self, config: StoreConfig, *, clock: Clock = MONOTONIC) -> None:
        self.config = config
        self.manager = ConnectionManager(config.connection_limits(), clock=clock)
        self.pool = WorkerPool(config.io_threads, name="store-io")
        self.store: Store | None = None
        self.addresses: dict[str, tuple[str, int]] = {}
        #: The server's own counters; `snapshot()` is what STATS and /metrics show.
        self.stats = ServerStats()
        self.registry = metrics.new_registry()
        self.registry.register(
            metrics.StatsCollector(
                "postoffice_store",
                self.snapshot,
                counters=COUNTER_KEYS,
                help=HELP,
                histograms={"request_seconds": self.stats.latency},
            )
        )
        self._listeners: list[asyncio.Server] = []
        self._ready = False
        # A write's reply waits for group commit: for the write(2) of its iteration's
        # records, and under `always` for the fsync that covers them too.
        self._fsync = Durability(config.durability) is Durability.ALWAYS
        #: Group commit (see the module's design note).
        self.commit: GroupCommit | None = None
        tracing = active_tracing()
        #: Spans of traced requests; None while tracing is off.
        self.tracing = None if tracing is None else StoreTracing(tracing)

    def __repr__(self) -> str:
        return f"<StoreServer {self.addresses.get('store')} clients={self.manager.active}>"

    async def reconfigure(self, new: StoreConfig) -> None:
        """Run with the settings `new` from now on (a reload's live ones, core/reload.py):
        the connection limits at once; the request size and the SCAN page for the
        connections and requests that come next."""
        if new.log_level != self.config.log_level:
            apply_log_level(new.log_level)
        self.manager.limits = new.connection_limits()
        self.config = new

    async def startup(self) -> None:
        """Open the store (recovering it), start the pool and bind the ports."""
        config = self.config
        self.pool.start()
        config.store_path.mkdir(parents=True, exist_ok=True)
        durability = Durability(config.durability)
        store = await self.pool.submit(lambda: Store.open(config.store_path, durability=durability))
        store.flush_in_background = True  # the event loop must not wait for LMDB
        store.write_behind = True  # one write(2) per loop iteration, see GroupCommit
        self.commit = GroupCommit(store, asyncio.get_running_loop(), fsync=self._fsync)
        if self._fsync:  # without an fsync there is no fsync span to show
            self.commit.observer = self.tracing
        self.commit.start()
        self.store = store
        log.info("store opened path=%s recovery=%s", config.store_path, store.recovery)
        self.manager.startup()
        server = await listen(
            lambda: StoreConnection(self), host=config.host, port=config.port, name="store"
        )
        self._listeners.append(server)
        self.addresses["store"] = bound_address(server)
        if config.metrics_port is not None:
            http = await serve_http(
                http_routes(self, lambda: self._ready),
                host=config.host,
                port=config.metrics_port,
                limits=config.http_limits(),
            )
            self._listeners.append(http)
            self.addresses["metrics"] = bound_address(http)
        self._ready = True

    async def serve(self, stop: asyncio.Event, *, ready_file: str | None = None) -> None:
        """Start, announce, run until `stop`, then drain and close.

        A `stop` while the start-up still waits (a busy port being retried) ends it at
        once; a start-up that fails closes what it opened, then raises.
        """
        await serve_until_stopped(self, stop, service="store", ready_file=ready_file)

    async def shutdown(self) -> None:
        """Stop accepting, let requests in flight finish, close the store."""
        self._ready = False
        for listener in self._listeners:
            listener.close()
        await self.manager.shutdown(deadline_s=self.config.shutdown_timeout_s)
        if self.commit is not None:
            await self.commit.stop()
        if self.store is not None:
            store = self.store
            await self.pool.submit(store.close)
        self.pool.close()
        self._listeners.clear()
        log.info("store stopped requests=%d", self.stats.requests)

    # -- requests ------------------------------------------------------------------------

    def run(self, type_: int, flags: int, payload: bytes, *, traced: bool = True) -> _Outcome:
        """Decode and serve a request off the GET/PUT fast path; every error is a status.

        A durable write's outcome carries its ticket: its reply waits for `wait_for_sync`.
        A request carrying a trace context gets a span while tracing is on, unless not
        `traced` (a read computed again).
        """
        try:
            if flags & TRACED_FLAG:
                context, flags, payload = split_trace_context(flags, payload)
                if context is not None and self.tracing is not None and traced:
                    return self._run_traced(context, type_, flags, payload, self.tracing)
            request = decode_request_parts(type_, flags, payload)
        except StoreProtocolError as exc:
            self.stats.errors += 1
            return 0, status_of(exc), str(exc).encode()
        return self._run(request)

    def _run_traced(
        self, context: TraceContext, type_: int, flags: int, payload: bytes, tracing: StoreTracing
    ) -> _Outcome:
        """`run` of a request that carried `context`, inside its span."""
        span = tracing.begin(context, type_)
        try:
            request = decode_request_parts(type_, flags, payload)
        except StoreProtocolError as exc:
            tracing.failed(span, exc)
            raise
        outcome = self._run(request)
        ticket, status, body = outcome
        # Without an fsync (`interval`, `never`) there is none to wait for in the span.
        tracing.answered(span, ticket if self._fsync else 0, status, body)
        return outcome

    def _run(self, request: Request) -> _Outcome:
        store = self.store
        if store is None:
            return 0, Status.SHUTTING_DOWN, b"store is not open"
        try:
            match request:
                case GetRequest(key=key):
                    value = store.get(key)
                    if value is None:
                        return 0, _NOT_FOUND, _NO_SUCH_KEY
                    return 0, _OK, value
                case PutRequest(key=key, value=value):
                    ticket = store.put_nowait(key, value)
                    return ticket, _OK, b""
                case DeleteRequest(key=key):
                    existed, ticket = store.delete_nowait(key)
                    return ticket, _OK, encode_delete_body(existed)
                case BatchRequest(ops=ops):
                    ticket = store.batch_nowait([_op(op) for op in ops])
                    return ticket, _OK, b""
                case ScanRequest(prefix=prefix, start=start, end=end, limit=limit):
                    items, more = store.scan_page(
                        prefix=prefix,
                        start=start,
                        end=end,
                        limit=limit,
                        max_bytes=min(self.config.max_scan_page_bytes, _SCAN_BODY_ROOM),
                        item_bytes=_SCAN_ITEM_HEAD,
                    )
                    return _scan_page(items, more)
                case PingRequest():
                    return 0, _OK, b""
                case StatsRequest():
                    return 0, _OK, encode_stats_body(self.snapshot())
                case _:
                    return 0, Status.BAD_REQUEST, f"unexpected {type(request).__name__}".encode()
        except PostOfficeError as exc:
            return (0, *self.failure(exc))
        except Exception as exc:
            self.stats.errors += 1
            log.exception("request crashed")
            return 0, Status.INTERNAL, f"internal error: {exc!r}".encode()

    def failure(self, exc: PostOfficeError) -> tuple[Status, bytes]:
        """The status and body that answer a request the engine refused (counted)."""
        status, body = _refusal(exc)
        if status is not Status.SHUTTING_DOWN:
            self.stats.errors += 1
        return status, body

    # -- group commit ----------------------------------------------------------------------

    def wait_for_sync(self, conn: StoreConnection, ticket: int) -> None:
        """`conn` owes the reply of a durable write with `ticket`: ask for its sync.

        The request goes to the committer at the end of this loop iteration, so one sync
        covers every write the iteration appended (all connections' reads of it).
        """
        assert self.commit is not None  # a write has a ticket only while the store is open
        self.commit.wait(conn, ticket)

    def sync_failure(self, exc: BaseException) -> tuple[Status, bytes]:
        """The status and body that answer the writes a failed fsync covered (the caller
        counts each such reply)."""
        if isinstance(exc, PostOfficeError):
            return _refusal(exc)
        return Status.INTERNAL, f"internal error: {exc!r}".encode()

    def snapshot(self) -> dict[str, int | float]:
        """Every STATS key's value (stats.STAT_KEYS): what STATS replies and /metrics shows."""
        engine: StoreStats | None = None
        if self.store is not None:
            with contextlib.suppress(StoreClosedError):
                engine = self.store.stats()
        manager = self.manager
        return self.stats.snapshot({**manager.stats(), **manager.limit_stats()}, engine)


def _refusal(exc: PostOfficeError) -> tuple[Status, bytes]:
    """The status and body that answer a request the engine refused."""
    if isinstance(exc, StoreClosedError):
        return Status.SHUTTING_DOWN, str(exc).encode()
    if isinstance(exc, LimitExceeded):
        return Status.TOO_LARGE, str(exc).encode()
    log.warning("request failed error=%r", str(exc))
    return Status.STORAGE, str(exc).encode()


def _scan_page(items: list[tuple[bytes, bytes]], more: bool) -> _Outcome:
    """A SCAN reply of `items`, a page the engine already cut to the page budget (its first
    item whatever its size: TOO_LARGE if that one does not fit a response frame)."""
    if len(items) == 1:
        key, value = items[0]
        if _SCAN_ITEM_HEAD + len(key) + len(value) > _SCAN_BODY_ROOM:
            return (
                0,
                Status.TOO_LARGE,
                (
                    f"scan item {key[:64]!r} of {len(value)} bytes does not fit one response frame"
                ).encode(),
            )
    return 0, _OK, encode_scan_body(items, more)


def _op(op: PutRequest | DeleteRequest) -> BatchOp:
    if isinstance(op, PutRequest):
        return Put(key=op.key, value=op.value)
    return Delete(key=op.key)


__all__ = ["StoreConfig", "StoreConnection", "StoreServer"]
