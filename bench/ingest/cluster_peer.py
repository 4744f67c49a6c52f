"""The cluster benchmark's peer processes: moto's S3 server and @tus/server instances on it.

Also what the peer needs installed (node, npm, the npm packages) and the S3 checks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, final

import benchkit
from benchkit import LOOPBACK, BenchError, tail
from common import STARTUP_TIMEOUT_S, STOP_TIMEOUT_S
from servers import accepts, free_port_block

PEER_DIR: Final = Path(__file__).resolve().with_name("tus-s3")
PEER_SCRIPT: Final = PEER_DIR / "server.mjs"
TUS_PATH: Final = "/files"
#: The S3 store's part size: S3's 5 MiB floor for non-last parts, with room to spare.
PART_SIZE_MIB: Final = 8
#: moto accepts any key pair; boto3 and the AWS SDK for JavaScript both need one.
S3_KEYS: Final = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
S3_REGION: Final = "us-east-1"
NPM_CI_TIMEOUT_S: Final = 300.0


@final
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PeerTools:
    """The programs the peer needs, found on this machine."""

    node: str
    npm: str
    moto_server: str


def find_peer_tools() -> PeerTools | str:
    """The programs, or one line saying what is missing and how to get it."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return "node and npm are needed for the tus peer (apt-get install nodejs npm)"
    beside = Path(sys.executable).parent / "moto_server"
    moto = str(beside) if beside.exists() else shutil.which("moto_server")
    if moto is None:
        return "moto_server is needed to play S3 (.venv/bin/pip install 'moto[server]')"
    for module in ("boto3", "aiohttp"):
        try:
            __import__(module)
        except ImportError:
            return f"the module {module} is needed (.venv/bin/pip install {module})"
    return PeerTools(node=node, npm=npm, moto_server=moto)


def node_modules_ready() -> bool:
    """True when the peer's npm packages are installed beside its script."""
    return (PEER_DIR / "node_modules" / "@tus" / "s3-store" / "package.json").exists()


def ensure_node_modules(npm: str) -> None:
    """`npm ci` into bench/ingest/tus-s3 when its node_modules is missing.

    Raises BenchError when npm fails (the log tail says why).
    """
    if node_modules_ready():
        return
    benchkit.say(f"installing the peer's npm packages: npm ci in {PEER_DIR}")
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=PEER_DIR,
        capture_output=True,
        timeout=NPM_CI_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0 or not node_modules_ready():
        raise BenchError(f"npm ci exited {done.returncode}: {done.stderr.decode()[-500:]}")


def package_versions() -> dict[str, str]:
    """The installed versions of the peer's npm packages, and node's."""
    import json

    found: dict[str, str] = {}
    for name in ("@tus/server", "@tus/s3-store", "@tus/utils", "@aws-sdk/client-s3"):
        manifest = PEER_DIR / "node_modules" / name / "package.json"
        try:
            found[name] = str(json.loads(manifest.read_text())["version"])
        except (OSError, ValueError, KeyError):
            found[name] = "not installed"
    found["node"] = benchkit.command_output(["node", "--version"]) or "unknown"
    return found


@final
@dataclasses.dataclass(slots=True, kw_only=True, repr=False)
class Process(benchkit.Server):
    """A peer-side process: moto_server or one tus instance."""

    url: str  # moto: its endpoint; tus: its creation URL


def _wait_accepting(proc: Process) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        proc.check_alive()
        if accepts(proc.port):
            return
        time.sleep(0.05)
    raise BenchError(
        f"{proc.name} did not accept on {proc.port} within {STARTUP_TIMEOUT_S} s; "
        f"log tail:\n{tail(proc.log_path)}"
    )


def _spawn(
    name: str, argv: list[str], log_path: Path, env: dict[str, str], port: int, url: str
) -> Process:
    with log_path.open("wb") as log_file:
        child = subprocess.Popen(
            argv, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=log_path.parent
        )
    proc = Process(name=name, proc=child, pid=child.pid, port=port, log_path=log_path, url=url)
    try:
        _wait_accepting(proc)
    except BaseException:
        stop(proc)
        raise
    return proc


def start_moto(tools: PeerTools, folder: Path) -> Process:
    """moto_server on a free loopback port; its state lives in its memory only."""
    port = free_port_block(1)
    env = {**os.environ, **S3_KEYS}
    argv = [tools.moto_server, "-H", LOOPBACK, "-p", str(port)]
    return _spawn("moto", argv, folder / "moto.log", env, port, f"http://{LOOPBACK}:{port}")


def start_tus(tools: PeerTools, folder: Path, name: str, endpoint: str, bucket: str) -> Process:
    """One @tus/server instance with the S3 store on `bucket`; its parts stage in its own
    temp dir under `folder`."""
    port = free_port_block(1)
    tmp = folder / f"{name}-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **S3_KEYS, "TMPDIR": str(tmp), "AWS_REGION": S3_REGION}
    argv = [
        tools.node,
        str(PEER_SCRIPT),
        "--port",
        str(port),
        "--endpoint",
        endpoint,
        "--bucket",
        bucket,
        "--path",
        TUS_PATH,
        "--part-size-mib",
        str(PART_SIZE_MIB),
    ]
    url = f"http://{LOOPBACK}:{port}{TUS_PATH}"
    return _spawn(name, argv, folder / f"{name}.log", env, port, url)


