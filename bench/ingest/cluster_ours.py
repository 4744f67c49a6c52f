"""The cluster benchmark's own side: a 3-server NATS JetStream cluster and two
`postoffice ingest serve --cluster` nodes on the peer's moto, and their runs.

A part of bench/ingest/cluster.py; never imported by pytest.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final, final

import benchkit
from benchkit import LOOPBACK, BenchError
from cluster_peer import S3_KEYS, PeerCluster, create_bucket, object_digest, object_sizes
from common import CHUNK_BYTES, PARALLEL, RUN_TIMEOUT_S, STARTUP_TIMEOUT_S, STOP_TIMEOUT_S
from servers import Server, free_port_block, start_ours

NATS_SERVERS: Final = 3
NODES: Final = 2
#: The client's budget for one failover: the dead owner's heartbeat goes stale after 4 s
#: (the cluster's default), and then a survivor takes the upload over.
FAILOVER_BUDGET_S: Final = 60.0
#: Bounds the failover run: a hang is reported, not waited out.
FAILOVER_RUN_TIMEOUT_S: Final = 300.0
#: The client module whose log line says it gave up on a node and looks at the others.
_SENDER_LOG: Final = "postoffice.ingest.client.sender"


def find_nats_server() -> str | None:
    """The nats-server program on PATH or where Debian puts it, or None."""
    found = shutil.which("nats-server")
    if found is None and os.path.exists("/usr/sbin/nats-server"):
        found = "/usr/sbin/nats-server"
    return found


@final
@dataclasses.dataclass(slots=True, kw_only=True, repr=False)
class NatsServer(benchkit.Server):
    """One nats-server of the cluster: `port` is its client port."""

    http_port: int

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.port}"

    def meta_leader(self) -> str | None:
        """The JetStream meta leader this server knows of, if any."""
        url = f"http://{LOOPBACK}:{self.http_port}/jsz"
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                found = (json.load(reply).get("meta_cluster") or {}).get("leader")
        except (OSError, ValueError):
            return None
        return str(found) if found else None


def _nats_config(name: str, ports: tuple[int, int, int], routes: Sequence[int], store: Path) -> str:
    client, cluster, http = ports
    peers = ", ".join(f'"nats-route://{LOOPBACK}:{port}"' for port in routes)
    return (
        f"server_name: {name}\n"
        f"listen: {LOOPBACK}:{client}\n"
        f"http: {LOOPBACK}:{http}\n"
        f'jetstream {{ store_dir: "{store}" }}\n'
        f"cluster {{ name: po-bench, listen: {LOOPBACK}:{cluster}, routes: [{peers}],"
        " no_advertise: true }\n"
    )


def _wait_for(what: str, ready: Callable[[], bool], check: Callable[[], None]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        check()
        if ready():
            return
        time.sleep(0.05)
    raise BenchError(f"{what} not within {STARTUP_TIMEOUT_S} s")


def start_nats(nats_server: str, folder: Path) -> list[NatsServer]:
    """Three nats-servers with JetStream routed to each other, once they agree on a meta
    leader. Raises BenchError when one exits or they do not agree in time."""
    folder.mkdir(parents=True, exist_ok=True)
    blocks = [free_port_block(3) for _ in range(NATS_SERVERS)]
    started: list[NatsServer] = []
    try:
        for index, base in enumerate(blocks):
            name = f"nats{index + 1}"
            store = folder / name
            store.mkdir(exist_ok=True)
            routes = [other + 1 for other in blocks if other != base]
            conf = folder / f"{name}.conf"
            conf.write_text(_nats_config(name, (base, base + 1, base + 2), routes, store))
            log_path = folder / f"{name}.log"
            with log_path.open("wb") as log_file:
                child = subprocess.Popen(
                    [nats_server, "-c", str(conf)], stdout=log_file, stderr=subprocess.STDOUT
                )
            started.append(
                NatsServer(
                    name=name,
                    proc=child,
                    pid=child.pid,
                    port=base,
                    log_path=log_path,
                    http_port=base + 2,
                )
            )

        def agreed() -> bool:
            leaders = {server.meta_leader() for server in started}
            return len(leaders) == 1 and None not in leaders

        def alive() -> None:
            for server in started:
                server.check_alive()

        _wait_for("a JetStream meta leader", agreed, alive)
    except BaseException:
        for server in reversed(started):
            benchkit.stop(server, STOP_TIMEOUT_S)
        raise
    return started


@final
@dataclasses.dataclass(slots=True, kw_only=True)
class OursCluster:
    """One round's NATS servers, our two nodes on them, and the bucket on the peer's moto."""

    nats: list[NatsServer]
    nodes: list[Server]
    endpoint: str  # moto's
    bucket: str

    def addresses(self, first: int = 0) -> list[tuple[str, int]]:
        """The nodes as IngestClient's `nodes`, starting at node `first`."""
        order = self.nodes[first:] + self.nodes[:first]
        return [(LOOPBACK, node.port) for node in order]

    def node_pids(self) -> list[int]:
        """Our nodes still running (a killed one is left out)."""
        return [node.pid for node in self.nodes if node.proc.poll() is None]

    def nats_pids(self) -> list[int]:
        return [server.pid for server in self.nats if server.proc.poll() is None]

    def check_alive(self) -> None:
        """Raise BenchError if a NATS server or one of our nodes has exited."""
        servers: list[benchkit.Server] = [*self.nats, *self.nodes]
        for server in servers:
            server.check_alive()


