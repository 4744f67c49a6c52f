"""The command server: its connections (command/connection.py), pool, keyspace, listeners.

Lifecycle, settings (CONFIG), statistics (INFO, /metrics) and the view the command
handlers have of the server. The keyspace is remote (`--store HOST:PORT`), embedded
(`--store-dir DIR`) or absent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import resource
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Final, final

from postoffice.command.admin import http_routes
from postoffice.command.blocking import WORKERS_POLL_S, BlockedClients
from postoffice.command.cluster import Cluster
from postoffice.command.commands import server_facts
from postoffice.command.config import CommandConfig
from postoffice.command.connection import CommandConnection
from postoffice.command.encodings import EncodingLimits
from postoffice.command.errors import CommandError
from postoffice.command.keyspace import Keyspace
from postoffice.command.pool import STORE_COUNTERS
from postoffice.command.remote import RemoteKeyspace, parse_address
from postoffice.command.stats import INFO_COUNTERS, STATS_COUNTERS, CommandStats
from postoffice.core import metrics
from postoffice.core.clock import MONOTONIC, Clock
from postoffice.core.connections import ConnectionLimits, ConnectionManager
from postoffice.core.errors import ConfigError
from postoffice.core.http import serve_http
from postoffice.core.listeners import bound_address, listen
from postoffice.core.reload import apply_log_level
from postoffice.core.rewrite import rewrite_config
from postoffice.core.runtime import serve_until_stopped
from postoffice.core.workers import WorkerPool

log = logging.getLogger(__name__)


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
    "max-reply-bytes": "max_reply_bytes",
    "output-hard-limit": "output_hard_limit_bytes",
    "output-soft-limit": "output_soft_limit_bytes",
    "output-soft-seconds": "output_soft_limit_s",
    "request-timeout": "request_timeout_s",
    "max-partial-size": "max_partial_bytes",
    "loglevel": "log_level",
    "hash-max-listpack-entries": "hash_max_listpack_entries",
    "hash-max-listpack-value": "hash_max_listpack_value",
    "zset-max-listpack-entries": "zset_max_listpack_entries",
    "zset-max-listpack-value": "zset_max_listpack_value",
    # Redis 7.0 still takes the names of before listpacks, as aliases of the same settings.
    "hash-max-ziplist-entries": "hash_max_listpack_entries",
    "hash-max-ziplist-value": "hash_max_listpack_value",
    "zset-max-ziplist-entries": "zset_max_listpack_entries",
    "zset-max-ziplist-value": "zset_max_listpack_value",
}
#: Answered for clients (redis-benchmark asks for save and appendonly) but never changed.
READ_ONLY_CONFIG: Final[dict[str, str]] = {"save": "", "appendonly": "no", "databases": "1"}
#: Shown by CONFIG GET, set only at start: CONFIG SET refuses them as Redis does.
IMMUTABLE_CONFIG: Final = frozenset({"bind", "port", "workers", *READ_ONLY_CONFIG})


@final
class CommandServer:
    """The command server: connections, worker pool, settings, statistics and listeners.

    Two-phase init: the constructor allocates memory only; `startup()` starts the pool,
    the idle sweeper and the listeners. `serve(stop)` runs until `stop` is set or a
    client sends SHUTDOWN, then drains and closes.

    As one worker of several (command/worker.py), `first_id` and `id_step` keep its
    connection ids apart from the other workers', `cluster` answers the server-wide
    commands, and `shutdown_hook` hands SHUTDOWN to the primary.
    """

    def __init__(
        self,
        config: CommandConfig,
        *,
        clock: Clock = MONOTONIC,
        first_id: int = 1,
        id_step: int = 1,
        config_file: Path | None = None,
    ) -> None:
        self.config = config
        #: The --config file CONFIG REWRITE writes to; None: started without one.
        self.config_file = config_file
        self.manager = ConnectionManager(
            self._limits(config), clock=clock, first_id=first_id, id_step=id_step
        )
        self.cluster: Cluster | None = None
        #: Called on SHUTDOWN; True when it took the shutdown over (the primary stops all).
        self.shutdown_hook: Callable[[], bool] | None = None
        self.pool = WorkerPool(config.threads, name="command-worker")
        self.keyspace: Keyspace | None = _keyspace(config)
        self.started = time.time()
        #: DEBUG SLEEP's sleep (ServerView.sleep): tests put a stand-in here.
        self.sleep: Callable[[float], None] = time.sleep
        self.counts = CommandStats()
        self.blocked = BlockedClients(
            self, lambda delay_s, then: asyncio.get_running_loop().call_later(delay_s, then)
        )
        self.addresses: dict[str, tuple[str, int]] = {}
        self.registry = metrics.new_registry()
        self.registry.register(
            metrics.StatsCollector(
                "postoffice_command",
                self.stats,
                counters=STATS_COUNTERS,
            )
        )
        if isinstance(self.keyspace, RemoteKeyspace):  # the store connections, by count
            self.registry.register(
                metrics.StatsCollector(
                    "postoffice_command", self.keyspace.pool.stats, counters=STORE_COUNTERS
                )
            )
        self._listeners: list[asyncio.Server] = []
        self._shutdown = asyncio.Event()
        self._ready = False

    @staticmethod
    def _limits(config: CommandConfig) -> ConnectionLimits:
        return config.connection_limits()

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
        if self.cluster is not None:  # pushes through the other workers are not seen here
            self.blocked.poll_s = WORKERS_POLL_S
        if self.keyspace is not None:  # first: a store that cannot open leaves nothing behind
            await self.keyspace.start()
        self.pool.start()
        self.manager.startup()
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
            http = await serve_http(
                http_routes(self, lambda: self._ready), host=config.host, port=config.metrics_port
            )
            self._listeners.append(http)
            self.addresses["metrics"] = bound_address(http)
        self._ready = True

    async def serve(
        self,
        stop: asyncio.Event,
        *,
        ready_file: str | None = None,
        on_listening: Callable[[], None] | None = None,
    ) -> None:
        """Start, announce the listeners, run until `stop` or SHUTDOWN, then drain.

        `on_listening` runs once every listener is up (a worker tells its primary).
        """
        await serve_until_stopped(
            self,
            stop,
            service="command",
            ready_file=ready_file,
            also_stop=self._shutdown,
            on_listening=on_listening,
        )

    async def shutdown(self) -> None:
        """Stop accepting, let in-flight commands finish (within the deadline), close all."""
        self._ready = False
        for listener in self._listeners:
            listener.close()
        self.blocked.release_all()  # blocked clients answered nil, so they can drain
        await self.manager.shutdown(deadline_s=self.config.shutdown_timeout_s)
        self.pool.close()
        if self.keyspace is not None:
            await self.keyspace.close()
        for listener in self._listeners:
            await listener.wait_closed()
        self._listeners.clear()
        log.info("command server stopped commands=%d", self.counts.commands)

    # -- ServerView --------------------------------------------------------------------

    @property
    def requirepass(self) -> str | None:
        return self.config.requirepass

    @property
    def max_reply_bytes(self) -> int:
        return self.config.max_reply_bytes

    @property
    def encoding_limits(self) -> EncodingLimits:
        """CONFIG's hash and sorted-set encoding thresholds, as they are now."""
        return self.config.encoding_limits

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> object:
        """Run `callback` on the loop in `delay_s` seconds (a connection's held reply)."""
        return asyncio.get_running_loop().call_later(delay_s, callback)

    def call_soon(self, callback: Callable[[], None]) -> object:
        """Run `callback` on the loop's next turn (a connection's batch, going on)."""
        return asyncio.get_running_loop().call_soon(callback)

    def clients(self) -> Iterable[CommandConnection]:
        """The connections still served: one closing (after QUIT or a kill, its last
        reply flushing) is gone for CLIENT LIST and KILL, as in Redis."""
        return [c for c in self.manager if isinstance(c, CommandConnection) and not c.closing]

    def kill_clients(
        self, *, conn_id: int | None, addr: str | None, skip_id: int | None, caller_id: int | None
    ) -> int:
        """Close the matching clients but `skip_id`'s; the caller (`caller_id`), when it
        matches, gets its reply first and is closed after it, as Redis does."""
        killed = 0
        for conn in self.clients():
            if conn.conn_id == skip_id:
                continue
            if conn_id is not None and conn.conn_id != conn_id:
                continue
            if addr is not None and conn.peer != addr:
                continue
            if conn.conn_id == caller_id:
                conn.close_after_this_reply("killed by CLIENT KILL")
            else:
                conn.close("killed by CLIENT KILL", linger=False)
            killed += 1
        return killed

    def config_items(self) -> Mapping[str, str]:
        items = {
            "bind": self.config.host,
            "port": str(self.addresses.get("command", (self.config.host, self.config.port))[1]),
            "workers": str(self.config.workers),
            **READ_ONLY_CONFIG,
        }
        items.update(config_pairs(self.config))
        return items

    def config_set(self, pairs: list[tuple[str, str]]) -> None:
        self.apply_config(changed_config(self.config, pairs))
        log.info("config changed %s", " ".join(f"{k}={v}" for k, v in pairs if k != "requirepass"))

    def config_rewrite(self) -> asyncio.Future[object]:
        """CONFIG REWRITE: the running settings written back to the --config file, in a
        thread; the future fails with a CommandError when there is no file or the
        write fails."""
        return asyncio.ensure_future(rewrite_file(self.config_file, self.config))

    def apply_config(self, new: CommandConfig) -> None:
        """Run with the settings `new` from now on: the pool's size, the connection
        limits, and the protocol limits of every client's parser (CONFIG SET, SIGHUP)."""
        if new.log_level != self.config.log_level:
            apply_log_level(new.log_level)
        self.pool.resize(new.threads)
        self.manager.limits = self._limits(new)
        for conn in self.clients():
            conn.parser.max_bulk_bytes = new.max_bulk_bytes
            conn.parser.max_inline_bytes = new.max_inline_bytes
            conn.parser.max_array_items = new.max_array_items
        self.config = new

    async def reconfigure(self, new: CommandConfig) -> None:
        """A reload's live settings (core/reload.py); see `apply_config`."""
        self.apply_config(new)

    def info(self) -> dict[str, dict[str, object]]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        rss = rss_bytes()
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
                **{shown: stats[name] for shown, name in INFO_COUNTERS},
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
                f"cmdstat_{name}": f"calls={count}"
                for name, count in sorted(self.counts.calls.items())
            },
        }

    def _keyspace_info(self) -> dict[str, object]:
        if self.keyspace is None:
            return {"store": "none"}
        return self.keyspace.info()

    def stats(self) -> dict[str, int]:
        """Counters for INFO and /metrics."""
        counts = self.counts
        bytes_in = counts.closed_bytes_in
        bytes_out = counts.closed_bytes_out
        for conn in self.manager:
            bytes_in += conn.bytes_in
            bytes_out += conn.bytes_out
        return {
            **self.manager.stats(),
            **counts.counters(),
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "worker_threads": self.pool.size,
            "worker_busy": self.pool.busy,
        }

    def reset_stats(self) -> None:
        self.counts.reset()

    def request_shutdown(self) -> None:
        log.info("shutdown requested by a client")
        if self.shutdown_hook is not None and self.shutdown_hook():
            return
        self._shutdown.set()


