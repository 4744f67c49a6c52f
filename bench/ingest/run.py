"""Benchmark: the ingest server against this machine's limit and an aiohttp-tus peer.

A standalone script (never imported by pytest). It makes a log-like and a random input of
the same size, compresses each once with Zstandard (level 3), and then, round by round,
publishes the decompressed file durably (fsync on) in four ways:

- `limit`: `zstd -d -f -o OUT IN` and an fsync of OUT, this machine's ceiling for the work;
- `limit_py`: the same with python-zstandard streaming (what a Python server can reach);
- `ours`: `postoffice ingest serve` (defaults: streaming assembly, fsync on), uploaded by
  IngestClient, timed from the start of `send()` until the PUBLISHED event is verified;
- `ours_via_part`: the same server started with `--via-part`;
- `peer`: an aiohttp-tus server whose upload-done hook decompresses the upload into its
  final name and fsyncs it, driven by the tuspy client.

Then 4 KiB files (compressed the same way), ours against the peer, in files/s. Progress
goes to stderr; one JSON object goes to stdout. See bench/ingest/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import datetime
import functools
import hashlib
import importlib
import importlib.util
import json
import linecache
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Final, Generic, TypeVar, final

import zstandard

#: Exit status when a needed program or module is missing (the usage-error convention).
EXIT_MISSING_TOOL: Final = 2
#: Exit status when a server or an upload misbehaves during the run.
EXIT_RUN_FAILED: Final = 1

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

LOOPBACK: Final = "127.0.0.1"
STARTUP_TIMEOUT_S: Final = 20.0
STOP_TIMEOUT_S: Final = 30.0
#: Bounds one upload (a reply, or the wait for the publish) and one zstd run.
RUN_TIMEOUT_S: Final = 900.0
#: aiohttp refuses request bodies over 1 MiB by default; a tus PATCH carries a chunk.
TUS_MAX_BODY: Final = CHUNK_BYTES + MIB
TUS_PATH: Final = "/uploads"
PEER_SUBCOMMAND: Final = "_tus-server"

LARGE_KINDS: Final = ("log", "random")
CONTENDERS: Final = ("limit", "limit_py", "ours", "ours_via_part", "peer")

INSTALL_HINT: Final = (
    "install the benchmark-only peers into the venv with: "
    ".venv/bin/pip install aiohttp aiohttp-tus tuspy"
)


class BenchError(Exception):
    """A server, a tool or an upload did not behave; the message says how."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


# --- inputs -------------------------------------------------------------------------------


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
    return Input(
        kind=kind,
        plain=plain,
        zst=zst,
        size=size,
        zst_size=zst_size,
        sha256=sha,
        make_s=round(made - began, 2),
        compress_s=round(done - made, 2),
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


# --- processes and measurements -----------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a whole process (all its threads), in seconds."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError as exc:
        raise BenchError(f"cannot read /proc/{pid}/stat: {exc}") from exc
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU time of this script (all threads) and of its reaped children (zstd)."""
    mine = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return mine.ru_utime + mine.ru_stime + kids.ru_utime + kids.ru_stime


def free_port_block(count: int) -> int:
    """The first of `count` consecutive loopback ports that were all free a moment ago."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 60_000 - count)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.bind((LOOPBACK, port))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return base
    raise BenchError(f"found no {count} consecutive free loopback ports")


def accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1.0):
            return True
    except OSError:
        return False


@final
@dataclasses.dataclass(slots=True, kw_only=True)
class Server:
    """A server subprocess under test."""

    name: str
    proc: subprocess.Popen[bytes]
    pid: int
    port: int  # ours: sys-base; peer: its HTTP port
    data_dir: Path
    files_dir: Path
    log_path: Path

    def __repr__(self) -> str:
        state = "running" if self.proc.poll() is None else f"exited({self.proc.returncode})"
        return f"<Server {self.name} pid={self.pid} {LOOPBACK}:{self.port} {state}>"

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(
                f"{self.name} exited with status {self.proc.returncode}; "
                f"log tail:\n{_tail(self.log_path)}"
            )


def _wait(server: Server, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        server.check_alive()
        if ready():
            return
        time.sleep(0.05)
    raise BenchError(
        f"{server.name} was not ready within {STARTUP_TIMEOUT_S} s; "
        f"log tail:\n{_tail(server.log_path)}"
    )


def start_ours(work: Path, postoffice: str, name: str, *, via_part: bool) -> Server:
    """`postoffice ingest serve` with default settings (fsync on) on free loopback ports."""
    data_dir = work / "servers" / name
    data_dir.mkdir(parents=True)
    sys_base = free_port_block(4)
    ready_file = data_dir / "ready.json"
    log_path = work / "servers" / f"{name}.log"
    argv = [
        postoffice,
        "ingest",
        "serve",
        "--host",
        LOOPBACK,
        "--sys-base",
        str(sys_base),
        "--data-base",
        "0",  # free ports; the client finds them with GET /info
        "--data-dir",
        str(data_dir),
        "--ready-file",
        str(ready_file),
    ]
    if via_part:
        argv.append("--via-part")
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, cwd=data_dir)
    server = Server(
        name=name,
        proc=proc,
        pid=proc.pid,
        port=sys_base,
        data_dir=data_dir,
        files_dir=data_dir / "files",
        log_path=log_path,
    )

    def ready() -> bool:
        if not ready_file.exists():
            return False
        with contextlib.suppress(ValueError, KeyError, TypeError, OSError):
            server.pid = int(json.loads(ready_file.read_text())["pid"])
            return True
        return False

    _wait(server, ready)
    return server


