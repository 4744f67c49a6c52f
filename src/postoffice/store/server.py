"""The store server (seed 003): the core connection manager in front of the engine.

Design: each connection decodes requests with the pure `storewire` codec and executes
them on the event loop, in order (reads and appends are quick; see
`StoreServer.execute`). Only the fsync of a durable write leaves the loop: it runs on the
I/O pool, one fsync for every write appended meanwhile (group commit). Replies leave in
request order: a reply still waiting for its fsync holds back the ones behind it. Past
`max_in_flight` owed replies a connection stops reading (backpressure). A bad frame gets
an error reply and closes the connection; a bad request inside a good frame gets an error
reply and the connection goes on.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from typing import Final, final

from postoffice.core import metrics
from postoffice.core.clock import MONOTONIC, Clock
from postoffice.core.connections import ConnectionLimits, ConnectionManager
from postoffice.core.errors import LimitExceeded, PostOfficeError
from postoffice.core.framing import FrameError
from postoffice.core.http import health_routes, metrics_route, serve_http
from postoffice.core.listeners import bound_address, listen
from postoffice.core.runtime import announce
from postoffice.core.storewire import (
    NEED_DATA,
    BatchRequest,
    DeleteRequest,
    GetRequest,
    PingRequest,
    PutRequest,
    Request,
    RequestDecoder,
    ScanRequest,
    StatsRequest,
    Status,
    StoreProtocolError,
    encode_delete_body,
    encode_error,
    encode_response,
    encode_scan_body,
    encode_stats_body,
)
from postoffice.core.transport import BaseProtocol, ConnInput
from postoffice.core.workers import WorkerPool
from postoffice.store.config import StoreConfig
from postoffice.store.engine import BatchOp, Delete, Put, Store
from postoffice.store.errors import StoreClosedError
from postoffice.store.logstore import Durability

log = logging.getLogger(__name__)

_Reply = tuple[Status, bytes]
_OK: Final[_Reply] = (Status.OK, b"")
_NOT_FOUND: Final[_Reply] = (Status.NOT_FOUND, b"no such key")


@final
class StoreConnection(BaseProtocol):
    """One client of the store server."""

    def __init__(self, server: StoreServer) -> None:
        super().__init__(server.manager)
        self.server = server
        self.decoder = RequestDecoder(server.config.max_request_bytes)
        # Replies owed, in request order: ready (status, body) pairs queued behind a
        # durable write still waiting for its fsync, or that write's future.
        self._queue: collections.deque[tuple[int, _Reply | asyncio.Future[_Reply]]] = (
            collections.deque()
        )

    def reject(self, reason: str) -> None:
        self.write(encode_error(0, Status.BUSY, reason))
        self.close(reason)

    def on_data(self, data: bytes) -> ConnInput | None:
        decoder = self.decoder
        decoder.feed(data)
        server = self.server
        queue = self._queue
        out: list[bytes] = []
        while self.transport is not None and not self.close_reason:
            try:
                event = decoder.next_event()
            except FrameError as exc:
                server.errors += 1
                status = Status.TOO_LARGE if isinstance(exc, LimitExceeded) else Status.BAD_REQUEST
                self._answer(out, decoder.last_request_id or 0, (status, str(exc).encode()))
                self._send(out)
                log.info("bad frame conn=%s error=%r", self, str(exc))
                self.close("bad frame")
                return ConnInput.IDLE
            except StoreProtocolError as exc:
                server.errors += 1
                self._answer(out, decoder.last_request_id or 0, (exc.status, str(exc).encode()))
                continue
            if event is NEED_DATA:
                break
            request_id, request = event
            self.requests += 1
            self._answer(out, request_id, server.execute(request))
            if len(queue) >= server.config.max_in_flight:
                self.pause_reading()
                break
        self._send(out)
        return self._outcome()

    def _answer(
        self, out: list[bytes], request_id: int, reply: _Reply | asyncio.Future[_Reply]
    ) -> None:
        """Queue `reply` behind the replies still owed, or encode it now if none are."""
        if isinstance(reply, tuple):
            if not self._queue:
                out.append(encode_response(request_id, reply[0], reply[1]))
                return
        else:
            reply.add_done_callback(self._on_done)
        self._queue.append((request_id, reply))

    def _send(self, out: list[bytes]) -> None:
        if out:
            self.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def _outcome(self) -> ConnInput | None:
        if self._queue:
            return None
        return ConnInput.PARTIAL if self.decoder.buffered_bytes else ConnInput.IDLE

    def can_idle_close(self) -> bool:
        return not self._queue and super().can_idle_close()

    def _on_done(self, _: asyncio.Future[_Reply]) -> None:
        if self.transport is None:
            return
        self._flush()
        if len(self._queue) < self.server.config.max_in_flight:
            self.resume_reading()
        if not self._queue:
            outcome = self.on_data(b"") if self.decoder.buffered_bytes else ConnInput.IDLE
            if outcome is not None:
                self.batch_done(outcome)

    def _flush(self) -> None:
        """Write every finished reply at the head of the queue, in request order."""
        out: list[bytes] = []
        queue = self._queue
        while queue:
            request_id, reply = queue[0]
            if not isinstance(reply, tuple):
                if not reply.done():
                    break
                reply = reply.result()
            queue.popleft()
            out.append(encode_response(request_id, reply[0], reply[1]))
        self._send(out)

    def on_close(self) -> None:
        self._queue.clear()


@final
class StoreServer:
    """The engine, the connection manager, the I/O pool, statistics and listeners.

    Two-phase init: the constructor sets memory up; `startup()` opens the store (recovery
    included) and binds. `serve(stop)` runs until `stop`, then drains and closes.
    """

    def __init__(self, config: StoreConfig, *, clock: Clock = MONOTONIC) -> None:
        self.config = config
        self.manager = ConnectionManager(
            ConnectionLimits(
                max_connections=config.max_connections,
                idle_timeout_s=config.idle_timeout_s,
                max_request_bytes=config.max_request_bytes,
            ),
            clock=clock,
        )
        self.pool = WorkerPool(config.io_threads, name="store-io")
        self.store: Store | None = None
        self.addresses: dict[str, tuple[str, int]] = {}
        self.requests = 0
        self.errors = 0
        self.by_type: collections.Counter[str] = collections.Counter()
        self.latency = metrics.LatencyHistogram()
        self.registry = metrics.new_registry()
        self.registry.register(
            metrics.StatsCollector(
                "postoffice_store",
                self.stats,
                counters=("requests", "errors", "connections_accepted", "connections_rejected"),
                histograms={"request_seconds": self.latency},
            )
        )
        self._listeners: list[asyncio.Server] = []
        self._ready = False
        self._durable = Durability(config.durability) is Durability.ALWAYS
        self._waiting: collections.deque[tuple[int, float, asyncio.Future[_Reply]]] = (
            collections.deque()
        )
        self._delete_results: dict[int, bool] = {}  # ticket -> existed, for DELETE replies
        self._syncing = False

    def __repr__(self) -> str:
        return f"<StoreServer {self.addresses.get('store')} clients={self.manager.active}>"

    async def startup(self) -> None:
        """Open the store (recovering it), start the pool and bind the ports."""
        config = self.config
        self.pool.start()
        config.store_path.mkdir(parents=True, exist_ok=True)
        durability = Durability(config.durability)
        store = await self.pool.submit(lambda: Store.open(config.store_path, durability=durability))
        store.flush_in_background = True  # the event loop must not wait for LMDB
        self.store = store
        log.info("store opened path=%s recovery=%s", config.store_path, store.recovery)
        self.manager.startup()
        server = await listen(
            lambda: StoreConnection(self), host=config.host, port=config.port, name="store"
        )
        self._listeners.append(server)
        self.addresses["store"] = bound_address(server)
        if config.metrics_port is not None:
            routes = {
                "/metrics": metrics_route(self.registry),
                **health_routes(lambda: self._ready),
            }
            http = await serve_http(routes, host=config.host, port=config.metrics_port)
            self._listeners.append(http)
            self.addresses["metrics"] = bound_address(http)
        self._ready = True

    async def serve(self, stop: asyncio.Event, *, ready_file: str | None = None) -> None:
        """Start, announce, run until `stop`, then drain and close."""
        await self.startup()
        if ready_file:
            announce(ready_file, service="store", addresses=self.addresses)
        await stop.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop accepting, let requests in flight finish, close the store."""
        self._ready = False
        for listener in self._listeners:
            listener.close()
        await self.manager.shutdown(deadline_s=self.config.shutdown_timeout_s)
        if self.store is not None:
            store = self.store
            await self.pool.submit(store.close)
        self.pool.close()
        self._listeners.clear()
        log.info("store stopped requests=%d", self.requests)

    # -- requests ------------------------------------------------------------------------

    def execute(self, request: Request) -> _Reply | asyncio.Future[_Reply]:
        """Serve `request` on the loop; a durable write's reply waits for its fsync.

        Reads and the appends of writes run right here, one request after another, so a
        connection's requests take effect in the order they were sent (a pipelined PUT
        then GET reads the new value). They are quick: an append is a write(2) into the
        page cache, a read is a dict or LMDB lookup and a pread. Only the fsync of
        `always` durability is slow, and it runs on the I/O pool, one fsync for every
        write appended meanwhile (group commit).
        """
        self.requests += 1
        self.by_type[type(request).__name__] += 1
        began = time.monotonic()
        reply = self._run(request)
        if isinstance(reply, int):  # a durable write: the ticket to wait for
            return self._when_durable(reply, began)
        self.latency.observe(time.monotonic() - began)
        return reply

    def _run(self, request: Request) -> _Reply | int:
        """Serve one request; every error becomes a status. An int is a write's ticket."""
        store = self.store
        if store is None:
            return (Status.SHUTTING_DOWN, b"store is not open")
        durable = self._durable
        try:
            match request:
                case GetRequest(key=key):
                    value = store.get(key)
                    if value is None:
                        return _NOT_FOUND
                    return (Status.OK, value)
                case PutRequest(key=key, value=value):
                    ticket = store.put_nowait(key, value)
                    return ticket if durable else _OK
                case DeleteRequest(key=key):
                    existed, ticket = store.delete_nowait(key)
                    if durable:
                        self._delete_results[ticket] = existed
                        return ticket
                    return (Status.OK, encode_delete_body(existed))
                case BatchRequest(ops=ops):
                    ticket = store.batch_nowait([_op(op) for op in ops])
                    return ticket if durable else _OK
                case ScanRequest(prefix=prefix, start=start, end=end, limit=limit):
                    items = store.scan(prefix=prefix, start=start, end=end, limit=limit + 1)
                    more = len(items) > limit
                    return (Status.OK, encode_scan_body(items[:limit], more))
                case PingRequest():
                    return _OK
                case StatsRequest():
                    return (Status.OK, encode_stats_body(self.stats()))
                case _:
                    return (Status.BAD_REQUEST, f"unexpected {type(request).__name__}".encode())
        except PostOfficeError as exc:
            return self._failure(exc)
        except Exception as exc:
            self.errors += 1
            log.exception("request crashed")
            return (Status.INTERNAL, f"internal error: {exc!r}".encode())

    def _failure(self, exc: PostOfficeError) -> _Reply:
        if isinstance(exc, StoreClosedError):
            return (Status.SHUTTING_DOWN, str(exc).encode())
        self.errors += 1
        if isinstance(exc, LimitExceeded):
            return (Status.TOO_LARGE, str(exc).encode())
        log.warning("request failed error=%r", str(exc))
        return (Status.STORAGE, str(exc).encode())

    # -- group commit ----------------------------------------------------------------------
    # Writes wait in `_waiting` (ticket order) for the fsync that covers them. One sync
    # job at a time runs on the I/O pool and makes everything appended before it started
    # durable; writes arriving meanwhile wait for the next one. So the fsync rate, not
    # the thread count, bounds durable writes, and each fsync answers a whole batch.

    def _when_durable(self, ticket: int, began: float) -> asyncio.Future[_Reply]:
        future: asyncio.Future[_Reply] = asyncio.get_running_loop().create_future()
        self._waiting.append((ticket, began, future))
        if not self._syncing:
            self._start_sync()
        return future

    def _start_sync(self) -> None:
        store = self.store
        assert store is not None  # writes only wait when the store is open
        target = self._waiting[-1][0]
        self._syncing = True
        job = self.pool.submit(lambda: store.sync(target))
        job.add_done_callback(lambda done: self._synced(target, done))

    def _synced(self, target: int, job: asyncio.Future[None]) -> None:
        self._syncing = False
        failure: _Reply | None = None
        exc = job.exception()
        if isinstance(exc, PostOfficeError):
            failure = self._failure(exc)
        elif exc is not None:
            log.error("fsync crashed", exc_info=exc)
            failure = (Status.INTERNAL, f"internal error: {exc!r}".encode())
        waiting = self._waiting
        observe = self.latency.observe
        now = time.monotonic()
        while waiting and waiting[0][0] <= target:
            ticket, began, future = waiting.popleft()
            existed = self._delete_results.pop(ticket, None)
            if failure is not None:
                reply = failure
            elif existed is not None:
                reply = (Status.OK, encode_delete_body(existed))
            else:
                reply = _OK
            observe(now - began)
            if not future.done():
                future.set_result(reply)
        if waiting:
            self._start_sync()

    def stats(self) -> dict[str, int | float]:
        """STATS body and /metrics: connections, requests, errors, latency, the engine."""
        engine: dict[str, object] = {}
        if self.store is not None:
            try:
                snapshot = self.store.stats()
            except StoreClosedError:
                pass
            else:
                engine = {k: v for k, v in dataclasses.asdict(snapshot).items() if k != "recovery"}
        return {
            **self.manager.stats(),
            "requests": self.requests,
            "errors": self.errors,
            "latency_p50_s": round(self.latency.quantile(0.5), 6),
            "latency_p99_s": round(self.latency.quantile(0.99), 6),
            **{f"requests_{k}": v for k, v in sorted(self.by_type.items())},
            **{f"engine_{k}": v for k, v in engine.items() if isinstance(v, int | float)},
        }


def _op(op: PutRequest | DeleteRequest) -> BatchOp:
    if isinstance(op, PutRequest):
        return Put(key=op.key, value=op.value)
    return Delete(key=op.key)


__all__ = ["StoreConfig", "StoreConnection", "StoreServer"]