def config_pairs(config: CommandConfig) -> list[tuple[str, str]]:
    """The run-time settings of `config` as CONFIG SET would take them back."""
    pairs: list[tuple[str, str]] = []
    for name, field in CONFIG_NAMES.items():
        value = getattr(config, field)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        pairs.append((name, "" if value is None else str(value)))
    return pairs


def changed_config(config: CommandConfig, pairs: list[tuple[str, str]]) -> CommandConfig:
    """`config` with CONFIG SET's (name, value) pairs applied; raises CommandError for an
    unknown or immutable name or a bad value, ConfigError for a value out of range."""
    changes: dict[str, object] = {}
    for name, raw in pairs:
        if name in IMMUTABLE_CONFIG:
            raise CommandError(
                f"CONFIG SET failed (possibly related to argument '{name}') - "
                "can't set immutable config"
            )
        field = CONFIG_NAMES.get(name)
        if field is None:
            raise CommandError(f"Unknown option or number of arguments for CONFIG SET - '{name}'")
        changes[field] = _convert(name, field, raw)
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]  # fields checked above


#: CONFIG REWRITE's answer for a server started without --config, as Redis words it.
NO_CONFIG_FILE: Final = "The server is running without a config file"


async def rewrite_file(path: Path | None, config: CommandConfig) -> None:
    """Write `config` back into the [command] section of `path` (core/rewrite.py), in a
    thread; raises CommandError when `path` is None or the file cannot be written."""
    if path is None:
        raise CommandError(NO_CONFIG_FILE)
    try:
        await asyncio.to_thread(rewrite_config, path, "command", config)
    except ConfigError as exc:
        raise CommandError(f"Rewriting config file: {exc}") from exc
    log.info("config rewritten path=%s", path)


