"""Benchmark: the ingest server against this machine's limit and an aiohttp-tus peer.

A standalone script (never imported by pytest). It makes a log-like and a random input of
the same size, compresses each once with Zstandard (level 3), and then, round by round,
publishes the decompressed file durably (fsync on) in four ways:

- `disk`: `dd if=/dev/zero of=OUT bs=4M count=N conv=fsync`, the disk's floor for writing
  the output's bytes;
- `limit`: `zstd -d -f -o OUT IN` and an fsync of OUT, this machine's ceiling for the work;
- `limit_py`: the same with python-zstandard streaming (what a Python server can reach);
- `ours_framed`: `postoffice ingest serve` (defaults, fsync on), uploaded by IngestClient
  from a .zst of one frame per 4 MiB of content (what the client makes of a plain file),
  which goes as FRAMED chunks decompressed in parallel, timed from the start of `send()`
  until the PUBLISHED event is verified;
- `ours`: the same server, sent the single-frame .zst (streaming assembly);
- `ours_via_part`: the same server started with `--via-part`;
- `peer`: an aiohttp-tus server whose upload-done hook decompresses the upload into its
  final name and fsyncs it, driven by the tuspy client.

Then 4 KiB files (compressed the same way), ours against the peer, in files/s. Progress
goes to stderr; one JSON object goes to stdout. See bench/ingest/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib
import importlib.util
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for benchkit

from benchkit import (
    EXIT_MISSING_TOOL,
    EXIT_RUN_FAILED,
    BenchError,
    raise_on_sigterm,
    say,
)
from common import (
    CHUNK_BYTES,
    DEFAULT_ROUNDS,
    DEFAULT_SIZE_MIB,
    DEFAULT_SMALL_COUNT,
    INSTALL_HINT,
    LARGE_KINDS,
    MIB,
    PARALLEL,
    PEER_SUBCOMMAND,
    SMALL_CONCURRENCY,
    ZSTD_LEVEL,
)
from contenders import (
    Run,
    measure_prepare,
    run_disk,
    run_limit,
    run_limit_py,
    run_ours,
    run_ours_small,
    run_peer,
    run_peer_small,
    watch_disk,
)
from inputs import Input, make_large_input, make_small_inputs
from profiles import profile_ours
from report import goals, machine_facts, summarise
from servers import Server, start_ours, start_peer, stop, tus_server_main


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
        say("error: the postoffice command was not found; run `make setup` first")
        sys.exit(EXIT_MISSING_TOOL)
    missing = [
        module for module in ("aiohttp", "aiohttp_tus", "tusclient") if not _importable(module)
    ]
    if missing:
        say(f"error: missing modules {', '.join(missing)}; {INSTALL_HINT}")
        sys.exit(EXIT_MISSING_TOOL)
    zstd_cli = shutil.which("zstd")
    if zstd_cli is None:
        say("warning: no zstd program (apt-get install zstd); `limit` is skipped")
    return zstd_cli, postoffice


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def human_line(run: Run, rounds: int) -> str:
    figure = (
        f"{run.files_per_s:>9,.0f} files/s"
        if run.workload == "small"
        else f"{run.mb_per_s:>8,.1f} MB/s"
    )
    server = "" if run.server_cpu_s is None else f", server cpu {run.server_cpu_s:.1f} s"
    assembly = "" if run.assembly_s is None else f", assembly {run.assembly_s:.2f} s"
    disk = (
        ""
        if run.disk_written_mb is None
        else f"; disk {run.disk_written_mb:,.0f} MB written, busy {run.disk_busy_s:.1f} s, "
        f"{run.disk_flushes} flushes"
    )
    return (
        f"[{run.workload:<6} round {run.round}/{rounds}] {run.contender:<13} {figure} "
        f"({run.seconds:.2f} s{assembly}; bench cpu {run.bench_cpu_s:.1f} s{server}, "
        f"other {run.other_cpu_s:.1f} s{disk}; load {run.load_avg_1m})"
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
        yield run_disk(work, item, round_no)
        if zstd_cli is not None:
            yield run_limit(zstd_cli, work, item, round_no)
        yield run_limit_py(work, item, round_no)
        yield run_ours(servers["ours"], work, item, round_no, framed=True)
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
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    workloads = [w for w in (*LARGE_KINDS, "small") if args.only is None or w in args.only]
    if args.small_count == 0 and "small" in workloads:
        workloads.remove("small")
    # Imported now, so that the first timed run does not pay for it.
    importlib.import_module("postoffice.ingest.client.sender")

    started_at = datetime.datetime.now(datetime.UTC)
    runs: list[Run] = []
    inputs: dict[str, object] = {}
    profiles: dict[str, object] = {}
    with work_directory(args.work_dir) as work:
        machine = machine_facts(zstd_cli, work)
        machine["work_dir_disk"] = watch_disk(work)
        say(f"work dir {work}")
        try:
            large: list[Input] = []
            peer_inputs: dict[str, Input] = {}
            for kind in (k for k in LARGE_KINDS if k in workloads):
                item = make_large_input(work, kind, args.size_mib * MIB)
                large.append(item)
                inputs[kind] = {**_describe(item), "ours_client_prepare_s": measure_prepare(item)}
                say(f"input {kind}: {inputs[kind]}")
                if args.peer_size_mib is not None and args.peer_size_mib < args.size_mib:
                    small_item = make_large_input(work / "peer", kind, args.peer_size_mib * MIB)
                    peer_inputs[kind] = small_item
                    inputs[f"{kind}_peer"] = _describe(small_item)
            small_paths: list[Path] = []
            if "small" in workloads:
                small_paths, inputs["small"] = make_small_inputs(work, args.small_count)
                say(f"input small: {inputs['small']}")
            os.sync()
            with started_servers(work, postoffice, args.profile_dir) as servers:
                say("started " + ", ".join(repr(s) for s in servers.values()))
                for round_no in range(1, args.rounds + 1):
                    for run in run_round(
                        round_no, work, zstd_cli, servers, large, peer_inputs, small_paths
                    ):
                        runs.append(run)
                        say(human_line(run, args.rounds))
                if args.profile_dir is not None:
                    profiles = profile_ours(
                        servers, work, large, small_paths, args.profile_dir, args.profile_seconds
                    )
        except BenchError as exc:
            say(f"error: {exc}")
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
            "order": "per round: for log then random, disk, limit, limit_py, ours_framed, "
            "ours, ours_via_part, peer; then small files, ours then peer",
            "mb": "10^6 bytes of published (decompressed) output",
            "disk": "dd if=/dev/zero of=OUT bs=4M count=N conv=fsync; fsync the directory",
            "limit": "zstd -q -d -f -o OUT IN; fsync OUT and its directory",
            "limit_py": "python-zstandard copy_stream into a temp name; fsync; rename; "
            "fsync the directory",
            "ours": "postoffice ingest serve --sys-base B --data-base 0 --data-dir D "
            "(defaults: fsync on, streaming assembly); IngestClient(parallel=4, "
            "chunk_size=4 MiB).send(zst, name=...), timed until it returns",
            "ours_framed": "the same server; IngestClient(parallel=4, chunk_size=4 MiB)"
            ".send(framed zst, name=...): a .zst of one frame (content size, checksum) per "
            "4 MiB of content, sent one FRAMED chunk per frame",
            "ours_via_part": "the same as ours with --via-part",
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
        "zst_framed_bytes": item.zst_framed_size,
        "ratio": round(item.size / item.zst_size, 2),
        "sha256": item.sha256,
        "make_s": item.make_s,
        "compress_s": item.compress_s,
    }


if __name__ == "__main__":
    sys.exit(main())
