"""Settings of the ingest server, with their defaults and validation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from postoffice.core.config import check_port, check_range
from postoffice.core.errors import ConfigError

MAX_DATA_PORTS: Final = 64  # X: one listener each; far past what one process can feed
SYS_PORTS: Final = 4  # health, telemetry, control, ack at sys-base + 0..3


@dataclass(frozen=True, slots=True, kw_only=True)
class IngestConfig:
    """Everything `postoffice ingest serve` can be told; see README and docs/protocols/ingest.md.

    `files_dir` of None means `<data_dir>/files`, `patches_dir` of None means
    `<data_dir>/ingest/patches`; port bases of 0 pick free
    ports (for tests). Raises ConfigError naming the bad field.
    """

    host: str = "127.0.0.1"
    sys_base: int = 7000
    data_base: int = 7100
    x: int = 4
    ttl_s: float = 86400.0
    data_dir: Path = Path("var")
    files_dir: Path | None = None
    patches_dir: Path | None = None
    cleanup_interval_s: float = 60.0
    max_chunk_bytes: int = 8 * 1024 * 1024
    max_output_bytes: int = 64 * 1024**3
    max_window_log: int = 27  # 128 MiB: zstd's own default ceiling for decompression
    max_connections: int = 1000
    idle_timeout_s: float = 300.0
    max_in_flight: int = 8  # chunks per data connection being stored at once
    io_threads: int = 8
    fsync: bool = True
    assemble_via_part: bool = False
    stream_assemblies: int = 4  # uploads decompressed while their chunks arrive, at most
    control_token: str | None = None
    shutdown_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.sys_base:
            check_port("sys_base", self.sys_base)
            check_port("sys_base", self.sys_base + SYS_PORTS - 1)
        if self.data_base:
            check_port("data_base", self.data_base)
            check_port("data_base", self.data_base + self.x - 1)
        check_range("x", self.x, 1, MAX_DATA_PORTS)
        check_range("ttl_s", self.ttl_s, 1, 10 * 365 * 86400)
        check_range("cleanup_interval_s", self.cleanup_interval_s, 0.01, 86400)
        check_range("max_chunk_bytes", self.max_chunk_bytes, 1024, 8 * 1024 * 1024)
        check_range("max_output_bytes", self.max_output_bytes, 1, 1 << 50)
        check_range("max_window_log", self.max_window_log, 10, 31)
        check_range("max_connections", self.max_connections, 1, 1_000_000)
        check_range("idle_timeout_s", self.idle_timeout_s, 0, 86400)
        check_range("max_in_flight", self.max_in_flight, 1, 1024)
        check_range("io_threads", self.io_threads, 1, 256)
        check_range("stream_assemblies", self.stream_assemblies, 0, 256)
        check_range("shutdown_timeout_s", self.shutdown_timeout_s, 0, 3600)
        if self.control_token == "":
            raise ConfigError("setting 'control_token' must not be empty (leave it unset instead)")
        if self.sys_base and self.data_base:
            sys_ports = set(range(self.sys_base, self.sys_base + SYS_PORTS))
            data_ports = set(range(self.data_base, self.data_base + MAX_DATA_PORTS))
            if sys_ports & data_ports:
                raise ConfigError(
                    f"settings 'sys_base' {self.sys_base} and 'data_base' {self.data_base} "
                    f"overlap: data ports may grow to {MAX_DATA_PORTS}"
                )

    @property
    def files_path(self) -> Path:
        """Where published files appear."""
        return self.files_dir or self.data_dir / "files"

    @property
    def patches_path(self) -> Path:
        """Where chunks are kept until their payload is published."""
        return self.patches_dir or self.data_dir / "ingest" / "patches"

    @property
    def published_path(self) -> Path:
        """Where the records of published payloads are kept."""
        return self.patches_path.parent / "published"
