"""The command server's I/O shell: one asyncio Protocol per client, the server that owns them.

Bytes go to the pure RespParser; each command goes through the table in `commands`;
replies of one batch of pipelined commands leave in one write. A `blocking` command runs
in the worker pool while the connection stops reading, so replies keep request order.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import os
import resource
import ssl
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Final, final

from postoffice.command.commands import LOOKUP, CommandSpec, server_facts
from postoffice.command.config import CommandConfig
from postoffice.command.errors import CommandError, RateLimitedError, RespProtocolError
from postoffice.command.keyspace import Deferred, Keyspace, parse_address, settle
from postoffice.core import metrics
from postoffice.core.clock import MONOTONIC, Clock
from postoffice.core.connections import ConnectionLimits, ConnectionManager
from postoffice.core.errors import ClosedError, ConfigError, PostOfficeError
from postoffice.core.http import health_routes, metrics_route, serve_http
from postoffice.core.listeners import bound_address, listen
from postoffice.core.resp import (
    NEED_DATA,
    Dialect,
    Error,
    Reply,
    RespParser,
    encode_resp,
    encode_resp3,
    encode_text,
)
from postoffice.core.runtime import announce
from postoffice.core.transport import BaseProtocol, ConnInput, ConnState
from postoffice.core.workers import WorkerPool

log = logging.getLogger(__name__)

_PENDING: Final = Error(code="PENDING", message="in the worker pool")  # never sent
MAX_STORE_IN_FLIGHT: Final = 1024  # store commands of one client awaiting the store


@final
class CommandConnection(BaseProtocol):
    """One client of the command server, in either dialect."""

    def __init__(self, server: CommandServer) -> None:
        super().__init__(server.manager)
        self.server = server
        config = server.config
        self.parser = RespParser(
            max_inline_bytes=config.max_inline_bytes,
            max_bulk_bytes=config.max_bulk_bytes,
            max_array_items=config.max_array_items,
        )
        self.name = b""
        self.lib_name = b""
        self.lib_ver = b""
        self.authenticated = config.requirepass is None
        self.close_after_reply = False
        self.protocol = 2
        self.last_command = "NULL"
        self._busy = False
        self._stop_after_reply = False
        # Store commands in flight: a Deferred each, or the encoded reply of a command
        # that was answered at once while earlier ones were still with the store.
        self._queue: collections.deque[Deferred | bytes] = collections.deque()
        self._held: list[bytes] | None = None  # a command waiting for the queue to empty
        self._stalled = False  # reading paused until the store has answered
        self._watching = False  # one queued store command has _store_replied as callback
        self._closing_error = False  # close once the queued replies are out
        self._tokens = float(config.burst)
        self._refilled = self.created

    # -- BaseProtocol hooks ------------------------------------------------------------

    def reject(self, reason: str) -> None:
        self.write(b"-ERR " + reason.encode() + b"\r\n")
        self.close(reason)

    def on_data(self, data: bytes) -> ConnInput | None:
        self.parser.feed(data)
        if self._busy or self._stalled:
            return None
        return self._run_buffered()

    def can_idle_close(self) -> bool:
        return not self._busy and not self._queue and super().can_idle_close()

    def shutdown_requested(self) -> None:
        if self._busy or self._queue:
            self._stop_after_reply = True
        else:
            self.close("server shutdown")

    def on_close(self) -> None:
        self._queue.clear()
        self.server.closed_bytes_in += self.bytes_in
        self.server.closed_bytes_out += self.bytes_out
        log.debug("closed conn=%s reason=%s", self, self.close_reason)

    # -- the request loop --------------------------------------------------------------

    def _run_buffered(self) -> ConnInput | None:
        """Run every complete command buffered; None while replies are still to come.

        This is the hot path: bound methods are hoisted into locals, and the encoder is
        picked once per batch (again only if HELLO changes the RESP version mid-batch).
        Store commands pipeline: their Deferred replies queue up in request order, and
        any other command waits (is held) until that queue is empty, so it never
        overtakes, and a HELLO or QUIT applies exactly where it was sent.
        """
        parser = self.parser
        next_event = parser.next_event
        ready = parser.ready
        take = ready.popleft
        execute = self._execute
        queue = self._queue
        out: list[bytes] = []
        encode: Callable[[Reply], bytes] | None = None
        protocol = 0
        try:
            while True:
                if self._held is not None:
                    args, self._held = self._held, None
                elif ready:  # split off by the C reader: no event object needed
                    args = take()
                else:
                    event = next_event()
                    if event is NEED_DATA:
                        break
                    args = event[0]
                spec = LOOKUP.get(args[0]) or LOOKUP.get(args[0].upper())
                # While store commands are in flight only more of them may run: anything
                # else could overtake their replies or effects.
                if queue and (spec is None or not spec.store):
                    self._held = args
                    self._send(out)
                    self._stall()
                    return None
                reply = execute(args, spec)
                if reply is _PENDING:
                    self._send(out)
                    return None
                if encode is None or protocol != self.protocol:
                    protocol = self.protocol
                    encode = self._encoder()
                if type(reply) is Deferred:
                    self._send(out)
                    queue.append(reply)
                    if not self._watching:  # the oldest unanswered: see _store_replied
                        self._watching = True
                        reply.future.add_done_callback(self._store_replied)
                    if len(queue) >= MAX_STORE_IN_FLIGHT:
                        self._stall()
                        return None
                    continue
                if queue:  # an immediate reply (an error) to a store command: wait in line
                    queue.append(encode(reply))
                    continue
                out.append(encode(reply))
                if self.close_after_reply:
                    self._send(out)
                    self.close("client quit")
                    return ConnInput.IDLE
                if self.state is ConnState.CLOSING:  # killed by its own CLIENT KILL
                    return ConnInput.IDLE
        except RespProtocolError as exc:
            self.server.protocol_errors += 1
            error = self._encoder()(Error(code=exc.wire_code, message=str(exc)))
            log.info("protocol error conn=%s error=%r", self, str(exc))
            if queue:  # the replies owed come first; the store's answers close the door
                queue.append(error)
                self._closing_error = True
                self._send(out)
                self._stall()
                return None
            out.append(error)
            self._send(out)
            self.close("protocol error")
            return ConnInput.IDLE
        if out:
            self.write(out[0] if len(out) == 1 else b"".join(out))
        if queue:
            return None
        return ConnInput.PARTIAL if parser.has_partial() else ConnInput.IDLE

    def _stall(self) -> None:
        """Stop reading until the store has answered what this connection sent."""
        if not self._stalled:
            self._stalled = True
            self.pause_reading()

    def _store_replied(self, _: object) -> None:
        """Write the replies now complete at the head of the queue, in request order.

        Only the oldest unanswered store command has this as its done callback, not each
        one: the store answers one connection in order, and all the answers of one read
        are settled before the first callback runs, so one call writes them all. What is
        left unanswered then gets the callback next.
        """
        self._watching = False
        if self.transport is None:
            return
        queue = self._queue
        out: list[bytes] = []
        encode = self._encoder()
        while queue:
            head = queue[0]
            if isinstance(head, bytes):
                out.append(head)
            elif head.future.done():
                out.append(encode(settle(head)))
            else:
                self._watching = True
                head.future.add_done_callback(self._store_replied)
                break
            queue.popleft()
        self._send(out)
        if queue:
            if self._stalled and self._held is None and len(queue) < MAX_STORE_IN_FLIGHT:
                self._resume()
            return
        if self._closing_error:
            self.close("protocol error")
            return
        if self._stop_after_reply:
            self.close("server shutdown")
            return
        if self._stalled:
            self._resume()
        else:
            self.batch_done(ConnInput.PARTIAL if self.parser.has_partial() else ConnInput.IDLE)

    def _resume(self) -> None:
        self._stalled = False
        self.resume_reading()
        outcome = self._run_buffered()
        if outcome is not None:
            self.batch_done(outcome)

    def _send(self, out: list[bytes]) -> None:
        if out:
            self.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def _encoder(self) -> Callable[[Reply], bytes]:
        if self.parser.dialect is Dialect.TEXT:
            return encode_text
        return encode_resp3 if self.protocol == 3 else encode_resp

    def _execute(self, args: list[bytes], spec: CommandSpec | None) -> Reply | Deferred:
        """Run one command; `spec` is its entry in the table (None: unknown)."""
        server = self.server
        self.requests += 1
        server.commands += 1
        if not self.authenticated and (spec is None or not spec.noauth):
            server.auth_refusals += 1
            return Error(code="NOAUTH", message="Authentication required.")
        if spec is None:
            server.unknown_commands += 1
            shown = " ".join(f"'{a.decode('utf-8', 'replace')[:64]}'" for a in args[1:4])
            return Error(
                code="ERR",
                message=f"unknown command '{args[0].decode('utf-8', 'replace')[:64]}', "
                f"with args beginning with: {shown}",
            )
        name = self.last_command = spec.name
        server.calls[name] += 1
        if server.config.rate_limit_per_s and not self._take_token():
            server.rate_limited += 1
            err = RateLimitedError(
                f"rate limit of {server.config.rate_limit_per_s:g} commands/s exceeded"
            )
            return Error(code=err.wire_code, message=str(err))
        argc = len(args)
        if argc < spec.min_args or argc > spec.max_args:
            return Error(code="ERR", message=f"wrong number of arguments for '{name}' command")
        if spec.blocking:
            return self._offload(spec, args)
        try:
            return spec.handler(server, self, args)
        except (CommandError, ConfigError) as exc:
            return Error(code=exc.wire_code, message=str(exc))

    def _take_token(self) -> bool:
        config = self.server.config
        now = self.manager.clock()
        burst = config.burst
        self._tokens = min(burst, self._tokens + (now - self._refilled) * config.rate_limit_per_s)
        self._refilled = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _offload(self, spec: CommandSpec, args: list[bytes]) -> Reply:
        try:
            future = self.server.pool.submit(partial(spec.handler, self.server, self, args))
        except ClosedError as exc:
            return Error(code="ERR", message=str(exc))
        self._busy = True
        self.pause_reading()
        future.add_done_callback(self._offload_done)
        return _PENDING

    def _offload_done(self, future: asyncio.Future[Reply | Deferred]) -> None:
        self._busy = False
        if self.transport is None:
            return
        exc = future.exception()
        if exc is None:
            result = future.result()
            # A blocking handler answers in its thread; it cannot wait for the store.
            if isinstance(result, Deferred):
                result = Error(code="ERR", message="internal error: deferred blocking reply")
            reply = result
        elif isinstance(exc, PostOfficeError):
            reply = Error(code=exc.wire_code, message=str(exc))
        else:
            log.error("command failed in worker conn=%s", self, exc_info=exc)
            reply = Error(code="ERR", message=f"internal error: {exc!r}")
        self.write(self._encoder()(reply))
        if self.close_after_reply or self._stop_after_reply:
            self.close("client quit" if self.close_after_reply else "server shutdown")
            return
        self.resume_reading()
        outcome = self._run_buffered()
        if outcome is not None:
            self.batch_done(outcome)

    # -- ClientView --------------------------------------------------------------------

    def describe(self) -> str:
        """A CLIENT LIST line."""
        now = self.manager.clock()
        transport = self.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        fd = sock.fileno() if sock is not None else -1
        return (
            f"id={self.conn_id} addr={self.peer} laddr={self.local} fd={fd}"
            f" name={self.name.decode()} age={int(now - self.created)}"
            f" idle={int(now - self.last_active)} flags=N db=0"
            f" proto={self.parser.dialect.value}{self.protocol} qbuf={self.parser.buffered}"
            f" tot-net-in={self.bytes_in} tot-net-out={self.bytes_out}"
            f" tot-cmds={self.requests} cmd={self.last_command} user=default"
            f" lib-name={self.lib_name.decode()} lib-ver={self.lib_ver.decode()}"
        )


#: CONFIG GET/SET names -> CommandConfig fields; the Redis names where Redis has one.
CONFIG_NAMES: Final[dict[str, str]] = {
    "maxclients": "max_connections",
    "timeout": "idle_timeout_s",
    "worker-threads": "threads",
    "rate-limit": "rate_limit_per_s",
    "rate-limit-burst": "rate_limit_burst",
    "requirepass": "requirepass",
    "proto-max-bulk-len": "max_bulk_bytes",
    "proto-inline-max-size": "max_inline_bytes",
    "proto-max-multibulk-len": "max_array_items",
}
#: Answered for clients (redis-benchmark asks for save and appendonly) but never changed.
READ_ONLY_CONFIG: Final[dict[str, str]] = {"save": "", "appendonly": "no", "databases": "1"}


@final
class CommandServer:
    """The command server: connections, worker pool, settings, statistics and listeners.

    Two-phase init: the constructor allocates memory only; `startup()` starts the pool,
    the idle sweeper and the listeners. `serve(stop)` runs until `stop` is set or a
    client sends SHUTDOWN, then drains and closes.
    """

    def __init__(self, config: CommandConfig, *, clock: Clock = MONOTONIC) -> None:
        self.config = config
        self.manager = ConnectionManager(self._limits(config), clock=clock)
        self.pool = WorkerPool(config.threads, name="command-worker")
        self.keyspace: Keyspace | None = None
        if config.store is not None:
            self.keyspace = Keyspace(*parse_address(config.store))
        self.started = time.time()
        self.commands = 0
        self.protocol_errors = 0
        self.unknown_commands = 0
        self.auth_refusals = 0
        self.rate_limited = 0
        self.calls: defaultdict[str, int] = defaultdict(int)
        self.closed_bytes_in = 0  # traffic of connections already gone
        self.closed_bytes_out = 0
        self.addresses: dict[str, tuple[str, int]] = {}
        self.registry = metrics.new_registry()
        self.registry.register(
            metrics.StatsCollector(
                "postoffice_command",
                self.stats,
                counters=(
                    "connections_accepted",
                    "connections_rejected",
                    "connections_timed_out",
                    "connections_closed",
                    "commands",
                    "protocol_errors",
                    "unknown_commands",
                    "auth_refusals",
                    "rate_limited",
                    "bytes_in",
                    "bytes_out",
                ),
            )
        )
        self._listeners: list[asyncio.Server] = []
        self._shutdown = asyncio.Event()
        self._ready = False

    @staticmethod
    def _limits(config: CommandConfig) -> ConnectionLimits:
        return ConnectionLimits(
            max_connections=config.max_connections,
            idle_timeout_s=config.idle_timeout_s,
            max_request_bytes=max(config.max_bulk_bytes, config.max_inline_bytes),
        )

    def __repr__(self) -> str:
        return f"<CommandServer {self.addresses.get('command')} clients={self.manager.active}>"

    # -- lifecycle ---------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.config.tls_cert is None or self.config.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load tls_cert/tls_key: {exc}") from exc
        return context

    async def startup(self) -> None:
        """Start the pool, the sweeper and the listeners (phase two of init)."""
        context = self._ssl_context()
        self.pool.start()
        self.manager.startup()
        if self.keyspace is not None:
            self.keyspace.start()
        config = self.config
        server = await listen(
            lambda: CommandConnection(self),
            host=config.host,
            port=config.port,
            name="command",
            reuse_port=config.reuse_port,
            ssl_context=context,
        )
        self._listeners.append(server)
        self.addresses["command"] = bound_address(server)
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
        """Start, announce the listeners, run until `stop` or SHUTDOWN, then drain."""
        starting = asyncio.ensure_future(self.startup())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait((starting, stopped), return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # stopped while a bind was still being retried
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            await self.shutdown()
            return
        stopped.cancel()
        starting.result()
        if ready_file:
            announce(ready_file, service="command", addresses=self.addresses)
        stopper = asyncio.ensure_future(stop.wait())
        shutdown = asyncio.ensure_future(self._shutdown.wait())
        await asyncio.wait((stopper, shutdown), return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        shutdown.cancel()
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop accepting, let in-flight commands finish (within the deadline), close all."""
        self._ready = False
        for listener in self._listeners:
            listener.close()
        await self.manager.shutdown(deadline_s=self.config.shutdown_timeout_s)
        self.pool.close()
        if self.keyspace is not None:
            await self.keyspace.close()
        for listener in self._listeners:
            await listener.wait_closed()
        self._listeners.clear()
        log.info("command server stopped commands=%d", self.commands)

    # -- ServerView --------------------------------------------------------------------

    @property
    def requirepass(self) -> str | None:
        return self.config.requirepass

    def clients(self) -> Iterable[CommandConnection]:
        return [c for c in self.manager if isinstance(c, CommandConnection)]

    def kill_clients(self, *, conn_id: int | None, addr: str | None, skip_me: object | None) -> int:
        killed = 0
        for conn in self.clients():
            if conn is skip_me:
                continue
            if conn_id is not None and conn.conn_id != conn_id:
                continue
            if addr is not None and conn.peer != addr:
                continue
            conn.close("killed by CLIENT KILL", linger=False)
            killed += 1
        return killed

    def config_items(self) -> Mapping[str, str]:
        items = {
            "bind": self.config.host,
            "port": str(self.addresses.get("command", (self.config.host, self.config.port))[1]),
            **READ_ONLY_CONFIG,
        }
        for name, field in CONFIG_NAMES.items():
            value = getattr(self.config, field)
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            items[name] = "" if value is None else str(value)
        return items

    def config_set(self, pairs: list[tuple[str, str]]) -> None:
        changes: dict[str, object] = {}
        for name, raw in pairs:
            field = CONFIG_NAMES.get(name)
            if field is None:
                raise CommandError(
                    f"Unknown option or number of arguments for CONFIG SET - '{name}'"
                )
            changes[field] = _convert(name, field, raw)
        new = dataclasses.replace(self.config, **changes)  # type: ignore[arg-type]  # fields checked above
        self.pool.resize(new.threads)
        self.manager.limits = self._limits(new)
        for conn in self.clients():
            conn.parser.max_bulk_bytes = new.max_bulk_bytes
            conn.parser.max_inline_bytes = new.max_inline_bytes
            conn.parser.max_array_items = new.max_array_items
        self.config = new
        log.info("config changed %s", " ".join(f"{k}={v}" for k, v in pairs if k != "requirepass"))

    def info(self) -> dict[str, dict[str, object]]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        rss = _rss_bytes()
        stats = self.stats()
        return {
            "server": server_facts(
                self.addresses.get("command", ("", self.config.port))[1], self.started
            ),
            "clients": {
                "connected_clients": stats["connections_active"],
                "maxclients": self.config.max_connections,
                "blocked_clients": self.pool.busy,
            },
            "memory": {
                "used_memory_rss": rss,
                "used_memory_rss_human": f"{rss / 1048576:.2f}M",
                "used_memory_peak": usage.ru_maxrss * 1024,
            },
            "stats": {
                "total_connections_received": stats["connections_accepted"],
                "total_commands_processed": self.commands,
                "total_net_input_bytes": stats["bytes_in"],
                "total_net_output_bytes": stats["bytes_out"],
                "rejected_connections": stats["connections_rejected"],
                "timed_out_connections": stats["connections_timed_out"],
                "protocol_errors": self.protocol_errors,
                "unknown_commands": self.unknown_commands,
                "auth_refusals": self.auth_refusals,
                "rate_limited_commands": self.rate_limited,
                "used_cpu_sys": f"{usage.ru_stime:.6f}",
                "used_cpu_user": f"{usage.ru_utime:.6f}",
            },
            "threads": {
                "worker_threads": self.pool.size,
                "worker_busy": self.pool.busy,
                "worker_queued": self.pool.queued,
                "worker_completed": self.pool.completed,
            },
            "keyspace": self._keyspace_info(),
            "commandstats": {
                f"cmdstat_{name}": f"calls={count}" for name, count in sorted(self.calls.items())
            },
        }

    def _keyspace_info(self) -> dict[str, object]:
        keyspace = self.keyspace
        if keyspace is None:
            return {"store": "none"}
        return {
            "store": keyspace.address,
            "store_connected": int(keyspace.connected),
            "store_requests": keyspace.requests,
            "store_unavailable": keyspace.unavailable,
            "store_reconnects": keyspace.reconnects,
        }

    def stats(self) -> dict[str, int]:
        """Counters for INFO and /metrics."""
        bytes_in = self.closed_bytes_in
        bytes_out = self.closed_bytes_out
        for conn in self.manager:
            bytes_in += conn.bytes_in
            bytes_out += conn.bytes_out
        return {
            **self.manager.stats(),
            "commands": self.commands,
            "protocol_errors": self.protocol_errors,
            "unknown_commands": self.unknown_commands,
            "auth_refusals": self.auth_refusals,
            "rate_limited": self.rate_limited,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "worker_threads": self.pool.size,
            "worker_busy": self.pool.busy,
        }

    def reset_stats(self) -> None:
        self.commands = self.protocol_errors = self.unknown_commands = 0
        self.auth_refusals = self.rate_limited = 0
        self.calls.clear()

    def request_shutdown(self) -> None:
        log.info("shutdown requested by a client")
        self._shutdown.set()


def _convert(name: str, field: str, raw: str) -> object:
    if field == "requirepass":
        return raw or None
    try:
        return float(raw) if field.endswith("_s") else int(raw)
    except ValueError:
        raise CommandError(
            f"CONFIG SET failed (possibly related to argument '{name}') - "
            f"expected a number, got {raw!r}"
        ) from None


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
