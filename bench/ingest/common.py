"""Settings of the ingest benchmark shared by its parts: sizes, limits, names."""

from __future__ import annotations

from typing import Final

MIB: Final = 1024 * 1024
MB: Final = 1_000_000  # throughput figures are in MB/s (10^6 bytes), as zstd prints them
DEFAULT_SIZE_MIB: Final = 1024
DEFAULT_ROUNDS: Final = 2
DEFAULT_SMALL_COUNT: Final = 10_000
SMALL_FILE_BYTES: Final = 4096
CHUNK_BYTES: Final = 4 * MIB
PARALLEL: Final = 4  # IngestClient connections for the large files
SMALL_CONCURRENCY: Final = 32  # files in flight at once, for ours and for the peer
ZSTD_LEVEL: Final = 3
SEED: Final = 20261122
IO_BYTES: Final = MIB

STARTUP_TIMEOUT_S: Final = 20.0
STOP_TIMEOUT_S: Final = 30.0
#: Bounds one upload (a reply, or the wait for the publish) and one zstd run.
RUN_TIMEOUT_S: Final = 900.0
#: aiohttp refuses request bodies over 1 MiB by default; a tus PATCH carries a chunk.
TUS_MAX_BODY: Final = CHUNK_BYTES + MIB
TUS_PATH: Final = "/uploads"
PEER_SUBCOMMAND: Final = "_tus-server"

LARGE_KINDS: Final = ("log", "random")
CONTENDERS: Final = ("disk", "limit", "limit_py", "ours", "ours_framed", "ours_via_part", "peer")

INSTALL_HINT: Final = (
    "install the benchmark-only peers into the venv with: "
    ".venv/bin/pip install aiohttp aiohttp-tus tuspy"
)