def _keyspace(config: CommandConfig) -> Keyspace | None:
    """The keyspace the settings name: remote, embedded, or none."""
    if config.store is not None:
        # Worker processes each write the store: none may trust its own view of the expiries.
        return RemoteKeyspace(
            *parse_address(config.store),
            connections=config.store_connections,
            sole_writer=config.workers == 1,
        )
    if config.store_dir is not None:
        # Only this mode loads the store engine (and LMDB) into the command server.
        from postoffice.command.embedded import EmbeddedKeyspace

        return EmbeddedKeyspace(config.store_dir, config.store_durability)
    return None


def _convert(name: str, field: str, raw: str) -> object:
    if field == "requirepass":
        return raw or None
    if field == "log_level":
        return raw.upper()
    try:
        return float(raw) if field.endswith("_s") else int(raw)
    except ValueError:
        raise CommandError(
            f"CONFIG SET failed (possibly related to argument '{name}') - "
            f"expected a number, got {raw!r}"
        ) from None


def rss_bytes() -> int:
    """This process's resident memory in bytes (0 where /proc cannot tell)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


__all__ = [
    "NO_CONFIG_FILE",
    "CommandConnection",
    "CommandServer",
    "changed_config",
    "config_pairs",
    "rewrite_file",
    "rss_bytes",
]