@contextlib.contextmanager
def ours_cluster(
    nats_server: str, postoffice: str, work: Path, peer: PeerCluster, round_no: int
) -> Iterator[OursCluster]:
    """A fresh NATS cluster, a bucket of ours on the peer's moto and two nodes (fsync on,
    default settings otherwise), all stopped by pid at the end."""
    folder = work / "ours-cluster" / f"r{round_no}"
    bucket = f"po-bench-r{round_no}"
    create_bucket(peer.moto.url, bucket)
    nats = start_nats(nats_server, folder / "nats")
    nodes: list[Server] = []
    try:
        urls = ",".join(server.url for server in nats)
        env = {**os.environ, **S3_KEYS}
        for index in range(NODES):
            name = f"ours{index + 1}"
            extra = ["--cluster", urls, "--s3", peer.moto.url, "--bucket", bucket]
            extra += ["--node-name", name]
            nodes.append(start_ours(folder, postoffice, name, via_part=False, extra=extra, env=env))
        yield OursCluster(nats=nats, nodes=nodes, endpoint=peer.moto.url, bucket=bucket)
    finally:
        for node in reversed(nodes):
            benchkit.stop(node, STOP_TIMEOUT_S)
        for server in reversed(nats):
            benchkit.stop(server, STOP_TIMEOUT_S)
        shutil.rmtree(folder, ignore_errors=True)


def s3_key(name: str) -> str:
    """Where a cluster node publishes the file `name`."""
    return f"files/{name}"


# --- the runs -------------------------------------------------------------------------------


async def send_small(
    cluster: OursCluster, paths: Sequence[Path], names: Sequence[str], in_flight: int
) -> None:
    """Every small file, file i through the client that starts at node i mod 2, with
    `in_flight` sends at once over both; each returns once its PUBLISHED is checked."""
    from postoffice.ingest.client import IngestClient

    gate = asyncio.Semaphore(in_flight)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                IngestClient(
                    nodes=cluster.addresses(first),
                    chunk_size=CHUNK_BYTES,
                    parallel=PARALLEL,
                    timeout_s=RUN_TIMEOUT_S,
                    failover_s=FAILOVER_BUDGET_S,
                )
            )
            for first in range(NODES)
        ]

        async def one(index: int) -> None:
            async with gate:
                await clients[index % NODES].send(paths[index], name=names[index])

        async with asyncio.TaskGroup() as group:
            for index in range(len(paths)):
                group.create_task(one(index))


def check_small_in_s3(
    cluster: OursCluster, names: Sequence[str], bodies: Sequence[bytes], size: int
) -> None:
    """Every file is in S3 with `size` bytes, and every 97th has the right bytes."""
    keys = [s3_key(name) for name in names]
    sizes = object_sizes(cluster.endpoint, cluster.bucket, keys)
    wrong = [key for key in keys if sizes.get(key) != size]
    if wrong:
        raise BenchError(f"{len(wrong)} of our small files missing or short in S3, e.g. {wrong[0]}")
    for index in range(0, len(keys), 97):
        _, sha = object_digest(cluster.endpoint, cluster.bucket, keys[index])
        if sha != hashlib.sha256(bodies[index]).hexdigest():
            raise BenchError(f"s3 object {keys[index]} differs from the file sent")


