"""The benchmark's inputs: a log-like and a random file, small files, compressed once."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import hashlib
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final, final

import zstandard
from common import CHUNK_BYTES, IO_BYTES, MIB, SEED, SMALL_FILE_BYTES, ZSTD_LEVEL


@final
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Input:
    """One large input: the original (for checking outputs) and its .zst (what is sent)."""

    kind: str
    plain: Path
    zst: Path
    size: int
    zst_size: int
    sha256: str
    make_s: float
    compress_s: float
    #: The same content as one frame per CHUNK_BYTES of it, each with its content size
    #: (what IngestClient makes of a plain file): sent FRAMED, one chunk per frame.
    zst_framed: Path | None = None
    zst_framed_size: int = 0


_SERVICES: Final = ("api", "auth", "billing", "search", "ingest", "worker", "gateway", "cache")
_LEVELS: Final = ("INFO",) * 14 + ("DEBUG",) * 3 + ("WARN",) * 2 + ("ERROR",)
_METHODS: Final = ("GET",) * 6 + ("POST",) * 2 + ("PUT", "DELETE")
_STATUSES: Final = (200,) * 20 + (201, 204, 301, 304, 400, 401, 403, 404, 404, 409, 429, 500, 503)
_PATHS: Final = (
    "/v1/users/{n}",
    "/v1/users/{n}/orders",
    "/v1/orders/{n}/items/{m}",
    "/v1/search?q={w}&page={m}",
    "/v1/catalog/{w}/{n}",
    "/healthz",
    "/v2/sessions/{h}",
    "/static/js/app.{h}.js",
    "/v1/billing/invoices/{n}.pdf",
    "/v1/auth/token",
)
_AGENTS: Final = (
    "Mozilla/5.0 (X11; Linux x86_64; rv:131.0) Gecko/20100101 Firefox/131.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/130.0 Safari/537.36",
    "curl/8.5.0",
    "python-requests/2.32.3",
    "Go-http-client/1.1",
    "okhttp/4.12.0",
    "kube-probe/1.31",
)
_WORDS: Final = (
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
    "timeout",
    "retry",
    "cache",
    "miss",
    "hit",
    "upstream",
    "refused",
    "reset",
    "slow",
    "query",
    "index",
    "shard",
    "replica",
)
_MESSAGES: Final = (
    "request served",
    "request served",
    "request served",
    "cache miss key={w}:{n}",
    "upstream {w} answered in {m} ms",
    "retrying {w} attempt={m}",
    "slow query table={w} rows={n}",
    "token refreshed for user {n}",
    "connection reset by peer {ip}",
    "rate limit exceeded client={ip} bucket={w}",
)
#: Distinct line bodies in the pool; each block is a shuffle of them with fresh timestamps.
LOG_POOL_LINES: Final = 50_000


def _log_bodies(rng: random.Random, count: int) -> list[str]:
    """Log line bodies (everything after the timestamp), with varied fields."""
    bodies: list[str] = []
    for _ in range(count):
        ip = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        fields = {
            "n": rng.randrange(1, 10 ** rng.randrange(2, 8)),
            "m": rng.randrange(1, 2000),
            "w": rng.choice(_WORDS),
            "h": f"{rng.getrandbits(48):012x}",
            "ip": ip,
        }
        path = rng.choice(_PATHS).format(**fields)
        message = rng.choice(_MESSAGES).format(**fields)
        bodies.append(
            f" {rng.choice(_LEVELS):<5} {rng.choice(_SERVICES)}[{rng.randrange(100, 40000)}] "
            f"req={rng.getrandbits(64):016x} {rng.choice(_METHODS)} {path} "
            f"status={rng.choice(_STATUSES)} dur_ms={rng.expovariate(1 / 40):.1f} "
            f"bytes={rng.randrange(0, 200_000)} ip={ip} "
            f'ua="{rng.choice(_AGENTS)}" msg="{message}"\n'
        )
    return bodies


def _log_blocks(rng: random.Random) -> Iterator[bytes]:
    """Endless log text: each block shuffles the pool and stamps it with rising times."""
    bodies = _log_bodies(rng, LOG_POOL_LINES)
    # One hour of sorted timestamps, reused by every block under its own date and hour.
    stamps = sorted(
        f"{rng.randrange(60):02d}:{rng.randrange(60):02d}.{rng.randrange(1000):03d}Z"
        for _ in range(LOG_POOL_LINES)
    )
    start = datetime.datetime(2026, 11, 22, tzinfo=datetime.UTC)
    hour = 0
    while True:
        rng.shuffle(bodies)
        prefix = (start + datetime.timedelta(hours=hour)).strftime("%Y-%m-%dT%H:")
        yield "".join(
            [prefix + stamp + body for stamp, body in zip(stamps, bodies, strict=True)]
        ).encode()
        hour += 1


def _random_blocks(rng: random.Random) -> Iterator[bytes]:
    while True:
        yield rng.randbytes(8 * MIB)


def write_input(path: Path, size: int, blocks: Iterator[bytes]) -> str:
    """Write exactly `size` bytes from `blocks` to `path`; return their sha256 (hex)."""
    digest = hashlib.sha256()
    written = 0
    with path.open("wb") as out:
        while written < size:
            block = next(blocks)[: size - written]
            out.write(block)
            digest.update(block)
            written += len(block)
    return digest.hexdigest()


def compress_file(src: Path, dst: Path) -> int:
    """Zstandard level 3 (with content size and checksum) of `src` into `dst`; its size."""
    size = src.stat().st_size
    compressor = zstandard.ZstdCompressor(
        level=ZSTD_LEVEL, write_checksum=True, write_content_size=True, threads=-1
    )
    with src.open("rb") as fin, dst.open("wb") as fout:
        compressor.copy_stream(fin, fout, size=size, read_size=IO_BYTES, write_size=IO_BYTES)
    return dst.stat().st_size


def compress_framed(src: Path, dst: Path, block: int) -> int:
    """`src` as one Zstandard level 3 frame per `block` bytes (content size and checksum
    in each), compressed on threads, into `dst`; its size."""
    local = threading.local()

    def compress(data: bytes) -> bytes:
        compressor = getattr(local, "compressor", None)
        if compressor is None:
            compressor = local.compressor = zstandard.ZstdCompressor(
                level=ZSTD_LEVEL, write_checksum=True, write_content_size=True
            )
        frame: bytes = compressor.compress(data)
        return frame

    with (
        src.open("rb") as fin,
        dst.open("wb") as fout,
        concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool,
    ):
        while blocks := [b for b in (fin.read(block) for _ in range(8)) if b]:
            for frame in pool.map(compress, blocks):
                fout.write(frame)
    return dst.stat().st_size


def make_large_input(work: Path, kind: str, size: int) -> Input:
    """The `kind` input of `size` bytes and its .zst, under `work/inputs`."""
    folder = work / "inputs"
    folder.mkdir(parents=True, exist_ok=True)
    plain = folder / f"{kind}.txt" if kind == "log" else folder / f"{kind}.bin"
    rng = random.Random(f"{SEED}-{kind}")
    blocks = _log_blocks(rng) if kind == "log" else _random_blocks(rng)
    began = time.monotonic()
    sha = write_input(plain, size, blocks)
    made = time.monotonic()
    zst = plain.with_name(plain.name + ".zst")
    zst_size = compress_file(plain, zst)
    done = time.monotonic()
    zst_framed = plain.with_name(plain.name + ".framed.zst")
    zst_framed_size = compress_framed(plain, zst_framed, CHUNK_BYTES)
    return Input(
        kind=kind,
        plain=plain,
        zst=zst,
        size=size,
        zst_size=zst_size,
        sha256=sha,
        make_s=round(made - began, 2),
        compress_s=round(done - made, 2),
        zst_framed=zst_framed,
        zst_framed_size=zst_framed_size,
    )


def make_small_inputs(work: Path, count: int) -> tuple[list[Path], dict[str, int]]:
    """`count` log-like files of 4 KiB, each compressed alone; returns the .zst paths."""
    folder = work / "small"
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{SEED}-small")
    blocks = _log_blocks(rng)
    compressor = zstandard.ZstdCompressor(
        level=ZSTD_LEVEL, write_checksum=True, write_content_size=True
    )
    paths: list[Path] = []
    zst_bytes = 0
    text = b""
    offset = 0
    for index in range(count):
        if offset + SMALL_FILE_BYTES > len(text):
            text, offset = next(blocks), 0
        data = text[offset : offset + SMALL_FILE_BYTES]
        offset += SMALL_FILE_BYTES
        packed = compressor.compress(data)
        path = folder / f"f{index:05d}.log.zst"
        path.write_bytes(packed)
        zst_bytes += len(packed)
        paths.append(path)
    return paths, {"count": count, "bytes_each": SMALL_FILE_BYTES, "zst_bytes_total": zst_bytes}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(IO_BYTES):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def decompress_publish(src: Path, final: Path) -> int:
    """python-zstandard streaming decompression of `src` into `final` through a hidden
    temp name, fsync, rename, fsync the directory: the peer's end work (and `limit_py`).
    Returns the bytes written."""
    tmp = final.with_name(f".{final.name}.tmp")
    decompressor = zstandard.ZstdDecompressor()
    with src.open("rb") as fin, tmp.open("wb") as fout:
        _, written = decompressor.copy_stream(fin, fout, read_size=IO_BYTES, write_size=IO_BYTES)
        fout.flush()
        os.fsync(fout.fileno())
    os.replace(tmp, final)
    fsync_path(final.parent, directory=True)
    return int(written)