def start_peer(work: Path) -> Server:
    """This script's `_tus-server` mode (aiohttp + aiohttp-tus) on a free loopback port."""
    data_dir = work / "servers" / "peer"
    files_dir = data_dir / "files"
    files_dir.mkdir(parents=True)
    port = free_port_block(1)
    log_path = work / "servers" / "peer.log"
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        PEER_SUBCOMMAND,
        "--port",
        str(port),
        "--upload-dir",
        str(data_dir),
    ]
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, cwd=data_dir)
    server = Server(
        name="peer",
        proc=proc,
        pid=proc.pid,
        port=port,
        data_dir=data_dir,
        files_dir=files_dir,
        log_path=log_path,
    )
    _wait(server, lambda: accepts(port))
    return server


def stop(server: Server) -> None:
    """SIGTERM the server by pid, then SIGKILL it if it lingers."""
    if server.proc.poll() is not None:
        return
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _say(f"{server.name} ignored SIGTERM for {STOP_TIMEOUT_S} s; sending SIGKILL")
        server.proc.kill()
        server.proc.wait()


# --- the peer server (runs in its own process) --------------------------------------------


def tus_server_main(argv: Sequence[str]) -> int:
    """aiohttp-tus on `--port`, storing uploads in `--upload-dir`; on completion the upload
    is decompressed into `<upload-dir>/files/<name without .zst>` and fsynced."""
    parser = argparse.ArgumentParser(prog=f"run.py {PEER_SUBCOMMAND}")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upload-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    from aiohttp import web
    from aiohttp_tus import setup_tus
    from aiohttp_tus.data import Resource

    upload_dir: Path = args.upload_dir
    files_dir = upload_dir / "files"
    files_dir.mkdir(parents=True, exist_ok=True)

    def publish(file_path: Path) -> None:
        name = file_path.name.removesuffix(".zst")
        decompress_publish(file_path, files_dir / name)
        file_path.unlink()

    async def on_upload_done(request: web.Request, resource: Resource, file_path: Path) -> None:
        # The tus reply to the last PATCH waits for this, so the client's upload() returns
        # once the decompressed file is durable.
        await asyncio.to_thread(publish, file_path)

    app = web.Application(client_max_size=TUS_MAX_BODY)
    setup_tus(app, upload_path=upload_dir, upload_url=TUS_PATH, on_upload_done=on_upload_done)
    web.run_app(app, host=LOOPBACK, port=args.port, print=None, access_log=None)
    return 0


# --- contenders ---------------------------------------------------------------------------


@final
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """One timed publish of one workload by one contender."""

    workload: str  # "log", "random" or "small"
    contender: str
    round: int
    seconds: float
    output_bytes: int
    files: int
    mb_per_s: float
    files_per_s: float
    server_cpu_s: float | None  # the server process, all threads
    bench_cpu_s: float  # this script (the clients) and zstd
    other_cpu_s: float  # machine busy time minus both: noise from anything else
    assembly_s: float | None  # ours: the server's own assembly time (from its log)


def machine_busy_seconds() -> float:
    """CPU time all CPUs spent busy since boot (from /proc/stat), in seconds."""
    try:
        with open("/proc/stat") as stat:
            first = stat.readline().split()
    except OSError as exc:
        raise BenchError(f"cannot read /proc/stat: {exc}") from exc
    ticks = [int(field) for field in first[1:9]]  # all but idle (3) and iowait (4)
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


T = TypeVar("T")


@final
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Measured(Generic[T]):
    """What `measured` saw around one body."""

    value: T
    seconds: float
    server_cpu_s: float | None
    bench_cpu_s: float
    other_cpu_s: float


def measured(server: Server | None, body: Callable[[], T]) -> Measured[T]:
    """Run `body` after an os.sync() (so earlier writes are not flushed inside the timed
    part), with wall time and the CPU time of the server, this script and the rest."""
    if server is not None:
        server.check_alive()
    os.sync()
    server_cpu0 = cpu_seconds(server.pid) if server is not None else 0.0
    cpu0 = own_cpu_seconds()
    busy0 = machine_busy_seconds()
    began = time.monotonic()
    value = body()
    seconds = time.monotonic() - began
    busy = machine_busy_seconds() - busy0
    cpu = own_cpu_seconds() - cpu0
    server_cpu = cpu_seconds(server.pid) - server_cpu0 if server is not None else None
    if server is not None:
        server.check_alive()
    return Measured(
        value=value,
        seconds=seconds,
        server_cpu_s=server_cpu,
        bench_cpu_s=cpu,
        other_cpu_s=max(0.0, busy - cpu - (server_cpu or 0.0)),
    )


