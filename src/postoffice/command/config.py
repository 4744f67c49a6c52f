"""Settings of the command server, with their defaults and validation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from postoffice.command.remote import parse_address
from postoffice.core.config import check_choice, check_port, check_range, load
from postoffice.core.errors import ConfigError
from postoffice.core.resp import MAX_ARRAY_ITEMS, MAX_BULK_BYTES, MAX_INLINE_BYTES
from postoffice.core.workers import MAX_THREADS
from postoffice.store import DEFAULT_DURABILITY, Durability

#: Worker processes at most: far more than cores on any machine this serves.
MAX_WORKERS: Final = 64

#: The store server's durability default: an embedded store acknowledges alike.
_STORE_DURABILITY: Final = DEFAULT_DURABILITY.value


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandConfig:
    """Everything `postoffice command serve` can be told; see README for each flag.

    `idle_timeout_s` and `rate_limit_per_s` of 0 disable them; `metrics_port` of None
    disables the HTTP metrics listener. Raises ConfigError naming the bad field.
    """

    host: str = "127.0.0.1"
    port: int = 6380
    metrics_port: int | None = 6381
    threads: int = 4
    max_connections: int = 10_000
    idle_timeout_s: float = 300.0
    max_inline_bytes: int = MAX_INLINE_BYTES
    max_bulk_bytes: int = MAX_BULK_BYTES
    max_array_items: int = MAX_ARRAY_ITEMS
    rate_limit_per_s: float = 0.0
    rate_limit_burst: int = 0
    requirepass: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    reuse_port: bool = False
    store: str | None = None  # HOST:PORT of a store server for GET/SET/DEL/SCAN/DBSIZE
    store_dir: Path | None = None  # or a store directory to open in this process
    store_durability: str = _STORE_DURABILITY  # that store's durability
    shutdown_timeout_s: float = 10.0
    workers: int = 1  # processes serving the port (SO_REUSEPORT); 1: this process alone
    # With workers > 1: a worker that answers none of the primary's heartbeats for this
    # long is taken for hung, killed and started again; 0 turns the heartbeat off.
    worker_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        check_port("port", self.port)
        if self.metrics_port is not None:
            check_port("metrics_port", self.metrics_port)
        check_range("threads", self.threads, 1, MAX_THREADS)
        check_range("max_connections", self.max_connections, 1, 1_000_000)
        check_range("idle_timeout_s", self.idle_timeout_s, 0, 365 * 86400)
        check_range("max_inline_bytes", self.max_inline_bytes, 64, 1 << 30)
        check_range("max_bulk_bytes", self.max_bulk_bytes, 1, 1 << 30)
        check_range("max_array_items", self.max_array_items, 1, 1 << 24)
        check_range("rate_limit_per_s", self.rate_limit_per_s, 0, 1e9)
        check_range("rate_limit_burst", self.rate_limit_burst, 0, 1 << 30)
        check_range("shutdown_timeout_s", self.shutdown_timeout_s, 0, 3600)
        check_range("workers", self.workers, 1, MAX_WORKERS)
        check_range("worker_timeout_s", self.worker_timeout_s, 0, 3600)
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
        check_choice("store_durability", self.store_durability, [d.value for d in Durability])
        if self.requirepass == "":
            raise ConfigError("setting 'requirepass' must not be empty (leave it unset instead)")

    @property
    def clients_per_worker(self) -> int:
        """The connections one worker admits: an equal share of `max_connections`.

        Rounded up, so the server as a whole admits at most `workers - 1` more than the
        setting and never fewer when the clients spread evenly.
        """
        return -(-self.max_connections // self.workers)

    @property
    def burst(self) -> int:
        """Commands a client may send at once before the rate limit applies."""
        return self.rate_limit_burst or max(1, int(self.rate_limit_per_s))


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
