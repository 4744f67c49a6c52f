"""One timed run of each contender: the zstd limits, ours, the peer, and the small files."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import importlib
import importlib.util
import os
import re
import subprocess
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Final, Generic, TypeVar, final

import zstandard
from benchkit import (
    LOOPBACK,
    BenchError,
    machine_busy_seconds,
)
from common import (
    CHUNK_BYTES,
    MB,
    PARALLEL,
    RUN_TIMEOUT_S,
    SMALL_CONCURRENCY,
    SMALL_FILE_BYTES,
    TUS_PATH,
)
from disk import DiskCounters, disk_of, read_counters
from inputs import Input, decompress_publish, fsync_path, sha256_file
from servers import Server, cpu_seconds, own_cpu_seconds


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
    # The work dir's disk during the run (None: not a block device): bytes written by
    # anyone, time busy, cache flushes.
    disk_written_mb: float | None = None
    disk_busy_s: float | None = None
    disk_flushes: int | None = None
    #: The machine's 1-minute load average when the run started (2 cores shared).
    load_avg_1m: float | None = None


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
    disk: DiskCounters | None  # the work dir's disk counters' growth during the body
    load_avg_1m: float


#: The work dir's disk (set once by watch_disk): measured() reads its counters.
_watched_disk: list[str | None] = [None]


def watch_disk(work: Path) -> str | None:
    """Make measured() record the counters of the disk holding `work`; its name, or None
    when `work` is on no block device."""
    _watched_disk[0] = disk_of(work)
    return _watched_disk[0]


def measured(server: Server | None, body: Callable[[], T]) -> Measured[T]:
    """Run `body` after an os.sync() (so earlier writes are not flushed inside the timed
    part), with wall time, the CPU time of the server, this script and the rest, and the
    work dir's disk counters."""
    if server is not None:
        server.check_alive()
    os.sync()
    load = os.getloadavg()[0]
    server_cpu0 = cpu_seconds(server.pid) if server is not None else 0.0
    cpu0 = own_cpu_seconds()
    busy0 = machine_busy_seconds()
    disk0 = read_counters(_watched_disk[0])
    began = time.monotonic()
    value = body()
    seconds = time.monotonic() - began
    disk1 = read_counters(_watched_disk[0])
    busy = machine_busy_seconds() - busy0
    cpu = own_cpu_seconds() - cpu0
    server_cpu = cpu_seconds(server.pid) - server_cpu0 if server is not None else None
    if server is not None:
        server.check_alive()
    disk = (
        None
        if disk0 is None or disk1 is None
        else DiskCounters(
            written_bytes=disk1.written_bytes - disk0.written_bytes,
            busy_ms=disk1.busy_ms - disk0.busy_ms,
            flushes=disk1.flushes - disk0.flushes,
        )
    )
    return Measured(
        value=value,
        seconds=seconds,
        server_cpu_s=server_cpu,
        bench_cpu_s=cpu,
        other_cpu_s=max(0.0, busy - cpu - (server_cpu or 0.0)),
        disk=disk,
        load_avg_1m=load,
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
        disk_written_mb=None if seen.disk is None else round(seen.disk.written_bytes / MB, 1),
        disk_busy_s=None if seen.disk is None else round(seen.disk.busy_ms / 1000, 2),
        disk_flushes=None if seen.disk is None else seen.disk.flushes,
        load_avg_1m=round(seen.load_avg_1m, 2),
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


def _dd_fsync(out: Path, size: int) -> None:
    """`dd if=/dev/zero of=OUT bs=4M count=N conv=fsync`, then fsync the directory."""
    done = subprocess.run(
        [
            "dd",
            "if=/dev/zero",
            f"of={out}",
            "bs=4M",
            f"count={-(-size // (4 * 1024 * 1024))}",
            "conv=fsync",
            "status=none",
        ],
        capture_output=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"dd exited {done.returncode}: {done.stderr.decode()[-300:]}")
    fsync_path(out.parent, directory=True)


def run_disk(work: Path, item: Input, round_no: int) -> Run:
    """The disk's floor for the output's bytes: dd of as many zeros, conv=fsync."""
    out = work / "disk" / item.plain.name
    out.parent.mkdir(exist_ok=True)
    seen = measured(None, lambda: _dd_fsync(out, item.size))
    out.unlink()
    return _make_run(
        item.kind, "disk", round_no, seen, seconds=seen.seconds, output_bytes=item.size, files=1
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


def run_async(coro: Coroutine[object, object, T]) -> T:
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


def run_ours(
    server: Server, work: Path, item: Input, round_no: int, *, framed: bool = False
) -> Run:
    """Upload the .zst (`framed`: the one of a frame per 4 MiB of content, which goes as
    FRAMED chunks) with IngestClient; time send() until PUBLISHED is verified."""
    name = f"{item.kind}-r{round_no}.out"
    source = item.zst_framed if framed and item.zst_framed is not None else item.zst
    seen = measured(server, lambda: run_async(_ours_send(server, source, name, work)))
    seconds, size = seen.value
    if size != item.size:
        raise BenchError(f"{server.name} published {size} bytes, expected {item.size}")
    out = server.files_dir / name
    _check_output(out, item)
    out.unlink()
    return _make_run(
        item.kind,
        "ours_framed" if framed else server.name,
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
    seen = measured(server, lambda: run_async(_ours_send_many(server, paths, round_no)))
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
    for module_name in ("postoffice.ingest.client.payload", "postoffice.ingest.client.sender"):
        try:
            prepare = vars(importlib.import_module(module_name))["prepare"]
        except (ImportError, KeyError):
            continue
        began = time.monotonic()
        prepare(item.zst, chunk_size=CHUNK_BYTES, name="prepare-probe")
        return round(time.monotonic() - began, 3)
    return None
