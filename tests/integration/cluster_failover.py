"""One failover of a clustered upload, shared by test_cluster_failover.py and
bench/ingest/failover.py: real `ingest serve --cluster` nodes, the real IngestClient, the
upload's owner (and optionally the NATS claims leader) killed -9 after a count of ACKs."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from postoffice.ingest.client import sender
from postoffice.ingest.client.links import PIPELINE_DEPTH
from postoffice.ingest.client.payload import PreparedFile, plan_chunks, read_chunk_frame
from postoffice.ingest.client.sender import IngestClient, SendResult
from postoffice.ingest.cluster.records import OWNERS_BUCKET
from postoffice.ingest.messages import Status, UploadState
from tests.integration.cluster_harness import (
    S3_KEY_ID,
    S3_SECRET,
    MotoServer,
    NatsCluster,
    NatsNode,
)
from tests.integration.conftest import ServerProcess, start_server
from tests.integration.test_ingest import Ingest

#: The JetStream stream behind the claims: its leader decides every takeover.
CLAIMS_STREAM: Final = f"KV_{OWNERS_BUCKET}"
#: random_file's write size (randbytes takes at most 256 MiB at once).
BLOCK: Final = 8 * 1024 * 1024


def set_s3_credentials() -> None:
    """The nodes read their S3 credentials from the usual environment."""
    os.environ["AWS_ACCESS_KEY_ID"] = S3_KEY_ID
    os.environ["AWS_SECRET_ACCESS_KEY"] = S3_SECRET


def start_node(
    ingest: Ingest,
    nats: NatsCluster,
    s3: MotoServer,
    name: str,
    serve: Callable[..., ServerProcess] | None = None,
) -> ServerProcess:
    """`postoffice ingest serve --cluster` on the harness's NATS and S3, ready to serve;
    started by `serve` (the tests' fixture, which stops it) or in the node's directory."""
    ingest.tmp.mkdir(parents=True, exist_ok=True)
    if serve is None:
        serve = functools.partial(start_server, ingest.tmp)
    return serve(
        "ingest",
        *ingest.args(
            "--cluster",
            nats.urls,
            "--s3",
            s3.endpoint,
            "--bucket",
            s3.bucket,
            "--node-name",
            name,
            "--no-fsync",
        ),
    )


def random_file(path: Path, size: int, seed: str) -> Path:
    """`size` seeded random bytes (they do not compress: each chunk stays its full size)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    with path.open("wb") as out:
        for at in range(0, size, BLOCK):
            out.write(rng.randbytes(min(BLOCK, size - at)))
    return path


@dataclass(slots=True, kw_only=True)
class Counter:
    """What the client did, seen through the sender module's own calls: every chunk frame it
    read to send, every ACK it took, and the STATUS each plan was made from."""

    sends: list[tuple[int, float]] = field(default_factory=list)
    acks: list[tuple[int, float]] = field(default_factory=list)
    plans: list[tuple[Status, float]] = field(default_factory=list)


@contextlib.contextmanager
def counting(on_ack: Callable[[Counter], None] | None = None) -> Iterator[Counter]:
    """Count the client's sends, ACKs and plans for the duration; `on_ack(counter)` runs
    after each ACK is counted (on the event loop, where the kill must happen at once)."""
    counter = Counter()
    acked = sender._Run.acked

    def counted_read(
        prepared: PreparedFile, fd: int, index: int, request_id: int
    ) -> tuple[bytes, bytes]:
        # called on a worker thread too: list.append is atomic
        counter.sends.append((index, time.monotonic()))
        return read_chunk_frame(prepared, fd, index, request_id)

    def counted_plan(status: Status, *, total: int, size: int) -> tuple[int, ...]:
        counter.plans.append((status, time.monotonic()))
        return plan_chunks(status, total=total, size=size)

    def counted_acked(run: sender._Run, index: int) -> None:
        counter.acks.append((index, time.monotonic()))
        acked(run, index)
        if on_ack is not None:
            on_ack(counter)

    # the sender module's own names, replaced by counting versions of the same calls
    patches: list[tuple[object, str, object]] = [
        (sender, "read_chunk_frame", counted_read),
        (sender, "plan_chunks", counted_plan),
        (sender._Run, "acked", counted_acked),
    ]
    originals = [(target, name, getattr(target, name)) for target, name, _ in patches]
    try:
        for target, name, value in patches:
            setattr(target, name, value)
        yield counter
    finally:
        for target, name, value in originals:
            setattr(target, name, value)


def committed(status: Status) -> set[int]:
    """The chunk indexes a STATUS says the node holds."""
    if status.state is not UploadState.UPLOADING:
        return set(range(status.total)) if status.state is UploadState.PUBLISHED else set()
    missing = {i for first, last in status.missing for i in range(first, last + 1)}
    return set(range(status.total)) - missing


@dataclass(frozen=True, slots=True, kw_only=True)
class Failover:
    """What one failover run measured."""

    result: SendResult
    chunks: int
    window: int  # the most chunks the client has in flight: parallel * PIPELINE_DEPTH
    acked_before_kill: int  # ACKs taken when the owner was killed (the kill's trigger)
    acked_by_owner: int  # every ACK the dead owner gave, some read after its death
    in_flight_at_kill: int  # chunk frames sent to the owner and not acked when it died
    unacked_by_owner: int  # frames sent to the owner it never acked (some after the kill,
    # before the client saw the connection drop): at most the window
    lost: int  # chunks the owner acked that the survivor's STATUS lists as missing
    resent: int  # chunk frames sent beyond one per chunk
    sends: int
    survivor_state: UploadState
    failover_s: float  # from the kill to the survivor's first ACK
    nats_killed: str | None


async def fail_over_once(
    *,
    nats: NatsCluster,
    s3: MotoServer,
    owner: ServerProcess,
    nodes: list[Ingest],
    source: Path,
    work_dir: Path,
    chunk_size: int,
    kill_after: int,
    kill_nats_leader: bool,
    parallel: int = 2,
    timeout_s: float = 60.0,
) -> Failover:
    """Upload `source` with a client listing `nodes` (the first is `owner`), kill -9 the
    owner (and the NATS claims leader) once `kill_after` chunks are acked, and return what
    happened. Raises what the client raises when the upload does not complete."""
    leader: NatsNode | None = None
    if kill_nats_leader:
        leader = nats.stream_leader(CLAIMS_STREAM) or nats.wait_meta_leader()
    killed_at: list[float] = []

    def kill(counter: Counter) -> None:
        if killed_at or len(counter.acks) < kill_after:
            return
        os.kill(owner.proc.pid, signal.SIGKILL)
        if leader is not None:
            nats.kill(leader)
        killed_at.append(time.monotonic())

    client = IngestClient(
        nodes=[("127.0.0.1", node.sys_base) for node in nodes],
        work_dir=work_dir,
        chunk_size=chunk_size,
        parallel=parallel,
        timeout_s=timeout_s,
        failover_s=timeout_s,
    )
    with counting(on_ack=kill) as counter:
        async with client:
            result = await client.send(source)
    await asyncio.to_thread(owner.proc.wait, 10)
    if not killed_at:
        raise AssertionError(f"the upload ended after {len(counter.acks)} acks, before the kill")
    kill_time = killed_at[0]
    # The survivor's first STATUS after the kill is its adoption; every ACK before it came
    # from the owner (some were still in the socket when it died).
    adoption, adopted_at = next((p for p in counter.plans if p[1] > kill_time), (None, 0.0))
    if adoption is None:
        raise AssertionError("the client never planned again after the kill")
    by_owner = {index for index, at in counter.acks if at < adopted_at}
    sent_before = [index for index, at in counter.sends if at < kill_time]
    sent_to_owner = {index for index, at in counter.sends if at < adopted_at}
    first_ack = min((at for _, at in counter.acks if at > adopted_at), default=None)
    if first_ack is None:
        raise AssertionError("no ACK came from the survivor")
    return Failover(
        result=result,
        chunks=result.chunks,
        window=parallel * PIPELINE_DEPTH,
        acked_before_kill=sum(at < kill_time for _, at in counter.acks),
        acked_by_owner=len(by_owner),
        in_flight_at_kill=len(set(sent_before) - {i for i, at in counter.acks if at < kill_time}),
        unacked_by_owner=len(sent_to_owner - by_owner),
        lost=len(by_owner - committed(adoption)),
        resent=len(counter.sends) - result.chunks,
        sends=len(counter.sends),
        survivor_state=adoption.state,
        failover_s=first_ack - kill_time,
        nats_killed=leader.name if leader is not None else None,
    )
