"""Settings of the store server, with their defaults and validation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from postoffice.core.config import (
    DATA_DIR_ENV,
    DEFAULT_DATA_DIR,
    check_range,
    check_settings,
    setting,
)
from postoffice.core.connections import ClientLimitSettings, ConnectionLimits
from postoffice.core.framing import MAX_PAYLOAD_BYTES
from postoffice.core.http import (
    HTTP_IDLE_TIMEOUT_S,
    HTTP_MAX_CONNECTIONS,
    HTTP_REQUEST_TIMEOUT_S,
    http_limits,
)
from postoffice.core.logs import LEVELS
from postoffice.core.tracing import parse_trace, trace_setting
from postoffice.store.engine import DEFAULT_DURABILITY, Durability

_MIB: Final = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreConfig(ClientLimitSettings):
    """Everything `postoffice store serve` can be told; see README and docs/protocols/store.md.

    The store lives in `<data_dir>/store`. `idle_timeout_s` of 0 disables the idle
    timeout; `metrics_port` of None disables HTTP metrics. The limits on what one client
    may cost (output, request deadline, partial requests, SCAN page, the metrics port's
    connections and timeouts) are explained in docs/security.md; 0 turns any of them
    off. A field declared with `setting()` has a flag of `store serve`, its help, default
    and range made from the declaration. Raises ConfigError naming the bad field.
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
        high=86400,
        live=True,
    )
    max_request_bytes: int = setting(
        MAX_PAYLOAD_BYTES,
        help="Largest request frame payload, bytes.",
        flag="--max-request-size",
        unit="bytes",
        low=1024,
        high=MAX_PAYLOAD_BYTES,
        live=True,
    )
    max_scan_page_bytes: int = setting(
        _MIB,
        help="A SCAN page stops before its items pass this many bytes (it always holds one).",
        flag="--max-scan-page-size",
        unit="bytes",
        low=1024,
        high=MAX_PAYLOAD_BYTES,
        live=True,
    )
    http_max_connections: int = setting(
        HTTP_MAX_CONNECTIONS,
        help="Connections the metrics port serves at once; one more gets 503 and is closed.",
        low=1,
        high=100_000,
    )
    http_idle_timeout_s: float = setting(
        HTTP_IDLE_TIMEOUT_S,
        help="Close a metrics-port connection with no request for this many seconds (0: never).",
        unit="seconds",
        low=0,
        high=86400,
    )
    http_request_timeout_s: float = setting(
        HTTP_REQUEST_TIMEOUT_S,
        help="A metrics-port request head must arrive whole this many seconds after its "
        "first byte, else 408 and closed (0: no limit).",
        unit="seconds",
        low=0,
        high=86400,
    )
    log_level: str = setting(
        "INFO",
        help="Log level (also --log-level, which wins).",
        flag=None,
        choices=LEVELS,
        live=True,
    )
    max_in_flight: int = 1024  # replies owed per connection before it stops reading
    io_threads: int = 8
    shutdown_timeout_s: float = 10.0

    trace: str | None = trace_setting()

    def __post_init__(self) -> None:
        check_settings(self)  # the ranges and choices declared above
        parse_trace(self.trace)  # otlp://HOST:PORT or none
        check_range("max_in_flight", self.max_in_flight, 1, 100_000)
        check_range("io_threads", self.io_threads, 1, 256)
        check_range("shutdown_timeout_s", self.shutdown_timeout_s, 0, 3600)
        self.connection_limits()  # the output limits are 0 or at least 256 KiB
        self.http_limits()

    def connection_limits(self) -> ConnectionLimits:
        """What the connection layer keeps for each client. Raises ConfigError."""
        return ConnectionLimits(
            max_connections=self.max_connections,
            idle_timeout_s=self.idle_timeout_s,
            max_request_bytes=self.max_request_bytes,
            output_hard_limit_bytes=self.output_hard_limit_bytes,
            output_soft_limit_bytes=self.output_soft_limit_bytes,
            output_soft_limit_s=self.output_soft_limit_s,
            request_timeout_s=self.request_timeout_s,
            max_partial_bytes=self.max_partial_bytes,
        )

    def http_limits(self) -> ConnectionLimits:
        """What the metrics port keeps for each client. Raises ConfigError."""
        return http_limits(
            max_connections=self.http_max_connections,
            idle_timeout_s=self.http_idle_timeout_s,
            request_timeout_s=self.http_request_timeout_s,
        )

    @property
    def store_path(self) -> Path:
        """Where the log segments and the LMDB index live."""
        return self.data_dir / "store"
