"""Settings of the ingest server, with their defaults and validation."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from postoffice.core.config import (
    DATA_DIR_ENV,
    DEFAULT_DATA_DIR,
    check_port,
    check_range,
    check_settings,
    setting,
)
from postoffice.core.connections import ClientLimitSettings, ConnectionLimits
from postoffice.core.errors import ConfigError
from postoffice.core.logs import LEVELS
from postoffice.core.tracing import parse_trace, trace_setting

if TYPE_CHECKING:  # the cluster library (nats, obstore) is imported only in cluster mode
    from postoffice.ingest.cluster.config import ClusterConfig

MAX_DATA_PORTS: Final = 64  # X: one listener each; far past what one process can feed
#: Uploads of at most this many chunks may cut them as small as they like: such an upload
#: costs a bounded number of inodes whatever its chunks hold (the minimum chunk's reason).
SMALL_UPLOAD_CHUNKS: Final = 16
_MIB: Final = 1024 * 1024
SYS_PORTS: Final = 4  # health, telemetry, control, ack at sys-base + 0..3


@dataclass(frozen=True, slots=True, kw_only=True)
class IngestConfig(ClientLimitSettings):
    """Everything `postoffice ingest serve` can be told; see README and docs/protocols/ingest.md.

    `files_dir` of None means `<data_dir>/files`, `patches_dir` of None means
    `<data_dir>/ingest/patches`; port bases of 0 pick free ports (for tests). A field
    declared with `setting()` has a flag of `ingest serve`, its help, default and range
    made from the declaration. Raises ConfigError naming the bad field.
    """

    host: str = setting("127.0.0.1", help="Address to listen on.")
    sys_base: int = setting(
        7000,
        help="First system port: +0 health, +1 telemetry, +2 control, +3 ack (0: any free ones).",
        low=0,
        high=65535 - SYS_PORTS + 1,
    )
    data_base: int = setting(
        7100,
        help="First data port; the last, data-base + x - 1, must be a port too (0: any free ones).",
        low=0,
        high=65535,
    )
    x: int = setting(4, help="Number of data ports.", low=1, high=MAX_DATA_PORTS, live=True)
    ttl_s: float = setting(
        86400.0,
        help="Seconds before idle uploads and published files are removed.",
        unit="seconds",
        low=1,
        high=10 * 365 * 86400,
        live=True,
    )
    data_dir: Path = setting(DEFAULT_DATA_DIR, help=f"State directory (also ${DATA_DIR_ENV}).")
    files_dir: Path | None = setting(
        None, help="Where published files appear.", default_text="<data-dir>/files"
    )
    patches_dir: Path | None = setting(
        None,
        help="Where chunks wait for assembly.",
        default_text="<data-dir>/ingest/patches",
    )
    cleanup_interval_s: float = setting(
        60.0,
        help="Seconds between TTL cleanup passes.",
        unit="seconds",
        low=0.01,
        high=86400,
        live=True,
    )
    max_chunk_bytes: int = 8 * 1024 * 1024
    max_output_bytes: int = setting(
        4 * 1024**3,
        help="Largest decompressed file: a bigger one fails (CONFIG SET max-output-bytes).",
        unit="bytes",
        low=1,
        high=1 << 50,
        live=True,
    )
    max_output_ratio: int = setting(
        100,
        help=(
            "Largest ratio of decompressed to compressed bytes once the output passes 16 MiB"
            " (a zstd bomb fails; 0: no ratio limit; CONFIG SET max-output-ratio)."
        ),
        low=0,
        high=1_000_000,
        live=True,
    )
    max_window_log: int = 27  # 128 MiB: zstd's own default ceiling for decompression
    max_uploads: int = setting(
        10_000,
        help=(
            "Uploads in progress at once (stored, not yet published); a chunk that would"
            " start another is refused with BUSY (CONFIG SET max-uploads)."
        ),
        low=1,
        high=10_000_000,
        live=True,
    )
    min_chunk_bytes: int = setting(
        16 * 1024,
        help=(
            f"Smallest chunk of an upload of more than {SMALL_UPLOAD_CHUNKS} chunks, but for"
            " its last (0: none); a shorter one is refused with OUT_OF_RANGE."
        ),
        flag="--min-chunk-size",
        unit="bytes",
        low=0,
        high=8 * _MIB,
        live=True,
    )
    max_connections: int = 1000
    idle_timeout_s: float = 300.0
    max_in_flight: int = 8  # chunks per data connection being stored at once
    io_threads: int = 8
    fsync: bool = setting(
        True,
        help="Skip fsync (faster, not durable: tests and benchmarks only).",
        flag="--no-fsync",
    )
    assemble_via_part: bool = setting(
        False,
        help="Assemble through a .part file instead of streaming from the patches.",
        flag="--via-part",
    )
    stream_assemblies: int = setting(
        4,
        help="Uploads decompressed while their chunks arrive, at most (0: only once complete).",
        low=0,
        high=256,
    )
    decompress_threads: int = setting(
        0,
        help=(
            "Threads that decompress the chunks of FRAMED uploads as they arrive, each"
            " straight to its place in the file (0: one per CPU core)."
        ),
        low=0,
        high=256,
        live=True,
    )
    control_token: str | None = setting(
        None, help="Token the control port requires (AUTH).", secret=True
    )
    log_level: str = setting(
        "INFO",
        help="Log level (also --log-level, which wins).",
        flag=None,
        choices=LEVELS,
        live=True,
    )
    shutdown_timeout_s: float = 30.0

    trace: str | None = trace_setting()

    cluster: str | None = setting(
        None,
        help=(
            "Run as a node of an ingest cluster: the NATS JetStream servers it shares,"
            " nats://HOST:PORT[,...] (needs --s3 and --bucket)."
        ),
        metavar="URLS",
    )
    s3: str | None = setting(
        None,
        help=(
            "The S3-compatible object store of the cluster's bytes, http(s)://HOST[:PORT]"
            " (credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)."
        ),
        metavar="URL",
    )
    bucket: str | None = setting(None, help="The cluster's S3 bucket.", metavar="NAME")
    node_name: str | None = setting(
        None,
        help="This node's name in the cluster (none: <hostname>-<health port>).",
        metavar="NAME",
    )
    advertise: str | None = setting(
        None,
        help="The host other nodes and clients reach this node at (none: --host).",
        metavar="HOST",
    )

    def __post_init__(self) -> None:
        check_settings(self)  # the ranges declared above
        parse_trace(self.trace)  # otlp://HOST:PORT or none
        if self.data_base:
            check_port("data_base", self.data_base + self.x - 1)
        check_range("max_chunk_bytes", self.max_chunk_bytes, 1024, 8 * 1024 * 1024)
        check_range("min_chunk_bytes", self.min_chunk_bytes, 0, self.max_chunk_bytes)
        check_range("max_window_log", self.max_window_log, 10, 31)
        check_range("max_connections", self.max_connections, 1, 1_000_000)
        check_range("idle_timeout_s", self.idle_timeout_s, 0, 86400)
        check_range("max_in_flight", self.max_in_flight, 1, 1024)
        check_range("io_threads", self.io_threads, 1, 256)
        check_range("shutdown_timeout_s", self.shutdown_timeout_s, 0, 3600)
        self.connection_limits(0)  # the output limits are 0 or at least 256 KiB
        self._check_cluster()
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

    def _check_cluster(self) -> None:
        """The cluster settings go together: --s3 and --bucket with --cluster, and none of
        them (nor --node-name, --advertise) without it."""
        if self.cluster is None:
            given = [
                name
                for name in ("s3", "bucket", "node_name", "advertise")
                if getattr(self, name) is not None
            ]
            if given:
                raise ConfigError(
                    f"setting {given[0]!r} needs 'cluster' (--cluster nats://HOST:PORT)"
                )
            return
        for name, flag in (("s3", "--s3 URL"), ("bucket", "--bucket NAME")):
            if not getattr(self, name):
                raise ConfigError(f"setting 'cluster' needs {name!r} too ({flag})")
        self.cluster_config()  # the URLs, the S3 URL and the bucket name parse
        if self.node_name is not None:
            from postoffice.ingest.cluster.errors import ClusterError
            from postoffice.ingest.cluster.records import check_node_name

            try:
                check_node_name(self.node_name)
            except ClusterError as exc:
                raise ConfigError(f"setting 'node_name': {exc}") from None
        if self.advertise == "":
            raise ConfigError("setting 'advertise' must not be empty (leave it unset instead)")

    def cluster_config(self) -> ClusterConfig:
        """The cluster library's settings from these (S3 credentials and region from the
        AWS_* environment). Raises ConfigError; only for a config with `cluster` set."""
        from postoffice.ingest.cluster.config import ClusterConfig, parse_nats_urls

        assert self.cluster is not None
        assert self.s3 is not None
        assert self.bucket is not None
        return ClusterConfig(
            nats_urls=parse_nats_urls(self.cluster),
            s3_url=self.s3,
            bucket=self.bucket,
            region=ClusterConfig.region_from(),
        )

    def connection_limits(self, max_request_bytes: int) -> ConnectionLimits:
        """What the connection layer keeps for each data and ack connection, whose frames
        carry at most `max_request_bytes` of payload (0: the layer's default). Raises
        ConfigError."""
        limits = ConnectionLimits(
            max_connections=self.max_connections,
            idle_timeout_s=self.idle_timeout_s,
            output_hard_limit_bytes=self.output_hard_limit_bytes,
            output_soft_limit_bytes=self.output_soft_limit_bytes,
            output_soft_limit_s=self.output_soft_limit_s,
            request_timeout_s=self.request_timeout_s,
            max_partial_bytes=self.max_partial_bytes,
        )
        if max_request_bytes:
            limits = dataclasses.replace(limits, max_request_bytes=max_request_bytes)
        return limits

    @property
    def decompress_pool_size(self) -> int:
        """Threads of the FRAMED decompression pool: decompress_threads, or the CPU cores
        this process may run on."""
        if self.decompress_threads:
            return self.decompress_threads
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):  # not Linux
            return max(1, os.cpu_count() or 1)

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