def _make_run(
    workload: str,
    contender: str,
    round_no: int,
    seen: Measured[T],
    *,
    seconds: float,
    output_bytes: int,
    files: int,
    assembly_s: float | None = None,
) -> Run:
    return Run(
        workload=workload,
        contender=contender,
        round=round_no,
        seconds=round(seconds, 3),
        output_bytes=output_bytes,
        files=files,
        mb_per_s=round(output_bytes / MB / seconds, 1),
        files_per_s=round(files / seconds, 1),
        server_cpu_s=None if seen.server_cpu_s is None else round(seen.server_cpu_s, 2),
        bench_cpu_s=round(seen.bench_cpu_s, 2),
        other_cpu_s=round(seen.other_cpu_s, 2),
        assembly_s=assembly_s,
    )


def _check_output(path: Path, expected: Input) -> None:
    """Raise BenchError unless `path` holds the input's original bytes."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BenchError(f"no output at {path}: {exc}") from exc
    if size != expected.size or sha256_file(path) != expected.sha256:
        raise BenchError(f"{path} differs from {expected.plain} ({size} bytes)")


def _zstd_decompress(zstd_cli: str, src: Path, out: Path) -> None:
    """`zstd -d -f -o OUT IN`, then fsync OUT and its directory (as the servers do)."""
    done = subprocess.run(
        [zstd_cli, "-q", "-d", "-f", "-o", str(out), str(src)],
        capture_output=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"zstd -d exited {done.returncode}: {done.stderr.decode()[-300:]}")
    fsync_path(out)
    fsync_path(out.parent, directory=True)


def run_limit(zstd_cli: str, work: Path, item: Input, round_no: int) -> Run:
    """This machine's limit: the zstd program decompresses to the same disk, then fsync."""
    out = work / "limit" / item.plain.name
    out.parent.mkdir(exist_ok=True)
    seen = measured(None, lambda: _zstd_decompress(zstd_cli, item.zst, out))
    _check_output(out, item)
    out.unlink()
    return _make_run(
        item.kind, "limit", round_no, seen, seconds=seen.seconds, output_bytes=item.size, files=1
    )


def run_limit_py(work: Path, item: Input, round_no: int) -> Run:
    """python-zstandard streaming decompression, fsync, rename: the peer's end work alone."""
    out = work / "limit_py" / item.plain.name
    out.parent.mkdir(exist_ok=True)
    seen = measured(None, lambda: decompress_publish(item.zst, out))
    _check_output(out, item)
    out.unlink()
    return _make_run(
        item.kind, "limit_py", round_no, seen, seconds=seen.seconds, output_bytes=item.size, files=1
    )


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def _run_async(coro: Coroutine[object, object, T]) -> T:
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        return runner.run(coro)


async def _ours_send(server: Server, path: Path, name: str, work: Path) -> tuple[float, int]:
    """One send() through a fresh client; its seconds (from the start of send() until the
    PUBLISHED event is checked) and the published size."""
    from postoffice.ingest.client import IngestClient

    async with IngestClient(
        LOOPBACK,
        server.port,
        chunk_size=CHUNK_BYTES,
        parallel=PARALLEL,
        timeout_s=RUN_TIMEOUT_S,
        work_dir=work / "client",
    ) as client:
        began = time.monotonic()
        result = await client.send(path, name=name)
        return time.monotonic() - began, result.size


_PUBLISHED_LOG: Final = re.compile(r"published file_id=\S+ name=(\S+) bytes=\d+ seconds=([\d.]+)")


def assembly_seconds(server: Server, name: str) -> float | None:
    """The server's own assembly time for `name`, from its `published ...` log line."""
    try:
        text = server.log_path.read_text(errors="replace")
    except OSError:
        return None
    found = [float(m[2]) for m in _PUBLISHED_LOG.finditer(text) if m[1] == name]
    return found[-1] if found else None


def run_ours(server: Server, work: Path, item: Input, round_no: int) -> Run:
    """Upload the .zst with IngestClient; time send() until PUBLISHED is verified."""
    name = f"{item.kind}-r{round_no}.out"
    seen = measured(server, lambda: _run_async(_ours_send(server, item.zst, name, work)))
    seconds, size = seen.value
    if size != item.size:
        raise BenchError(f"{server.name} published {size} bytes, expected {item.size}")
    out = server.files_dir / name
    _check_output(out, item)
    out.unlink()
    return _make_run(
        item.kind,
        server.name,
        round_no,
        seen,
        seconds=seconds,
        output_bytes=item.size,
        files=1,
        assembly_s=assembly_seconds(server, name),
    )


