"""The store server (seed 003): the core connection manager in front of the engine.

Design: each connection decodes requests with the pure `wire` codec and runs them on the
I/O pool (a durable PUT waits for its fsync there, and concurrent PUTs share one fsync
through the engine's group commit). Replies leave in request order: a connection keeps
its requests' futures in a queue and writes the head as soon as it is done. Past
`max_in_flight` queued requests it stops reading (backpressure). A bad frame gets an
error reply and closes the connection; a bad request inside a good frame gets an error
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
from postoffice.core.transport import BaseProtocol, ConnInput
from postoffice.core.workers import WorkerPool
from postoffice.store.config import StoreConfig
from postoffice.store.engine import BatchOp, Delete, Put, Store
from postoffice.store.errors import StoreClosedError
from postoffice.store.logstore import Durability
from postoffice.store.wire import (
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

log = logging.getLogger(__name__)

_Reply = tuple[Status, bytes]
_PING: Final[_Reply] = (Status.OK, b"")


@final
class StoreConnection(BaseProtocol):
    """One client of the store server."""

    def __init__(self, server: StoreServer) -> None:
        super().__init__(server.manager)
        self.server = server
        self.decoder = RequestDecoder(server.config.max_request_bytes)
        self._queue: collections.deque[tuple[int, asyncio.Future[_Reply]]] = collections.deque()

    def reject(self, reason: str) -> None:
        self.write(encode_error(0, Status.BUSY, reason))
        self.close(reason)

    def on_data(self, data: bytes) -> ConnInput | None:
        self.decoder.feed(data)
        decoder = self.decoder
        while self.transport is not None and not self.close_reason:
            try:
                event = decoder.next_event()
            except FrameError as exc:
                self.server.errors += 1
                status = Status.TOO_LARGE if isinstance(exc, LimitExceeded) else Status.BAD_REQUEST
                self._enqueue(decoder.last_request_id or 0, _done((status, str(exc).encode())))
                self._flush()
                log.info("bad frame conn=%s error=%r", self, str(exc))
                self.close("bad frame")
                return ConnInput.IDLE
            except StoreProtocolError as exc:
                self.server.errors += 1
                reply = (exc.status, str(exc).encode())
                self._enqueue(decoder.last_request_id or 0, _done(reply))
                continue
            if event is NEED_DATA:
                break
            request_id, request = event
            self.requests += 1
            self._enqueue(request_id, self.server.execute(request))
        self._flush()
        return self._outcome()

    def _outcome(self) -> ConnInput | None:
        if self._queue:
            return None
        return ConnInput.PARTIAL if self.decoder.buffered_bytes else ConnInput.IDLE

    def can_idle_close(self) -> bool:
        return not self._queue and super().can_idle_close()

    def _enqueue(self, request_id: int, future: asyncio.Future[_Reply]) -> None:
        self._queue.append((request_id, future))
        if not future.done():
            future.add_done_callback(self._on_done)
        if len(self._queue) >= self.server.config.max_in_flight:
            self.pause_reading()

    def _on_done(self, _: asyncio.Future[_Reply]) -> None:
        if self.transport is None:
            return
        self._flush()
        if len(self._queue) < self.server.config.max_in_flight:
            self.resume_reading()
        if not self._queue:
            self.batch_done(ConnInput.PARTIAL if self.decoder.buffered_bytes else ConnInput.IDLE)

    def _flush(self) -> None:
        """Write every finished reply at the head of the queue, in request order."""
        out: list[bytes] = []
        queue = self._queue
        while queue and queue[0][1].done():
            request_id, future = queue.popleft()
            status, body = future.result()
            out.append(encode_response(request_id, status, body))
        if out:
            self.write(b"".join(out))

    def on_close(self) -> None:
        self._queue.clear()


def _done(reply: _Reply) -> asyncio.Future[_Reply]:
    future: asyncio.Future[_Reply] = asyncio.get_running_loop().create_future()
    future.set_result(reply)
    return future


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

    def __repr__(self) -> str:
        return f"<StoreServer {self.addresses.get('store')} clients={self.manager.active}>"

    async def startup(self) -> None:
        """Open the store (recovering it), start the pool and bind the ports."""
        config = self.config
        self.pool.start()
        config.store_path.mkdir(parents=True, exist_ok=True)
        durability = Durability(config.durability)
        store = await self.pool.submit(lambda: Store.open(config.store_path, durability=durability))
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

    def execute(self, request: Request) -> asyncio.Future[_Reply]:
        """Start serving `request`; the future holds (status, body)."""
        self.requests += 1
        self.by_type[type(request).__name__] += 1
        if isinstance(request, PingRequest):
            return _done(_PING)
        if isinstance(request, StatsRequest):
            return _done((Status.OK, encode_stats_body(self.stats())))
        began = time.monotonic()
        future = self.pool.submit(lambda: self._run(request))
        future.add_done_callback(lambda _: self.latency.observe(time.monotonic() - began))
        return future

    def _run(self, request: Request) -> _Reply:
        """Serve one request on an I/O thread; every error becomes a status."""
        store = self.store
        if store is None:
            return (Status.SHUTTING_DOWN, b"store is not open")
        try:
            match request:
                case GetRequest(key=key):
                    value = store.get(key)
                    if value is None:
                        return (Status.NOT_FOUND, b"no such key")
                    return (Status.OK, value)
                case PutRequest(key=key, value=value):
                    store.put(key, value)
                    return (Status.OK, b"")
                case DeleteRequest(key=key):
                    return (Status.OK, encode_delete_body(store.delete(key)))
                case BatchRequest(ops=ops):
                    store.batch([_op(op) for op in ops])
                    return (Status.OK, b"")
                case ScanRequest(prefix=prefix, start=start, end=end, limit=limit):
                    items = store.scan(prefix=prefix, start=start, end=end, limit=limit + 1)
                    more = len(items) > limit
                    return (Status.OK, encode_scan_body(items[:limit], more))
                case _:
                    return (Status.BAD_REQUEST, f"unexpected {type(request).__name__}".encode())
        except StoreClosedError as exc:
            return (Status.SHUTTING_DOWN, str(exc).encode())
        except LimitExceeded as exc:
            self.errors += 1
            return (Status.TOO_LARGE, str(exc).encode())
        except PostOfficeError as exc:
            self.errors += 1
            log.warning("request failed error=%r", str(exc))
            return (Status.STORAGE, str(exc).encode())
        except Exception as exc:
            self.errors += 1
            log.exception("request crashed")
            return (Status.INTERNAL, f"internal error: {exc!r}".encode())

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