def stop(proc: Process) -> None:
    """SIGTERM by pid, then SIGKILL after STOP_TIMEOUT_S."""
    benchkit.stop(proc, STOP_TIMEOUT_S)


def kill_hard(proc: Process) -> None:
    """SIGKILL by pid, as a machine failing would, and reap it."""
    if proc.proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.proc.wait(timeout=STOP_TIMEOUT_S)


def s3_client(endpoint: str) -> Any:
    """A boto3 S3 client on moto (path-style addressing)."""
    # boto3 has no type information of its own (its stubs are a separate package).
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=S3_REGION,
        aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}),
    )


def create_bucket(endpoint: str, bucket: str) -> None:
    """Create the bucket on moto. Raises BenchError when moto refuses."""
    client = s3_client(endpoint)
    try:
        client.create_bucket(Bucket=bucket)
    except Exception as exc:  # botocore raises many unrelated classes; all mean the same here
        raise BenchError(f"cannot create bucket {bucket} at {endpoint}: {exc}") from exc


def object_digest(endpoint: str, bucket: str, key: str) -> tuple[int, str]:
    """The size and SHA-256 of an object, read back from S3.

    Raises BenchError when the object cannot be read.
    """
    client = s3_client(endpoint)
    try:
        reply = client.get_object(Bucket=bucket, Key=key)
        sha = hashlib.sha256()
        size = 0
        for block in reply["Body"].iter_chunks(1 << 20):
            sha.update(block)
            size += len(block)
    except Exception as exc:  # as in create_bucket
        raise BenchError(f"cannot read s3://{bucket}/{key}: {exc}") from exc
    return size, sha.hexdigest()


def compare_object(endpoint: str, bucket: str, key: str, path: Path) -> str:
    """ "intact" when the object holds the file's bytes, else where they part ways (or why
    the object cannot be read)."""
    client = s3_client(endpoint)
    offset = 0
    try:
        reply = client.get_object(Bucket=bucket, Key=key)
        with path.open("rb") as source:
            for block in reply["Body"].iter_chunks(1 << 20):
                expected = source.read(len(block))
                if block != expected:
                    at = next(
                        (
                            i
                            for i, (a, b) in enumerate(zip(block, expected, strict=False))
                            if a != b
                        ),
                        min(len(block), len(expected)),
                    )
                    return f"differs from byte {offset + at:,}"
                offset += len(block)
            if source.read(1):
                return f"object ends at byte {offset:,}, before the file does"
    except Exception as exc:  # as in create_bucket
        return f"unreadable: {exc}"[:200]
    return "intact"


def object_sizes(endpoint: str, bucket: str, keys: list[str]) -> dict[str, int]:
    """The size of each of `keys` that exists in the bucket (one listing, not a HEAD each)."""
    client = s3_client(endpoint)
    wanted = set(keys)
    found: dict[str, int] = {}
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            if item["Key"] in wanted:
                found[item["Key"]] = int(item["Size"])
    return found


#: A request line in moto's (werkzeug's) log: `... "PUT /bucket/key HTTP/1.1" 200 -`.
_REQUEST_LINE: Final = re.compile(rb'"[A-Z]+ /[^"]* HTTP/1\.[01]" \d{3} ')


def s3_requests(moto: Process) -> int:
    """The requests moto has logged so far."""
    try:
        return len(_REQUEST_LINE.findall(moto.log_path.read_bytes()))
    except OSError as exc:
        raise BenchError(f"cannot read {moto.log_path}: {exc}") from exc


@final
@dataclasses.dataclass(slots=True, kw_only=True)
class PeerCluster:
    """moto and the tus instances of one round, and the bucket they share."""

    moto: Process
    instances: list[Process]
    bucket: str

    def pids(self) -> list[int]:
        """The instances still running (a killed one is left out)."""
        return [p.pid for p in self.instances if p.proc.poll() is None]

    def check_alive(self) -> None:
        """Raise BenchError if moto or an instance has exited."""
        self.moto.check_alive()
        for proc in self.instances:
            proc.check_alive()


@contextlib.contextmanager
def peer_cluster(
    tools: PeerTools, folder: Path, instances: int, bucket: str
) -> Iterator[PeerCluster]:
    """A fresh moto with `bucket` and `instances` tus servers on it, all stopped by pid at
    the end (moto last, so the instances do not log its absence)."""
    folder.mkdir(parents=True, exist_ok=True)
    started: list[Process] = []
    cleanup: list[Callable[[], None]] = []
    try:
        moto = start_moto(tools, folder)
        cleanup.append(lambda: stop(moto))
        create_bucket(moto.url, bucket)
        for index in range(instances):
            proc = start_tus(tools, folder, f"tus{index + 1}", moto.url, bucket)
            started.append(proc)
        yield PeerCluster(moto=moto, instances=started, bucket=bucket)
    finally:
        for proc in reversed(started):
            stop(proc)
        for step in reversed(cleanup):
            step()
