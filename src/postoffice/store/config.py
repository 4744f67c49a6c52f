"""Settings of the store server, with their defaults and validation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from postoffice.core.config import check_choice, check_port, check_range
from postoffice.core.framing import MAX_PAYLOAD_BYTES
from postoffice.store.engine import DEFAULT_DURABILITY, Durability


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreConfig:
    """Everything `postoffice store serve` can be told; see README and docs/protocols/store.md.

    The store lives in `<data_dir>/store`. `idle_timeout_s` of 0 disables the idle
    timeout; `metrics_port` of None disables HTTP metrics. Raises ConfigError.
    """

    host: str = "127.0.0.1"
    port: int = 7400
    metrics_port: int | None = 7401
    data_dir: Path = Path("var")
    durability: str = DEFAULT_DURABILITY.value
    max_connections: int = 10_000
    idle_timeout_s: float = 300.0
    max_request_bytes: int = MAX_PAYLOAD_BYTES
    max_in_flight: int = 1024  # replies owed per connection before it stops reading
    io_threads: int = 8
    shutdown_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        check_port("port", self.port)
        if self.metrics_port is not None:
            check_port("metrics_port", self.metrics_port)
        check_choice("durability", self.durability, [d.value for d in Durability])
        check_range("max_connections", self.max_connections, 1, 1_000_000)
        check_range("idle_timeout_s", self.idle_timeout_s, 0, 86400)
        check_range("max_request_bytes", self.max_request_bytes, 1024, MAX_PAYLOAD_BYTES)
        check_range("max_in_flight", self.max_in_flight, 1, 100_000)
        check_range("io_threads", self.io_threads, 1, 256)
        check_range("shutdown_timeout_s", self.shutdown_timeout_s, 0, 3600)

    @property
    def store_path(self) -> Path:
        """Where the log segments and the LMDB index live."""
        return self.data_dir / "store"
