"""A cluster node cut off by the network: one `ingest serve --cluster` inside a network
namespace joined by a veth pair, whose link is set down mid-upload; the node fences itself,
the other node takes the upload over and publishes it, and the cut node takes no more."""

# The test makes the namespace itself (`ip netns add`, a veth pair, a private /30) and
# removes it after; it is skipped where the machine cannot (not root, no `ip`). NATS and
# moto listen on every address for its length, so the namespaced node reaches them at the
# root side's veth address; every packet stays inside this machine's namespaces.

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import random
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from postoffice.ingest.client import IngestClient
from postoffice.ingest.client.payload import PreparedFile, prepare
from postoffice.ingest.errors import ErrorCode
from postoffice.ingest.messages import ErrorReply, Message, Published, Status, UploadState
from tests.integration.cluster_harness import (
    MotoServer,
    NatsCluster,
    moto_server,
    nats_cluster,
)
from tests.integration.conftest import (
    POSTOFFICE,
    READY_TIMEOUT_S,
    ServerProcess,
    env_without_postoffice,
)
from tests.integration.test_ingest import Ingest
from tests.integration.test_ingest_clustered import (
    Peer,
    _aws_credentials,  # noqa: F401  # the autouse fixture: both nodes read S3 keys from the env
    info,
    node_args,
    objects_of,
    query,
    send_chunk,
    subscribed,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(180),
    pytest.mark.xdist_group("nats-cluster-netns"),  # a NATS cluster of its own
]

#: A private /30 nothing else on the machine uses: the root side's end, the namespace's.
ROOT_ADDRESS: Final = "10.213.78.1"
NS_ADDRESS: Final = "10.213.78.2"
PREFIX: Final = "10.213.78."
#: The server's defaults in cluster mode: fenced 3 s after its last renewal, dead after 4 s.
LEASE_S: Final = 3.0
STALE_S: Final = 4.0
#: Slack for a loaded 2-core machine on top of those times.
SLACK_S: Final = 2.0
WAIT_S: Final = 30.0
CHUNK_BYTES: Final = 256 * 1024
Serve = Callable[..., ServerProcess]
#: setns(2)'s flag for a network namespace.
_CLONE_NEWNET: Final = 0x40000000


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Namespace:
    """The namespace made for the test and the root side's end of its veth pair."""

    name: str
    root_link: str

    def link(self, state: str) -> None:
        """Set the root side's end of the veth pair `up` or `down`."""
        done = _ip("link", "set", self.root_link, state)
        assert done.returncode == 0, done.stderr


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command to make a network namespace with")
    if os.geteuid() != 0:
        pytest.skip("making a network namespace needs root")
    in_use = _ip("-4", "-o", "addr", "show")
    if in_use.returncode != 0:
        pytest.skip(f"cannot list the addresses: {in_use.stderr.strip()}")
    if PREFIX in in_use.stdout:
        pytest.skip(f"{PREFIX}0/30 is in use on this machine: {in_use.stdout}")
    tag = f"pc{os.getpid() % 100000}"
    made = Namespace(name=f"{tag}-ns", root_link=f"{tag}r")
    ns_link = f"{tag}n"
    created = False
    try:
        done = _ip("netns", "add", made.name)
        if done.returncode != 0:
            pytest.skip(f"cannot make a network namespace: {done.stderr.strip()}")
        created = True
        steps = [
            ("link", "add", made.root_link, "type", "veth", "peer", "name", ns_link, "netns",
             made.name),
            ("addr", "add", f"{ROOT_ADDRESS}/30", "dev", made.root_link),
            ("link", "set", made.root_link, "up"),
            ("-n", made.name, "addr", "add", f"{NS_ADDRESS}/30", "dev", ns_link),
            ("-n", made.name, "link", "set", ns_link, "up"),
            ("-n", made.name, "link", "set", "lo", "up"),
        ]  # fmt: skip
        for step in steps:
            done = _ip(*step)
            if done.returncode != 0:
                pytest.skip(f"cannot set up the veth pair: ip {' '.join(step)}: {done.stderr}")
        yield made
    finally:
        # deleting the namespace deletes its end of the pair, and so the pair
        if created:
            _ip("netns", "del", made.name)
        _ip("link", "del", made.root_link)
        assert made.name not in _ip("netns", "list").stdout
        assert made.root_link not in _ip("-o", "link", "show").stdout