def _tus_upload(url: str, path: Path, upload_name: str) -> None:
    from tusclient.client import TusClient

    uploader = TusClient(url).uploader(
        file_path=str(path), chunk_size=CHUNK_BYTES, metadata={"filename": upload_name}
    )
    uploader.upload()


def run_peer(server: Server, work: Path, item: Input, round_no: int) -> Run:
    """Upload the .zst with tuspy; time until the last PATCH is answered (the server
    answers it once the decompressed file is durable)."""
    name = f"{item.kind}-r{round_no}.out"
    url = f"http://{LOOPBACK}:{server.port}{TUS_PATH}"
    seen = measured(server, lambda: _tus_upload(url, item.zst, name + ".zst"))
    out = server.files_dir / name
    _check_output(out, item)
    out.unlink()
    return _make_run(
        item.kind, "peer", round_no, seen, seconds=seen.seconds, output_bytes=item.size, files=1
    )


def _small_name(round_no: int, path: Path) -> str:
    return f"r{round_no}-{path.name.removesuffix('.zst')}"


async def _ours_send_many(server: Server, paths: Sequence[Path], round_no: int) -> float:
    """All files through one client, SMALL_CONCURRENCY sends at a time; their seconds."""
    from postoffice.ingest.client import IngestClient

    async with IngestClient(
        LOOPBACK, server.port, chunk_size=CHUNK_BYTES, parallel=PARALLEL, timeout_s=RUN_TIMEOUT_S
    ) as client:
        began = time.monotonic()
        for start in range(0, len(paths), SMALL_CONCURRENCY):
            batch = paths[start : start + SMALL_CONCURRENCY]
            await asyncio.gather(*(client.send(p, name=_small_name(round_no, p)) for p in batch))
        return time.monotonic() - began


def _check_small(files_dir: Path, paths: Sequence[Path], round_no: int) -> None:
    """Every output is there with 4 KiB, and every 97th has the right bytes.

    The outputs stay until the work dir goes at the end (each round has names of its
    own): deleting 10,000 files just before the next run made that run's file creations
    cost about 4 times the kernel time, for whichever server ran next (ext4 without a
    journal steps over recently deleted inodes one by one when it allocates one).
    """
    for path in paths:
        out = files_dir / _small_name(round_no, path)
        try:
            size = out.stat().st_size
        except OSError as exc:
            raise BenchError(f"no output at {out}: {exc}") from exc
        if size != SMALL_FILE_BYTES:
            raise BenchError(f"{out} has {size} bytes, expected {SMALL_FILE_BYTES}")
    decompressor = zstandard.ZstdDecompressor()
    for path in paths[::97]:
        out = files_dir / _small_name(round_no, path)
        if out.read_bytes() != decompressor.decompress(path.read_bytes()):
            raise BenchError(f"{out} differs from {path} decompressed")


def run_ours_small(server: Server, paths: Sequence[Path], round_no: int) -> Run:
    seen = measured(server, lambda: _run_async(_ours_send_many(server, paths, round_no)))
    _check_small(server.files_dir, paths, round_no)
    count = len(paths)
    return _make_run(
        "small",
        "ours",
        round_no,
        seen,
        seconds=seen.value,
        output_bytes=count * SMALL_FILE_BYTES,
        files=count,
    )


def _tus_upload_many(url: str, paths: Sequence[Path], round_no: int) -> None:
    with concurrent.futures.ThreadPoolExecutor(SMALL_CONCURRENCY) as pool:
        futures = [
            pool.submit(_tus_upload, url, p, _small_name(round_no, p) + ".zst") for p in paths
        ]
        for future in futures:
            future.result()


def run_peer_small(server: Server, paths: Sequence[Path], round_no: int) -> Run:
    url = f"http://{LOOPBACK}:{server.port}{TUS_PATH}"
    seen = measured(server, lambda: _tus_upload_many(url, paths, round_no))
    _check_small(server.files_dir, paths, round_no)
    count = len(paths)
    return _make_run(
        "small",
        "peer",
        round_no,
        seen,
        seconds=seen.seconds,
        output_bytes=count * SMALL_FILE_BYTES,
        files=count,
    )


def measure_prepare(item: Input) -> float | None:
    """Seconds of IngestClient's own first step for this .zst (it hashes the file, for its
    file id and to check the server's PUBLISHED event): part of every `ours` time.
    None if this postoffice has no `prepare` where we look."""
    for module_name in ("postoffice.ingest.payload", "postoffice.ingest.client"):
        try:
            prepare = vars(importlib.import_module(module_name))["prepare"]
        except (ImportError, KeyError):
            continue
        began = time.monotonic()
        prepare(item.zst, chunk_size=CHUNK_BYTES, name="prepare-probe")
        return round(time.monotonic() - began, 3)
    return None


# --- profiling (optional, untimed) --------------------------------------------------------