async def send_large(cluster: OursCluster, path: Path, name: str, first: int, work: Path) -> int:
    """One file through a client that starts at node `first`; the published size."""
    from postoffice.ingest.client import IngestClient

    async with IngestClient(
        nodes=cluster.addresses(first),
        chunk_size=CHUNK_BYTES,
        parallel=PARALLEL,
        timeout_s=RUN_TIMEOUT_S,
        failover_s=FAILOVER_BUDGET_S,
        work_dir=work / "client",
    ) as client:
        result = await client.send(path, name=name)
    return result.size


@final
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FailoverSeen:
    """What the client saw of one failover: times from the kill, in seconds."""

    payload_bytes: int
    acked_before_kill: int  # compressed bytes acknowledged when the owner was killed
    acked_at_first_survivor_ack: int  # the upload's progress once the survivor acked
    kill_to_failover_s: float | None  # until the client gave up on the dead node
    kill_to_survivor_status_s: float | None  # until the survivor answered its QUERY
    kill_to_first_ack_s: float | None  # until the first chunk the survivor acknowledged
    kill_to_done_s: float  # until the PUBLISHED event was checked
    published_size: int


class _FailoverNoticed(logging.Handler):
    """Notes when the client logs that it fails an upload over to the other nodes, and
    that another node answered (its STATUS says what is still to send)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.at: float | None = None
        self.answered_at: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if self.at is None and message.startswith("failing over"):
            self.at = time.monotonic()
        elif self.answered_at is None and message.startswith("failed over"):
            self.answered_at = time.monotonic()


async def send_with_failover(
    cluster: OursCluster, path: Path, name: str, work: Path
) -> FailoverSeen:
    """Send `path` starting at node 1 (its owner); once half its payload is acknowledged,
    kill -9 node 1 by pid; the client fails over to node 2, which takes the upload over.
    Raises TimeoutError after FAILOVER_RUN_TIMEOUT_S, and what IngestClient.send raises."""
    from postoffice.ingest.client import IngestClient

    owner = cluster.nodes[0]
    killed_at: list[float] = []
    acked_at_kill: list[int] = []
    first_ack: list[tuple[float, int]] = []
    noticed = _FailoverNoticed()
    sender_log = logging.getLogger(_SENDER_LOG)
    level = sender_log.level
    sender_log.setLevel(logging.INFO)
    sender_log.addHandler(noticed)

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if not killed_at:
            if done * 2 >= total:
                os.kill(owner.pid, signal.SIGKILL)
                killed_at.append(now)
                acked_at_kill.append(done)
        elif noticed.at is not None and not first_ack and done > acked_at_kill[0]:
            first_ack.append((now, done))

    try:
        async with IngestClient(
            nodes=cluster.addresses(0),
            chunk_size=CHUNK_BYTES,
            parallel=PARALLEL,
            timeout_s=RUN_TIMEOUT_S,
            failover_s=FAILOVER_BUDGET_S,
            work_dir=work / "client",
        ) as client:
            async with asyncio.timeout(FAILOVER_RUN_TIMEOUT_S):
                result = await client.send(path, name=name, progress=progress)
            done_at = time.monotonic()
            payload = result.compressed_size
    finally:
        sender_log.removeHandler(noticed)
        sender_log.setLevel(level)
        if killed_at:
            owner.proc.wait(timeout=STOP_TIMEOUT_S)  # reap it
    if not killed_at:
        raise BenchError(f"the upload of {name} ended before half of it was acknowledged")
    kill = killed_at[0]
    return FailoverSeen(
        payload_bytes=payload,
        acked_before_kill=acked_at_kill[0],
        acked_at_first_survivor_ack=first_ack[0][1] if first_ack else 0,
        kill_to_failover_s=None if noticed.at is None else round(noticed.at - kill, 3),
        kill_to_survivor_status_s=None
        if noticed.answered_at is None
        else round(noticed.answered_at - kill, 3),
        kill_to_first_ack_s=round(first_ack[0][0] - kill, 3) if first_ack else None,
        kill_to_done_s=round(done_at - kill, 3),
        published_size=result.size,
    )