def serve_in(namespace: Namespace, tmp_path: Path, *args: str) -> ServerProcess:
    """`postoffice ingest serve ARGS` inside the namespace, once ready (the ready file is
    on the shared file system; `ip netns exec` execs it, so its pid is the server's)."""
    ready = tmp_path / f"ingest-{time.monotonic_ns()}.ready.json"
    log_path = ready.with_suffix(".log")
    argv = ["ip", "netns", "exec", namespace.name, *POSTOFFICE, "ingest", "serve"]
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [*argv, "--ready-file", str(ready), *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=env_without_postoffice(),
        )
    server = ServerProcess(proc=proc, listeners={}, log_path=log_path, args=list(args))
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise AssertionError(f"the namespaced node did not start: {server.log()}")
        time.sleep(0.02)
    answer = json.loads(ready.read_text())
    assert "error" not in answer, server.log()
    server.listeners = {k: (v[0], int(v[1])) for k, v in answer["listeners"].items()}
    return server


def connect_in(namespace: Namespace, host: str, port: int) -> socket.socket:
    """A TCP connection made from inside the namespace: a thread of its own enters it
    (setns changes only the calling thread) and ends after; the socket stays there."""
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/var/run/netns/{namespace.name}", "rb") as handle:
                if libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns: {os.strerror(errno)}")
            made.append(socket.create_connection((host, port), timeout=5))
        except BaseException as exc:  # handed to the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=run, name=f"netns-{namespace.name}")
    thread.start()
    thread.join(10)
    if failed:
        raise failed[0]
    assert made, "no connection made inside the namespace within 10 s"
    return made[0]


@contextlib.asynccontextmanager
async def peer_at(host: str, port: int, namespace: Namespace | None = None) -> AsyncIterator[Peer]:
    if namespace is None:
        opened = asyncio.open_connection(host, port)
    else:
        sock = connect_in(namespace, host, port)
        sock.setblocking(False)
        opened = asyncio.open_connection(sock=sock)
    reader, writer = await asyncio.wait_for(opened, 5)
    try:
        yield Peer(reader, writer)
    finally:
        writer.close()


def random_file(tmp_path: Path, name: str, size: int) -> Path:
    """Seeded bytes that do not compress: as many chunks as the size says."""
    path = tmp_path / name
    path.write_bytes(random.Random(f"netns-{name}").randbytes(size))
    return path