def _py_spy(pid: int, out: Path, seconds: int) -> subprocess.Popen[bytes]:
    beside = Path(sys.executable).parent / "py-spy"
    program = str(beside) if beside.exists() else shutil.which("py-spy")
    if program is None:
        raise BenchError("--profile-dir needs py-spy (.venv/bin/pip install py-spy)")
    argv = [program, "record", "--format", "raw", "-d", str(seconds), "-p", str(pid)]
    argv += ["-o", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


#: Leaf source lines where an idle thread waits for work (a queue get, select): not work.
_IDLE_CALLS: Final = re.compile(r"\.get\(|\.wait\(|select\(")
#: Leaf source lines that take a lock: a thread there is stalled behind another one.
_LOCK_CALLS: Final = re.compile(r"\bwith\b.*lock\b|\.acquire\(")
#: Frames every stack shares (thread and event-loop plumbing, the CLI): left out of the
#: inclusive ranking, where they would only say "100 %".
_PLUMBING_FILES: Final = frozenset(
    {
        "threading.py",
        "thread.py",
        "runners.py",
        "__init__.py",
        "core.py",
        "cli.py",
        "launch.py",
        "runtime.py",
        "postoffice",
        "run.py",
    }
)


def _source_line(where: str) -> str:
    """The source text at `path/to/module.py:123` as py-spy prints it (the path relative
    to a sys.path entry), or "" when it cannot be found."""
    file_name, _, line_text = where.rpartition(":")
    if not line_text.isdigit():
        return ""
    for root in (Path(__file__).resolve().parents[2] / "src", *map(Path, sys.path)):
        candidate = root / file_name
        if candidate.is_file():
            return linecache.getline(str(candidate), int(line_text))
    return ""


def summarise_profile(path: Path, top: int = 12) -> dict[str, object]:
    """Top functions of a py-spy raw (collapsed) profile.

    `top_own_pct`: the innermost frame (function and line; C calls count for the line that
    makes them) as a share of the busy samples; a line that takes a lock is tagged
    `[lock]` (threads stalled behind another one; `lock_pct` sums them). Samples whose
    innermost line is an idle wait (queue get, select) are `waiting_pct` of all samples and
    left out of the busy ones. `top_inclusive_pct`: functions anywhere on the stack, per
    busy sample, without the thread and CLI plumbing.
    """
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = waiting = locked = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return {"error": str(exc)}
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        name, _, where = frames[-1].partition(" (")
        where = where.rstrip(")")
        source = _source_line(where)
        if _IDLE_CALLS.search(source):
            waiting += count
            continue
        leaf = f"{name} ({Path(where).name})"
        if _LOCK_CALLS.search(source):
            leaf += " [lock]"
            locked += count
        own[leaf] = own.get(leaf, 0) + count
        seen: set[str] = set()
        for frame in frames:
            function, _, place = frame.partition(" (")
            file_name = Path(place.rsplit(":", 1)[0]).name
            if file_name not in _PLUMBING_FILES and function != "<module>":
                seen.add(f"{function} ({file_name})")
        for function in seen:
            inclusive[function] = inclusive.get(function, 0) + count
    busy = total - waiting

    def ranked(table: dict[str, int]) -> list[list[object]]:
        best = sorted(table.items(), key=lambda kv: -kv[1])[:top]
        return [[name, round(100 * n / busy, 1)] for name, n in best] if busy else []

    return {
        "samples": total,
        "waiting_pct": round(100 * waiting / total, 1) if total else None,
        "lock_pct": round(100 * locked / busy, 1) if busy else None,
        "top_own_pct": ranked(own),
        "top_inclusive_pct": ranked(inclusive),
    }


def profile_ours(
    servers: dict[str, Server],
    work: Path,
    large: Sequence[Input],
    small_paths: Sequence[Path],
    out_dir: Path,
    seconds: int,
) -> dict[str, object]:
    """One extra, untimed upload per workload with py-spy on our server and on this
    script (the client); the raw profiles go to out_dir, their top functions to the JSON."""
    out_dir.mkdir(parents=True, exist_ok=True)
    server = servers["ours"]
    found: dict[str, object] = {}
    jobs: list[tuple[str, Callable[[], Run]]] = [
        (item.kind, functools.partial(run_ours, server, work, item, 0)) for item in large
    ]
    if small_paths:
        jobs.append(("small", functools.partial(run_ours_small, server, small_paths, 0)))
    for workload, job in jobs:
        spies = {
            "server": _py_spy(server.pid, out_dir / f"ingest-{workload}-server.txt", seconds),
            "client": _py_spy(os.getpid(), out_dir / f"ingest-{workload}-client.txt", seconds),
        }
        time.sleep(1.0)  # py-spy attaches
        job()
        for side, spy in spies.items():
            try:
                _, err = spy.communicate(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                spy.kill()
                _, err = spy.communicate()
            path = out_dir / f"ingest-{workload}-{side}.txt"
            summary = summarise_profile(path)
            if spy.returncode != 0:
                summary["py_spy_error"] = err.decode(errors="replace")[-300:]
            found[f"{workload}/{side}"] = summary
        _say(f"profiled {workload}: {out_dir}")
    return found


# --- summary ------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _paired_ratio(
    runs: Sequence[Run], workload: str, top: str, bottom: str, field: str
) -> float | None:
    """Median over rounds of top/bottom, each ratio from runs of the same round."""
    by_round: dict[int, dict[str, Run]] = {}
    for run in runs:
        if run.workload == workload:
            by_round.setdefault(run.round, {})[run.contender] = run
    ratios = [
        getattr(pair[top], field) / getattr(pair[bottom], field)
        for pair in by_round.values()
        if top in pair and bottom in pair
    ]
    return _median(ratios)


def summarise(runs: Sequence[Run], workloads: Sequence[str]) -> dict[str, object]:
    """Medians per workload and contender, and the paired ratios."""
    summary: dict[str, object] = {}
    for workload in workloads:
        field = "files_per_s" if workload == "small" else "mb_per_s"
        mine = [run for run in runs if run.workload == workload]
        contenders: dict[str, object] = {}
        for contender in CONTENDERS:
            picked = [run for run in mine if run.contender == contender]
            if not picked:
                continue
            contenders[contender] = {
                field: _median([getattr(run, field) for run in picked]),
                "seconds": _median([run.seconds for run in picked]),
                "server_cpu_s": _median(
                    [run.server_cpu_s for run in picked if run.server_cpu_s is not None]
                ),
                "bench_cpu_s": _median([run.bench_cpu_s for run in picked]),
                "assembly_s": _median(
                    [run.assembly_s for run in picked if run.assembly_s is not None]
                ),
                "max_other_cpu_s": max(run.other_cpu_s for run in picked),
                "rounds": len(picked),
            }
        ratios = {
            "ours_over_limit": _paired_ratio(mine, workload, "ours", "limit", field),
            "ours_over_limit_py": _paired_ratio(mine, workload, "ours", "limit_py", field),
            "ours_over_peer": _paired_ratio(mine, workload, "ours", "peer", field),
            "ours_via_part_over_ours": _paired_ratio(
                mine, workload, "ours_via_part", "ours", field
            ),
            "ours_via_part_over_limit": _paired_ratio(
                mine, workload, "ours_via_part", "limit", field
            ),
        }
        summary[workload] = {
            "unit": field,
            "contenders": contenders,
            "ratios": {k: v for k, v in ratios.items() if v is not None},
        }
    return summary


def goals(summary: dict[str, object]) -> list[dict[str, object]]:
    """The issue's goals, met or not, from the paired ratios."""
    rows: list[dict[str, object]] = []

    def ratio(workload: str, key: str) -> float | None:
        entry = summary.get(workload)
        if not isinstance(entry, dict):
            return None
        value = entry["ratios"].get(key)
        return float(value) if value is not None else None

    for workload in (*LARGE_KINDS, "small"):
        targets = [("ours_over_peer", 4.0)]
        if workload != "small":
            targets.insert(0, ("ours_over_limit", 0.8))
        for key, target in targets:
            value = ratio(workload, key)
            rows.append(
                {
                    "workload": workload,
                    "goal": f"{key} >= {target}",
                    "measured": value,
                    "met": None if value is None else value >= target,
                }
            )
    return rows


# --- machine and main ---------------------------------------------------------------------


def _command_output(argv: Sequence[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.decode(errors="replace").strip()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "missing"


def machine_facts(zstd_cli: str | None, work: Path) -> dict[str, object]:
    """What the figures depend on: cores, memory, CPU, disk, versions, our commit."""
    repo = Path(__file__).resolve().parents[2]
    commit = _command_output(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    changes = _command_output(["git", "-C", str(repo), "status", "--porcelain", "--", "src"])
    if commit and changes:
        commit += "+dirty"
    mount = _command_output(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", str(work)])
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "work_dir_fs": mount or "unknown",
        "zstd_cli": (_command_output([zstd_cli, "-V"]) if zstd_cli else None) or "missing",
        "versions": {
            name: _version(name)
            for name in (
                "postoffice",
                "zstandard",
                "uvloop",
                "aiohttp",
                "aiohttp-tus",
                "tuspy",
                "requests",
            )
        },
        "git_commit": commit or "unknown",
        "loadavg_at_start": os.getloadavg(),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options; see bench/ingest/README.md."""
    parser = argparse.ArgumentParser(
        description="Compare `postoffice ingest serve` with zstd -d + fsync and with an "
        "aiohttp-tus server driven by tuspy. Progress goes to stderr, one JSON object to "
        "stdout.",
    )
    parser.add_argument(
        "--size-mib",
        type=int,
        default=DEFAULT_SIZE_MIB,
        help="size of each large input, MiB (default %(default)s)",
    )
    parser.add_argument(
        "--peer-size-mib",
        type=int,
        default=None,
        help="a smaller size for the peer's large uploads, if it is too slow "
        "(default: --size-mib); the peer then gets inputs of its own",
    )
    parser.add_argument(
        "--small-count",
        type=int,
        default=DEFAULT_SMALL_COUNT,
        help="number of 4 KiB files; 0 skips them (default %(default)s)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        help="rounds; each runs every contender once per workload (default %(default)s)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where inputs, server data and outputs go (default: a new temp dir under "
        "/tmp, deleted at the end); a given dir is kept, only its contents made here go",
    )
    parser.add_argument(
        "--profile-dir",
        type=Path,
        default=None,
        help="after the rounds, upload each workload once more to our server (untimed) "
        "with py-spy on the server and on this script; raw profiles and the server logs "
        "go here, the top functions into the JSON",
    )
    parser.add_argument(
        "--profile-seconds",
        type=int,
        default=10,
        help="py-spy record -d for --profile-dir (default %(default)s)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=[*LARGE_KINDS, "small"],
        help="run only this workload (repeatable; default: all)",
    )
    args = parser.parse_args(argv)
    if args.size_mib < 1 or args.rounds < 1 or args.small_count < 0:
        parser.error("--size-mib and --rounds must be at least 1, --small-count at least 0")
    if args.peer_size_mib is not None and not 1 <= args.peer_size_mib <= args.size_mib:
        parser.error("--peer-size-mib must be between 1 and --size-mib")
    return args


def find_tools() -> tuple[str | None, str]:
    """zstd (None if missing: the limit is then python-zstandard only) and postoffice;
    exits 2 when postoffice or the peer's modules are missing."""
    beside = Path(sys.executable).parent / "postoffice"
    postoffice = str(beside) if beside.exists() else shutil.which("postoffice")
    if postoffice is None:
        _say("error: the postoffice command was not found; run `make setup` first")
        sys.exit(EXIT_MISSING_TOOL)
    missing = [
        module for module in ("aiohttp", "aiohttp_tus", "tusclient") if not _importable(module)
    ]
    if missing:
        _say(f"error: missing modules {', '.join(missing)}; {INSTALL_HINT}")
        sys.exit(EXIT_MISSING_TOOL)
    zstd_cli = shutil.which("zstd")
    if zstd_cli is None:
        _say("warning: no zstd program (apt-get install zstd); `limit` is skipped")
    return zstd_cli, postoffice


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def human_line(run: Run, rounds: int) -> str:
    figure = (
        f"{run.files_per_s:>9,.0f} files/s"
        if run.workload == "small"
        else f"{run.mb_per_s:>8,.1f} MB/s"
    )
    server = "" if run.server_cpu_s is None else f", server cpu {run.server_cpu_s:.1f} s"
    assembly = "" if run.assembly_s is None else f", assembly {run.assembly_s:.2f} s"
    return (
        f"[{run.workload:<6} round {run.round}/{rounds}] {run.contender:<13} {figure} "
        f"({run.seconds:.2f} s{assembly}; bench cpu {run.bench_cpu_s:.1f} s{server}, "
        f"other {run.other_cpu_s:.1f} s)"
    )


def run_round(
    round_no: int,
    work: Path,
    zstd_cli: str | None,
    servers: dict[str, Server],
    large: Sequence[Input],
    peer_inputs: dict[str, Input],
    small_paths: Sequence[Path],
) -> Iterator[Run]:
    """Every contender once per workload, in the order of parameters.order."""
    for item in large:
        if zstd_cli is not None:
            yield run_limit(zstd_cli, work, item, round_no)
        yield run_limit_py(work, item, round_no)
        yield run_ours(servers["ours"], work, item, round_no)
        yield run_ours(servers["ours_via_part"], work, item, round_no)
        yield run_peer(servers["peer"], work, peer_inputs.get(item.kind, item), round_no)
    if small_paths:
        yield run_ours_small(servers["ours"], small_paths, round_no)
        yield run_peer_small(servers["peer"], small_paths, round_no)


@contextlib.contextmanager
def work_directory(given: Path | None) -> Iterator[Path]:
    """The work dir: a fresh temp dir (removed at the end) or a new subdir of `given`."""
    if given is None:
        with tempfile.TemporaryDirectory(prefix="bench-ingest-", dir="/tmp") as name:
            yield Path(name)
        return
    given.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir=given))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def started_servers(
    work: Path, postoffice: str, keep_logs: Path | None
) -> Iterator[dict[str, Server]]:
    """Ours (streaming), ours (--via-part) and the peer, stopped by pid at the end; their
    logs are copied to `keep_logs` if given."""
    started: dict[str, Server] = {}
    try:
        started["ours"] = start_ours(work, postoffice, "ours", via_part=False)
        started["ours_via_part"] = start_ours(work, postoffice, "ours_via_part", via_part=True)
        started["peer"] = start_peer(work)
        yield started
    finally:
        for server in reversed(list(started.values())):
            stop(server)
        if keep_logs is not None:
            keep_logs.mkdir(parents=True, exist_ok=True)
            for server in started.values():
                with contextlib.suppress(OSError):
                    shutil.copy(server.log_path, keep_logs / server.log_path.name)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print progress to stderr and one JSON object to stdout."""
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == [PEER_SUBCOMMAND]:
        return tus_server_main(raw[1:])
    args = parse_args(raw)
    zstd_cli, postoffice = find_tools()
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    workloads = [w for w in (*LARGE_KINDS, "small") if args.only is None or w in args.only]
    if args.small_count == 0 and "small" in workloads:
        workloads.remove("small")
    # Imported now, so that the first timed run does not pay for it.
    importlib.import_module("postoffice.ingest.client")

    started_at = datetime.datetime.now(datetime.UTC)
    runs: list[Run] = []
    inputs: dict[str, object] = {}
    profiles: dict[str, object] = {}
    with work_directory(args.work_dir) as work:
        machine = machine_facts(zstd_cli, work)
        _say(f"work dir {work}")
        try:
            large: list[Input] = []
            peer_inputs: dict[str, Input] = {}
            for kind in (k for k in LARGE_KINDS if k in workloads):
                item = make_large_input(work, kind, args.size_mib * MIB)
                large.append(item)
                inputs[kind] = {**_describe(item), "ours_client_prepare_s": measure_prepare(item)}
                _say(f"input {kind}: {inputs[kind]}")
                if args.peer_size_mib is not None and args.peer_size_mib < args.size_mib:
                    small_item = make_large_input(work / "peer", kind, args.peer_size_mib * MIB)
                    peer_inputs[kind] = small_item
                    inputs[f"{kind}_peer"] = _describe(small_item)
            small_paths: list[Path] = []
            if "small" in workloads:
                small_paths, inputs["small"] = make_small_inputs(work, args.small_count)
                _say(f"input small: {inputs['small']}")
            os.sync()
            with started_servers(work, postoffice, args.profile_dir) as servers:
                _say("started " + ", ".join(repr(s) for s in servers.values()))
                for round_no in range(1, args.rounds + 1):
                    for run in run_round(
                        round_no, work, zstd_cli, servers, large, peer_inputs, small_paths
                    ):
                        runs.append(run)
                        _say(human_line(run, args.rounds))
                if args.profile_dir is not None:
                    profiles = profile_ours(
                        servers, work, large, small_paths, args.profile_dir, args.profile_seconds
                    )
        except BenchError as exc:
            _say(f"error: {exc}")
            return EXIT_RUN_FAILED
    summary = summarise(runs, workloads)
    result = {
        "benchmark": "ingest",
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round((datetime.datetime.now(datetime.UTC) - started_at).total_seconds(), 1),
        "parameters": {
            "size_mib": args.size_mib,
            "peer_size_mib": args.peer_size_mib or args.size_mib,
            "small_count": args.small_count,
            "rounds": args.rounds,
            "chunk_bytes": CHUNK_BYTES,
            "parallel": PARALLEL,
            "small_concurrency": SMALL_CONCURRENCY,
            "zstd_level": ZSTD_LEVEL,
            "order": "per round: for log then random, limit, limit_py, ours, ours_via_part, "
            "peer; then small files, ours then peer",
            "mb": "10^6 bytes of published (decompressed) output",
            "limit": "zstd -q -d -f -o OUT IN; fsync OUT and its directory",
            "limit_py": "python-zstandard copy_stream into a temp name; fsync; rename; "
            "fsync the directory",
            "ours": "postoffice ingest serve --sys-base B --data-base 0 --data-dir D "
            "(defaults: fsync on, streaming assembly); IngestClient(parallel=4, "
            "chunk_size=4 MiB).send(zst, name=...), timed until it returns",
            "ours_via_part": "the same with --via-part",
            "peer": "aiohttp + aiohttp_tus.setup_tus, upload-done hook decompresses with "
            "python-zstandard into files/<name>, fsync, rename, fsync dir; tuspy "
            "Uploader(chunk_size=4 MiB).upload(), timed until it returns",
            "small": "ours: one IngestClient, asyncio.gather of 32 sends at a time; peer: "
            "tuspy uploads in 32 threads; both send each file's .zst",
        },
        "machine": machine,
        "inputs": inputs,
        "results": summary,
        "goals": goals(summary),
        "profiles": profiles,
        "runs": [dataclasses.asdict(run) for run in runs],
    }
    print(json.dumps(result, indent=2))
    return 0


def _describe(item: Input) -> dict[str, object]:
    return {
        "bytes": item.size,
        "zst_bytes": item.zst_size,
        "ratio": round(item.size / item.zst_size, 2),
        "sha256": item.sha256,
        "make_s": item.make_s,
        "compress_s": item.compress_s,
    }


if __name__ == "__main__":
    sys.exit(main())
