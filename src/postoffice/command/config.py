"""Settings of the command server, with their defaults and validation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from postoffice.command.encodings import DEFAULT_MAX_ENTRIES, DEFAULT_MAX_VALUE, EncodingLimits
from postoffice.command.pool import MAX_STORE_CONNECTIONS
from postoffice.command.remote import parse_address
from postoffice.core.config import check_range, check_settings, load, setting
from postoffice.core.connections import ClientLimitSettings, ConnectionLimits
from postoffice.core.errors import ConfigError
from postoffice.core.logs import LEVELS
from postoffice.core.resp import MAX_ARRAY_ITEMS, MAX_BULK_BYTES, MAX_INLINE_BYTES
from postoffice.core.tracing import parse_trace, trace_setting
from postoffice.core.workers import MAX_THREADS
from postoffice.store import DEFAULT_DURABILITY, Durability

#: Worker processes at most: far more than cores on any machine this serves.
MAX_WORKERS: Final = 64
#: The floors of the protocol limits: an administrative command must always get through.
MIN_BULK_BYTES: Final = 64
MIN_ARRAY_ITEMS: Final = 16
#: One reply at most, by default: room for a few of the store's largest values (16 MiB).
MAX_REPLY_BYTES: Final = 64 * 1024 * 1024
#: The reply limit's floor: INFO and CLIENT LIST of a busy server must fit.
MIN_REPLY_BYTES: Final = 64 * 1024
#: The slowest rate limit and the shortest idle timeout that are not 0 (off): below them
#: a client could barely be served at all.
MIN_RATE_LIMIT_PER_S: Final = 0.1
MIN_IDLE_TIMEOUT_S: Final = 0.1
#: The encoding thresholds' ceiling: they only name an encoding here, any value is harmless,
#: and Redis's own is LONG_MAX; this one keeps the setting a sane number.
MAX_ENCODING_THRESHOLD: Final = 1 << 30

#: The store server's durability default: an embedded store acknowledges alike.
_STORE_DURABILITY: Final = DEFAULT_DURABILITY.value


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandConfig(ClientLimitSettings):
    """Everything `postoffice command serve` can be told; see README for each flag.

    `idle_timeout_s` and `rate_limit_per_s` of 0 disable them; `metrics_port` of None
    disables the HTTP metrics listener. A field declared with `setting()` has a flag of
    `command serve`, its help, default and range made from the declaration. Raises
    ConfigError naming the bad field.
    """

    host: str = setting("127.0.0.1", help="Address to listen on.")
    port: int = setting(6380, help="TCP port (0: any free one).", low=0, high=65535)
    metrics_port: int | None = setting(
        6381, help="HTTP port for /metrics, /healthz, /readyz.", low=0, high=65535
    )
    threads: int = setting(
        4, help="Worker threads for blocking commands.", low=1, high=MAX_THREADS, live=True
    )
    max_connections: int = setting(
        10_000,
        help="Clients served at once; more are refused.",
        low=1,
        high=1_000_000,
        live=True,
    )
    idle_timeout_s: float = setting(
        300.0,
        help="Close a client idle this many seconds (0: never).",
        unit="seconds",
        low=0,
        high=365 * 86400,
        live=True,
    )
    max_inline_bytes: int = MAX_INLINE_BYTES
    # The protocol limits apply before a command is known, so their floors leave room for
    # every administrative command (CONFIG SET, HELLO 3 AUTH user pass SETNAME name).
    max_bulk_bytes: int = setting(
        MAX_BULK_BYTES,
        help="Largest argument accepted.",
        unit="bytes",
        low=MIN_BULK_BYTES,
        high=1 << 30,
        live=True,
    )
    max_array_items: int = MAX_ARRAY_ITEMS
    max_reply_bytes: int = setting(
        MAX_REPLY_BYTES,
        help="Largest reply one command may make; a larger one is an error (MGET, INFO, "
        "CLIENT LIST) or a shorter page (SCAN).",
        unit="bytes",
        low=MIN_REPLY_BYTES,
        high=1 << 32,
        live=True,
    )
    # The connection layer's per-client limits come from ClientLimitSettings.
    rate_limit_per_s: float = setting(
        0.0,
        help="Commands per second per client (0: unlimited).",
        flag="--rate-limit",
        low=0,
        high=1e9,
        live=True,
    )
    rate_limit_burst: int = setting(
        0,
        help="Commands a client may send at once (0: as many as the rate).",
        low=0,
        high=1 << 30,
        live=True,
    )
    requirepass: str | None = setting(
        None,
        help="Password clients must AUTH with.",
        live=True,
        secret=True,
    )
    tls_cert: Path | None = setting(
        None, help="PEM certificate: serve TLS instead of plain TCP.", path="existing-file"
    )
    tls_key: Path | None = setting(
        None, help="PEM private key of --tls-cert.", path="existing-file"
    )
    reuse_port: bool = setting(
        False, help="Set SO_REUSEPORT so several processes can share the port."
    )
    store: str | None = setting(
        None,
        help="Serve GET/SET/DEL/MGET/MSET/EXISTS/SCAN/DBSIZE from the store server there.",
        metavar="HOST:PORT",
    )
    store_connections: int = setting(
        1,
        help="With --store: pipelined connections to the store server; a request goes to "
        "its key's one, so one key's requests keep their order.",
        low=1,
        high=MAX_STORE_CONNECTIONS,
        metavar="N",
    )
    store_dir: Path | None = setting(
        None,
        help="Serve those keys from the store in DIR, opened in this process (no store "
        "server; DIR is a store server's <data-dir>/store). Not with --store.",
        metavar="DIR",
    )
    store_durability: str = setting(
        _STORE_DURABILITY,
        help="With --store-dir, as `store serve --durability`: always: an OK for SET, MSET "
        "or DEL leaves only after the fsync that covers it (group commit); interval: fsync "
        "every 100 ms.",
        flag="--durability",
        choices=[d.value for d in Durability],
    )
    log_level: str = setting(
        "INFO",
        help="Log level (also --log-level, which wins).",
        flag=None,
        choices=LEVELS,
        live=True,
    )
    shutdown_timeout_s: float = 10.0
    workers: int = setting(
        1,
        help="Processes serving the port (SO_REUSEPORT), for more than one core; CLIENT, "
        "INFO, CONFIG and SHUTDOWN see all of them. Not with --store-dir.",
        low=1,
        high=MAX_WORKERS,
    )
    # With workers > 1: a worker that answers none of the primary's heartbeats for this
    # long is taken for hung, killed and started again; 0 turns the heartbeat off.
    worker_timeout_s: float = setting(
        30.0,
        help="With --workers: a worker that answers none of the primary's heartbeats (one a "
        "second) for this long is killed and restarted; 0: never, else at least 1.",
        unit="seconds",
        low=0,
        high=3600,
        metavar="SECONDS",
    )

    trace: str | None = trace_setting()
    # Redis's encoding thresholds (CONFIG SET hash-max-listpack-entries ...): when a hash
    # or sorted set written from now on shows as a hashtable or skiplist.
    hash_max_listpack_entries: int = DEFAULT_MAX_ENTRIES
    hash_max_listpack_value: int = DEFAULT_MAX_VALUE
    zset_max_listpack_entries: int = DEFAULT_MAX_ENTRIES
    zset_max_listpack_value: int = DEFAULT_MAX_VALUE

    def __post_init__(self) -> None:
        check_settings(self)  # the ranges and choices declared above
        parse_trace(self.trace)  # otlp://HOST:PORT or none
        check_range("max_inline_bytes", self.max_inline_bytes, 64, 1 << 30)
        check_range("max_array_items", self.max_array_items, MIN_ARRAY_ITEMS, 1 << 24)
        check_range("shutdown_timeout_s", self.shutdown_timeout_s, 0, 3600)
        for name in (
            "hash_max_listpack_entries",
            "hash_max_listpack_value",
            "zset_max_listpack_entries",
            "zset_max_listpack_value",
        ):
            check_range(name, getattr(self, name), 0, MAX_ENCODING_THRESHOLD)
        _zero_or_at_least("rate_limit_per_s", self.rate_limit_per_s, MIN_RATE_LIMIT_PER_S)
        _zero_or_at_least("idle_timeout_s", self.idle_timeout_s, MIN_IDLE_TIMEOUT_S)
        if 0 < self.worker_timeout_s < 1:
            raise ConfigError(
                f"setting 'worker_timeout_s' must be 0 (off) or at least 1, "
                f"got {self.worker_timeout_s}"
            )
        if self.workers > 1 and self.store_dir is not None:
            raise ConfigError(
                f"settings 'workers' ({self.workers}) and 'store_dir' cannot be combined: "
                "a store directory is opened by one process only; give --workers with "
                "--store HOST:PORT (each worker links to the store server), or drop "
                "--workers to use --store-dir"
            )
        self.connection_limits()  # the output limits are 0 or at least 256 KiB
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("settings 'tls_cert' and 'tls_key' must be given together")
        if self.store is not None:
            try:
                parse_address(self.store)
            except ValueError as exc:
                raise ConfigError(f"setting 'store': {exc}") from None
        if self.store is not None and self.store_dir is not None:
            raise ConfigError(
                "settings 'store' and 'store_dir' are mutually exclusive: serve the keys "
                "from a store server or from a store directory, not both"
            )
        if self.requirepass == "":
            raise ConfigError("setting 'requirepass' must not be empty (leave it unset instead)")

    def connection_limits(self) -> ConnectionLimits:
        """What the connection layer keeps for each client of this process (one worker's
        share of `max_connections`). Raises ConfigError."""
        return ConnectionLimits(
            max_connections=self.clients_per_worker,
            idle_timeout_s=self.idle_timeout_s,
            max_request_bytes=max(self.max_bulk_bytes, self.max_inline_bytes),
            output_hard_limit_bytes=self.output_hard_limit_bytes,
            output_soft_limit_bytes=self.output_soft_limit_bytes,
            output_soft_limit_s=self.output_soft_limit_s,
            request_timeout_s=self.request_timeout_s,
            max_partial_bytes=self.max_partial_bytes,
        )

    @property
    def clients_per_worker(self) -> int:
        """The connections one worker admits: an equal share of `max_connections`.

        Rounded up, so the server as a whole admits at most `workers - 1` more than the
        setting and never fewer when the clients spread evenly.
        """
        return -(-self.max_connections // self.workers)

    @property
    def encoding_limits(self) -> EncodingLimits:
        """The hash and sorted-set encoding thresholds, for the commands that use them."""
        return EncodingLimits(
            hash_max_entries=self.hash_max_listpack_entries,
            hash_max_value=self.hash_max_listpack_value,
            zset_max_entries=self.zset_max_listpack_entries,
            zset_max_value=self.zset_max_listpack_value,
        )

    @property
    def burst(self) -> int:
        """Commands a client may send at once before the rate limit applies."""
        return self.rate_limit_burst or max(1, int(self.rate_limit_per_s))


def _zero_or_at_least(name: str, value: float, low: float) -> None:
    if 0 < value < low:
        raise ConfigError(f"setting {name!r} must be 0 (off) or at least {low:g}, got {value:g}")


def settings_json(config: CommandConfig) -> dict[str, object]:
    """`config` as a JSON object (paths as strings), for a worker process to rebuild."""
    return {
        f.name: str(value) if isinstance(value := getattr(config, f.name), Path) else value
        for f in dataclasses.fields(config)
    }


def settings_from_json(values: dict[str, object]) -> CommandConfig:
    """The config `settings_json` made; raises ConfigError for a bad or unknown field.

    Only these values count (no file, no environment). A None value falls back to the
    default, which is None for every optional field but `metrics_port`: a worker serves
    no metrics of its own, so its metrics port is None whatever the object said.
    """
    config = load(CommandConfig, section="command", env={}, overrides=values)
    return dataclasses.replace(config, metrics_port=None)
