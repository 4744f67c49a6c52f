"""The cluster tests' real servers: a 3-node nats-server cluster with JetStream, a moto_server
playing S3, and a TCP proxy that cuts one node off; all on loopback, stopped by pid."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest

from postoffice.ingest.cluster import (
    Cluster,
    ClusterConfig,
    OnEvent,
    OnLost,
    Owner,
    parse_nats_urls,
)
from tests.integration.conftest import free_port_block

NATS_SERVER: Final = shutil.which("nats-server") or (
    "/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None
)
MOTO_SERVER: Final = str(Path(sys.executable).with_name("moto_server"))
#: How long a server may take to listen, or a cluster to elect its JetStream meta leader.
START_TIMEOUT_S: Final = 20.0
#: The S3 credentials moto accepts (any), passed explicitly so no AWS_* variable is needed.
S3_KEY_ID: Final = "testing"
S3_SECRET: Final = "testing"
S3_BUCKET: Final = "po-cluster-test"

needs_nats = pytest.mark.skipif(
    NATS_SERVER is None, reason="nats-server is not installed (make tools installs it)"
)


def free_port() -> int:
    """A port on 127.0.0.1 free right now (the servers below need ports fixed in advance),
    below the ephemeral range: a port the kernel picked for bind(0) is also one it hands to
    outgoing connections, which then take it from the server about to bind it."""
    return free_port_block(1)


def _wait_listening(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on port {port} within {START_TIMEOUT_S}s")


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


@dataclass
class NatsNode:
    """One nats-server of the cluster: its ports, store dir and process."""

    name: str
    client_port: int
    cluster_port: int
    http_port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def monitor(self, path: str) -> dict[str, Any]:
        """GET a monitoring endpoint (`/jsz`, `/varz`) of this server as JSON."""
        url = f"http://127.0.0.1:{self.http_port}{path}"
        with urllib.request.urlopen(url, timeout=2) as reply:
            answer: dict[str, Any] = json.load(reply)
            return answer


@dataclass
class NatsCluster:
    """Three nats-servers with JetStream, routed to each other on loopback."""

    nodes: list[NatsNode]
    log_dir: Path
    killed: list[NatsNode] = field(default_factory=list)
    #: The address the client ports listen on (0.0.0.0 for a node in another namespace).
    client_host: str = "127.0.0.1"
    #: Unique per cluster: nats-server refuses a route from a cluster of another name, so a
    #: killed server's port taken by another test's cluster never merges the two.
    name: str = field(default_factory=lambda: f"po-{secrets.token_hex(6)}")

    @property
    def urls(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def _config(self, node: NatsNode) -> Path:
        routes = ", ".join(
            f'"nats-route://127.0.0.1:{other.cluster_port}"'
            for other in self.nodes
            if other is not node
        )
        text = (
            f"server_name: {node.name}\n"
            f"listen: {self.client_host}:{node.client_port}\n"
            f"http: 127.0.0.1:{node.http_port}\n"
            f'jetstream {{ store_dir: "{node.directory}" }}\n'
            f"cluster {{ name: {self.name}, listen: 127.0.0.1:{node.cluster_port},"
            f" routes: [{routes}], no_advertise: true }}\n"
        )
        path = self.log_dir / f"{node.name}.conf"
        path.write_text(text)
        return path

    def start(self, node: NatsNode) -> None:
        """Start (or restart, on its kept store dir) one server."""
        assert NATS_SERVER is not None
        log = (self.log_dir / f"{node.name}.log").open("ab")
        node.proc = subprocess.Popen(
            [NATS_SERVER, "-c", str(self._config(node))],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        _wait_listening(node.client_port, node.proc, f"nats-server {node.name}")
        if node in self.killed:
            self.killed.remove(node)

    def meta_leader(self) -> NatsNode | None:
        """The server the running ones agree leads JetStream's meta group, if any."""
        names: set[str] = set()
        for node in self.nodes:
            if not node.running:
                continue
            try:
                cluster = node.monitor("/jsz").get("meta_cluster") or {}
            except (OSError, urllib.error.URLError, ValueError):
                return None
            names.add(str(cluster.get("leader", "")))
        if len(names) != 1:
            return None
        return next((n for n in self.nodes if n.name in names and n.running), None)

    def stream_leader(self, stream: str) -> NatsNode | None:
        """The running server that leads `stream`'s replica group, if one does."""
        for node in self.nodes:
            if not node.running:
                continue
            try:
                report = node.monitor("/jsz?accounts=true&streams=true")
            except (OSError, urllib.error.URLError, ValueError):
                continue
            for account in report.get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    if detail.get("name") == stream:
                        leader = (detail.get("cluster") or {}).get("leader")
                        found = next((n for n in self.nodes if n.name == leader), None)
                        if found is not None and found.running:
                            return found
        return None

    def wait_meta_leader(self, timeout_s: float = START_TIMEOUT_S) -> NatsNode:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            leader = self.meta_leader()
            if leader is not None:
                return leader
            time.sleep(0.05)
        raise RuntimeError(f"no JetStream meta leader within {timeout_s}s")

    def kill(self, node: NatsNode) -> None:
        """kill -9 one server, by its pid, and reap it."""
        assert node.proc is not None
        os.kill(node.proc.pid, signal.SIGKILL)
        node.proc.wait(5)
        self.killed.append(node)

    def kill_leader(self, stream: str | None = None) -> NatsNode:
        """kill -9 the leader of `stream`, or JetStream's meta leader when None; return it."""
        leader = self.stream_leader(stream) if stream else self.wait_meta_leader()
        if leader is None:
            raise RuntimeError(f"no leader found for stream {stream}")
        self.kill(leader)
        return leader

    def streams_led(self) -> bool:
        """True when JetStream has a meta leader and every stream a leader among the running
        servers (a killed leader's groups have elected anew)."""
        if self.meta_leader() is None:
            return False
        running = {node.name for node in self.nodes if node.running}
        for node in self.nodes:
            if not node.running:
                continue
            try:
                report = node.monitor("/jsz?accounts=true&streams=true")
            except (OSError, urllib.error.URLError, ValueError):
                return False
            for account in report.get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    if (detail.get("cluster") or {}).get("leader") not in running:
                        return False
        return True

    def restart_killed(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start every killed server again and wait until every stream has a leader."""
        for node in list(self.killed):
            self.start(node)
        deadline = time.monotonic() + timeout_s
        while not self.streams_led():
            if time.monotonic() > deadline:
                raise RuntimeError(f"streams without a leader {timeout_s}s after the restart")
            time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes:
            _stop(node.proc)


@contextlib.contextmanager
def nats_cluster(
    tmp_path: Path, size: int = 3, client_host: str = "127.0.0.1"
) -> Iterator[NatsCluster]:
    """A running JetStream cluster of `size` servers with a meta leader, its client ports on
    `client_host`; stopped at the end."""
    if NATS_SERVER is None:
        pytest.skip("nats-server is not installed (make tools installs it)")
    # One block for the whole cluster: ports picked one by one, each released before the
    # next is picked, could come out the same twice.
    base = free_port_block(3 * size)
    nodes = [
        NatsNode(
            name=f"n{i + 1}",
            client_port=base + 3 * i,
            cluster_port=base + 3 * i + 1,
            http_port=base + 3 * i + 2,
            directory=tmp_path / f"nats-n{i + 1}",
        )
        for i in range(size)
    ]
    cluster = NatsCluster(nodes=nodes, log_dir=tmp_path, client_host=client_host)
    try:
        for node in nodes:
            node.directory.mkdir()
            cluster.start(node)
        cluster.wait_meta_leader()
        yield cluster
    finally:
        cluster.stop()


@dataclass
class MotoServer:
    """A moto_server process with one bucket."""

    proc: subprocess.Popen[bytes]
    port: int
    bucket: str = S3_BUCKET

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def moto_server(tmp_path: Path, host: str = "127.0.0.1") -> Iterator[MotoServer]:
    """A running moto_server listening on `host` (loopback unless told), on a port free on
    loopback, with the bucket made; stopped at the end."""
    import boto3  # type: ignore[import-untyped]  # moto brings it, without type stubs

    port = free_port()
    log = (tmp_path / "moto.log").open("ab")
    proc = subprocess.Popen(
        [MOTO_SERVER, "-H", host, "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    try:
        _wait_listening(port, proc, "moto_server")
        server = MotoServer(proc=proc, port=port)
        s3 = boto3.client(
            "s3",
            endpoint_url=server.endpoint,
            aws_access_key_id=S3_KEY_ID,
            aws_secret_access_key=S3_SECRET,
            region_name="us-east-1",
        )
        s3.create_bucket(Bucket=server.bucket)
        yield server
    finally:
        _stop(proc)


class TcpProxy:
    """A loopback TCP relay to one server that a test can cut: every connection through it
    is dropped and new ones refused, as if the node behind it lost the network."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._cut = False

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen (on a free port the first time, on the same port after a cut)."""
        self._cut = False
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        if self._cut:  # cut while this connection was being relayed
            writer.close()
            up_writer.close()
            return
        self._writers.update((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except OSError:
            pass
        finally:
            sink.close()

    async def cut(self) -> None:
        """Drop every relayed connection and refuse new ones."""
        self._cut = True
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        self._writers.clear()


# -- nodes of the cluster library, in this test's event loop -----------------------------

#: Timing for the tests: a heartbeat every 0.2 s, dead after 1 s, fenced after 0.6 s.
HEARTBEAT_S: Final = 0.2
STALE_S: Final = 1.0
LEASE_S: Final = 0.6


def cluster_config(nats_urls: str, s3: MotoServer, **options: Any) -> ClusterConfig:
    """A ClusterConfig for the test servers with the tests' short timing."""
    settings: dict[str, Any] = {
        "heartbeat_s": HEARTBEAT_S,
        "stale_s": STALE_S,
        "lease_s": LEASE_S,
        "connect_timeout_s": 5.0,
        "request_timeout_s": 3.0,
        "access_key_id": S3_KEY_ID,
        "secret_access_key": S3_SECRET,
    } | options
    return ClusterConfig(
        nats_urls=parse_nats_urls(nats_urls), s3_url=s3.endpoint, bucket=s3.bucket, **settings
    )


def owner(name: str, port: int = 7100) -> Owner:
    """The Owner record a test node advertises."""
    return Owner(node=name, host="127.0.0.1", health_port=port, data_ports=(port + 1, port + 2))


async def wait_until(
    check: Callable[[], bool], timeout_s: float, what: str, step_s: float = 0.02
) -> float:
    """Poll `check` until true; return the seconds it took, or fail naming `what`."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not check():
        if loop.time() - start > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s}s")
        await asyncio.sleep(step_s)
    return loop.time() - start


@contextlib.asynccontextmanager
async def cluster_nodes(
    configs: list[tuple[ClusterConfig, Owner]],
    *,
    on_lost: OnLost | None = None,
    on_event: OnEvent | None = None,
) -> AsyncIterator[list[Cluster]]:
    """Open one Cluster per (config, owner), closed (leaving) at the end."""
    opened: list[Cluster] = []
    try:
        for config, me in configs:
            opened.append(await Cluster.open(config, me, on_lost=on_lost, on_event=on_event))
        yield opened
    finally:
        for node in opened:
            await node.close()