async def wait_for(what: str, check: Callable[[], bool], timeout_s: float = WAIT_S) -> float:
    """Poll `check()` until true; the monotonic time it became so."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        await asyncio.sleep(0.05)
    return time.monotonic()


async def wait_for_async(what: str, check: Callable[[], bool]) -> float:
    """`wait_for` of a blocking `check` (an HTTP GET), run on a worker thread."""
    deadline = time.monotonic() + WAIT_S
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, f"{what}: not within {WAIT_S} s"
        await asyncio.sleep(0.05)
    return time.monotonic()


def live_nodes(ingest: Ingest) -> list[str]:
    nodes = info(ingest)["nodes"]
    assert isinstance(nodes, list)
    return [str(node) for node in nodes]


async def fenced_reply(namespace: Namespace, a: Ingest, prepared: PreparedFile) -> ErrorReply:
    """QUERY the cut node from inside its namespace until it answers that it is fenced."""
    async with peer_at(NS_ADDRESS, a.data_base, namespace) as data_a:
        deadline = time.monotonic() + WAIT_S
        while True:
            reply = await query(data_a, prepared.file_id)
            if isinstance(reply, ErrorReply):
                return reply
            assert isinstance(reply, Status), reply
            assert reply.state is UploadState.UPLOADING
            assert time.monotonic() < deadline, "the cut node never fenced itself"
            await asyncio.sleep(0.05)


async def test_a_node_cut_off_by_the_network_is_fenced_and_its_upload_finishes_elsewhere(
    namespace: Namespace, tmp_path: Path, serve: Serve
) -> None:
    # every address, so that the namespaced node reaches them over the veth pair
    with (
        nats_cluster(tmp_path, client_host="0.0.0.0") as nats,
        moto_server(tmp_path, host="0.0.0.0") as s3,
    ):
        await _run(namespace, tmp_path, serve, nats, s3)


async def _run(
    namespace: Namespace, tmp_path: Path, serve: Serve, nats: NatsCluster, s3: MotoServer
) -> None:
    a, b = Ingest(tmp_path / "a", x=1), Ingest(tmp_path / "b", x=1)
    nats_via_veth = ",".join(f"nats://{ROOT_ADDRESS}:{n.client_port}" for n in nats.nodes)
    node_a = serve_in(
        namespace,
        tmp_path,
        *a.args(
            "--host", NS_ADDRESS, "--advertise", NS_ADDRESS, "--cluster", nats_via_veth,
            "--s3", f"http://{ROOT_ADDRESS}:{s3.port}", "--bucket", s3.bucket,
            "--node-name", "cut-a", "--no-fsync",
        ),
    )  # fmt: skip
    try:
        node_b = serve("ingest", *node_args(b, nats.urls, s3, "other-b"))
        await wait_for("B sees the namespaced node", lambda: "cut-a" in live_nodes(b))
        await _cut_mid_upload(namespace, tmp_path, a, b, node_a, node_b, s3)
    finally:
        namespace.link("up")  # so the node can leave the cluster as it stops
        node_a.stop()


async def _cut_mid_upload(
    namespace: Namespace,
    tmp_path: Path,
    a: Ingest,
    b: Ingest,
    node_a: ServerProcess,
    node_b: ServerProcess,
    s3: MotoServer,
) -> None:
    source = random_file(tmp_path, "cut.bin", 8 * 1024 * 1024 + 11)
    prepared = prepare(source, chunk_size=CHUNK_BYTES, work_dir=tmp_path / "prep")
    assert prepared.total >= 24
    on_b = await subscribed(b.sys_base + 3, prepared.file_id)

    cut_at: list[float] = []
    acked_at_cut: list[int] = []

    def progress(done: int, total: int) -> None:
        # The link goes down from inside the client's progress report, after a third is
        # acknowledged: the upload is certainly under way through the namespaced node.
        if not cut_at and done >= total // 3:
            namespace.link("down")
            cut_at.append(time.monotonic())
            acked_at_cut.append(done)

    client = IngestClient(
        nodes=[(NS_ADDRESS, a.sys_base), ("127.0.0.1", b.sys_base)],
        chunk_size=CHUNK_BYTES,
        parallel=2,
        timeout_s=3.0,
        failover_s=WAIT_S,
        work_dir=tmp_path / "work",
    )
    async with client:
        sending = asyncio.create_task(client.send(source, progress=progress))
        cut = await wait_for("the link cut mid-upload", lambda: bool(cut_at) or sending.done())
        assert cut_at, f"the upload ended before the cut: {sending.result()!r}"
        seen_dead = asyncio.create_task(
            wait_for_async("B holds A dead", lambda: "cut-a" not in live_nodes(b))
        )

        # inside the namespace, the cut node answers QUERY from memory until its lease
        # lapses, then refuses: fenced, it cannot claim; a chunk is refused the same way
        refused = await fenced_reply(namespace, a, prepared)
        fenced = time.monotonic()
        assert refused.code is ErrorCode.STORAGE, refused
        assert "node cut-a is fenced" in refused.message, refused
        async with peer_at(NS_ADDRESS, a.data_base, namespace) as data_a:
            chunk_reply = await send_chunk(data_a, prepared, prepared.total - 1)
        assert isinstance(chunk_reply, ErrorReply), chunk_reply
        assert "node cut-a is fenced" in chunk_reply.message, chunk_reply
        assert "node=cut-a lease lapsed" in node_a.log()

        # B takes the claim over once A's heartbeat is stale, and the client, failed over
        # to B, sends it what nobody acknowledged; B publishes
        took = await wait_for(
            "B takes the upload over",
            lambda: "taken over from dead node=cut-a" in node_b.log(),
        )
        result = await asyncio.wait_for(sending, WAIT_S)
        published = time.monotonic()
        dead = await asyncio.wait_for(seen_dead, WAIT_S)
    print(
        f"link down -> cut node fenced {fenced - cut:.2f} s, -> B holds it dead "
        f"{dead - cut:.2f} s, -> B took the upload over "
        f"{took - cut:.2f} s, -> published through B {published - cut:.2f} s "
        f"(lease {LEASE_S} s, stale {STALE_S} s)"
    )
    assert fenced - cut <= LEASE_S + SLACK_S
    # fenced before B could hold it dead, and so before any takeover (B's view is polled
    # over HTTP, and its takeover reads A's key itself: the two are not ordered here)
    assert fenced < dead, "the cut node could take chunks after B held it dead"
    assert fenced < took, "the cut node could take chunks after B took its upload over"
    assert result.digest == prepared.digest
    assert result.size == source.stat().st_size
    # what A acknowledged before the cut, B adopted from S3 rather than have it sent again
    adopted = re.search(rf"adopted file_id={prepared.file_id.hex()} chunks=(\d+) of ", node_b.log())
    assert adopted is not None, node_b.log()
    longest = max(prepared.chunk_length(i) for i in range(prepared.total))
    assert int(adopted.group(1)) >= acked_at_cut[0] // longest
    event = next(m for m in await on_b.events(quiet_s=1.0) if isinstance(m, Published))
    assert (event.name, event.digest, event.payload_digest) == (
        "cut.bin",
        prepared.digest,
        prepared.payload_digest,
    )
    on_b.writer.close()
    assert await objects_of(s3).get_file("cut.bin") == source.read_bytes()
    assert "put into s3 as files/cut.bin" in node_b.log()

    # the link comes back: A renews its heartbeat, and takes no chunk of that upload
    namespace.link("up")
    await wait_for("A back among B's live nodes", lambda: "cut-a" in live_nodes(b))
    async with peer_at(NS_ADDRESS, a.data_base) as data_a:
        deadline = time.monotonic() + WAIT_S
        while True:
            status = await query(data_a, prepared.file_id)
            if not isinstance(status, ErrorReply) or "is fenced" not in status.message:
                break
            assert time.monotonic() < deadline, "the cut node stayed fenced"
            await asyncio.sleep(0.1)
        print(f"QUERY on the cut node once it renewed: {status!r}")
        moved = f"moved other-b 127.0.0.1:{b.sys_base} "
        assert isinstance(status, ErrorReply), status
        assert status.code is ErrorCode.MOVED, status
        assert status.message.startswith(moved), status
        back: Message = await send_chunk(data_a, prepared, prepared.total - 1)
        print(f"a chunk of the upload sent to the cut node after the link came back: {back!r}")
        assert isinstance(back, ErrorReply), back
        assert back.code is ErrorCode.MOVED, back
        assert back.message.startswith(moved), back
    await asyncio.sleep(1.0)  # room for a publish that must not come
    assert "put into s3 as files/" not in node_a.log()
    objects = objects_of(s3)
    assert await objects.get_file("cut.bin") == source.read_bytes()
    # S3 puts the cut node had begun before the cut complete once the link is back, after
    # B's publish dropped the upload's chunk objects: those stay (the lifecycle rule's job)
    late = await objects.chunk_indexes(prepared.file_id)
    print(f"chunk objects the cut node's late puts left in S3: {late}")
