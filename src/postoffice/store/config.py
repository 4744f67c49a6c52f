"""Settings of the store server, with their defaults and validation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from postoffice.core.config import (
    DATA_DIR_ENV,
    DEFAULT_DATA_DIR,
    check_range,
    check_settings,
    setting,
)
from postoffice.core.framing import MAX_PAYLOAD_BYTES
from postoffice.store.engine import DEFAULT_DURABILITY, Durability


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreConfig:
    """Everything `postoffice store serve` can be told; see README and docs/protocols/store.md.

    The store lives in `<data_dir>/store`. `idle_timeout_s` of 0 disables the idle
    timeout; `metrics_port` of None disables HTTP metrics. A field declared with
    `setting()` has a flag of `store serve`, its help, default and range made from the
    declaration. Raises ConfigError naming the bad field.
    """

    host: str = setting("127.0.0.1", help="Address to listen on.")
    port: int = setting(7400, help="TCP port (0: any free one).", low=0, high=65535)
    metrics_port: int | None = setting(
        7401, help="HTTP port for /metrics, /healthz, /readyz.", low=0, high=65535
    )
    data_dir: Path = setting(
        DEFAULT_DATA_DIR,
        help=f"State directory (also ${DATA_DIR_ENV}); the store lives in <data-dir>/store.",
    )
    durability: str = setting(
        DEFAULT_DURABILITY.value,
        help="always: an acknowledged write is on disk (group commit); interval: fsync "
        "every 100 ms; never: leave it to the OS.",
        choices=[d.value for d in Durability],
    )
    max_connections: int = setting(
        10_000, help="Clients served at once; more are refused.", low=1, high=1_000_000
    )
    idle_timeout_s: float = setting(
        300.0,
        help="Close a client idle this many seconds (0: never).",
        unit="seconds",
        low=0,
        high=86400,
    )
    max_request_bytes: int = setting(
        MAX_PAYLOAD_BYTES,
        help="Largest request frame payload, bytes.",
        flag="--max-request-size",
        unit="bytes",
        low=1024,
        high=MAX_PAYLOAD_BYTES,
    )
    max_in_flight: int = 1024  # replies owed per connection before it stops reading
    io_threads: int = 8
    shutdown_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        check_settings(self)  # the ranges and choices declared above
        check_range("max_in_flight", self.max_in_flight, 1, 100_000)
        check_range("io_threads", self.io_threads, 1, 256)
        check_range("shutdown_timeout_s", self.shutdown_timeout_s, 0, 3600)

    @property
    def store_path(self) -> Path:
        """Where the log segments and the LMDB index live."""
        return self.data_dir / "store"
