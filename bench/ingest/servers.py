"""The processes the benchmark starts (ours, the aiohttp-tus peer), and how it measures them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import random
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import final

import benchkit
from benchkit import (
    LOOPBACK,
    BenchError,
    process_cpu_seconds,
    tail,
)
from common import PEER_SUBCOMMAND, STARTUP_TIMEOUT_S, STOP_TIMEOUT_S, TUS_MAX_BODY, TUS_PATH
from inputs import decompress_publish


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a whole process (all its threads), in seconds."""
    user, system = process_cpu_seconds(pid)
    return user + system


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
class Server(benchkit.Server):
    """A server subprocess under test; `port` is ours' sys-base or the peer's HTTP port."""

    data_dir: Path
    files_dir: Path


def _wait(server: Server, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        server.check_alive()
        if ready():
            return
        time.sleep(0.05)
    raise BenchError(
        f"{server.name} was not ready within {STARTUP_TIMEOUT_S} s; "
        f"log tail:\n{tail(server.log_path)}"
    )


def start_ours(
    work: Path,
    postoffice: str,
    name: str,
    *,
    via_part: bool,
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Server:
    """`postoffice ingest serve` with default settings (fsync on) on free loopback ports;
    `extra` arguments (a cluster node's) go at the end, `env` replaces the environment."""
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
    argv.extend(extra)
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            argv, stdout=log_file, stderr=subprocess.STDOUT, cwd=data_dir, env=env
        )
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
        str(Path(__file__).resolve().with_name("run.py")),
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
    """SIGTERM the server by pid, then SIGKILL it after STOP_TIMEOUT_S."""
    benchkit.stop(server, STOP_TIMEOUT_S)


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
