"""Benchmark: ingest on several nodes, against the multi-node tus a user would pick.

A standalone script (never imported by pytest). The peer is tus 1.0 served by @tus/server
with @tus/s3-store: two instances on one S3 bucket, with moto's server playing S3. Round by
round it measures, with an asyncio tus client (aiohttp) keeping many uploads in flight:

- `small`: 4 KiB files, each one creation-with-upload POST, spread over both instances
  (files/s; every file is then checked in S3);
- `large`: one large file, created and then sent by PATCH (MB/s; its bytes are read back
  from S3 and checked);
- `failover`: the instance holding a large upload is killed with SIGKILL mid-PATCH; the
  client asks the other one for the offset (HEAD) and PATCHes the rest there. It records
  the time from the kill to the first PATCH the survivor accepts, and whether it did.

Our server in cluster mode (`ours_cluster`: two `postoffice ingest serve --cluster` nodes
on a 3-server NATS JetStream cluster and a bucket of their own on the same moto) runs the
same three parts, when nats-server is installed. Our single-node server runs the same
small and large inputs in the same rounds (`single-node`), so the ratio to one node is
known. Progress goes to stderr, one JSON object to stdout; see
bench/ingest/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for benchkit

import zstandard
from benchkit import (
    EXIT_MISSING_TOOL,
    EXIT_RUN_FAILED,
    BenchError,
    command_output,
    machine_busy_seconds,
    raise_on_sigterm,
    say,
    tail,
)
from cluster_ours import (
    NODES,
    OursCluster,
    check_small_in_s3,
    find_nats_server,
    ours_cluster,
    s3_key,
    send_large,
    send_small,
    send_with_failover,
)
from cluster_peer import (
    PART_SIZE_MIB,
    PeerCluster,
    PeerTools,
    compare_object,
    ensure_node_modules,
    find_peer_tools,
    kill_hard,
    object_digest,
    object_sizes,
    package_versions,
    peer_cluster,
    s3_client,
    s3_requests,
)
from cluster_report import (
    ClusterRun,
    FailoverRun,
    OursFailoverRun,
    summarise,
    summarise_failover,
    summarise_ours_failover,
)
from common import CHUNK_BYTES, MB, MIB, PARALLEL, SMALL_CONCURRENCY, SMALL_FILE_BYTES
from contenders import Run, run_async, run_ours, run_ours_small, watch_disk
from inputs import Input, make_large_input, make_small_inputs
from report import machine_facts
from servers import Server, cpu_seconds, start_ours, stop

from postoffice.core.errors import PostOfficeError

T = TypeVar("T")

PEER: Final = "peer_tus_s3_x2"
SINGLE_NODE: Final = "ours_single_node"
OURS_CLUSTER: Final = "ours_cluster"
INSTANCES: Final = 2
DEFAULT_ROUNDS: Final = 3
DEFAULT_SMALL_COUNT: Final = 10_000
DEFAULT_SIZE_MIB: Final = 1024
#: Uploads in flight at once for the small files, over both instances.
DEFAULT_IN_FLIGHT: Final = 64
#: Our single node's medians in docs/benchmarks.md ("Ingest, several nodes", the run of
#: 2026-12-07 15:21 UTC): each run prints its own against them.
RECORDED_SINGLE_NODE: Final = {"small": 1063.8, "large": 421.4}
#: The goals of our cluster against the peer: files/s and MB/s ratios at least, failover
#: seconds (kill to the survivor's first ACK) at most.
GOALS: Final = {"small": 4.0, "large": 1.0, "failover_s": 10.0}
#: The quick path's sizes: every part runs, in seconds (the smoke test's budget is 60 s).
QUICK: Final = {"small_count": 40, "size_mib": 24, "rounds": 1}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options; see bench/ingest/README.md."""
    parser = argparse.ArgumentParser(
        description="Measure ingest on several nodes against two @tus/server instances "
        "with @tus/s3-store on one moto S3 bucket, and our single-node server on the same "
        "inputs. Progress goes to stderr, one JSON object to stdout.",
    )
    parser.add_argument(
        "--small-count",
        type=int,
        default=DEFAULT_SMALL_COUNT,
        help="number of 4 KiB files (default %(default)s)",
    )
    parser.add_argument(
        "--size-mib",
        type=int,
        default=DEFAULT_SIZE_MIB,
        help="size of the large file, also the failover's, MiB (default %(default)s)",
    )
    parser.add_argument(
        "--rounds", type=int, default=DEFAULT_ROUNDS, help="rounds (default %(default)s)"
    )
    parser.add_argument(
        "--in-flight",
        type=int,
        default=DEFAULT_IN_FLIGHT,
        help="small uploads in flight at once over both instances (default %(default)s)",
    )
    parser.add_argument(
        "--patch-mib",
        type=int,
        default=0,
        help="bytes per PATCH of the large upload, MiB; 0 sends the whole file in one "
        "PATCH, as tus-js-client does by default (default %(default)s)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a short run of every part: {QUICK['small_count']} small files, "
        f"{QUICK['size_mib']} MiB, 1 round (overrides those options)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where inputs and server data go (default: a new temp dir under /tmp); only "
        "what the script made there is deleted at the end",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="also write the JSON object to this file"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.small_count, args.size_mib, args.rounds = (
            QUICK["small_count"],
            QUICK["size_mib"],
            QUICK["rounds"],
        )
    if args.small_count < 1 or args.size_mib < 1 or args.rounds < 1 or args.in_flight < 1:
        parser.error("--small-count, --size-mib, --rounds and --in-flight must be at least 1")
    if args.patch_mib < 0:
        parser.error("--patch-mib must be 0 (one PATCH) or more")
    return args


def find_postoffice() -> str | None:
    """The postoffice command beside this Python, or on PATH."""
    beside = Path(sys.executable).parent / "postoffice"
    return str(beside) if beside.exists() else shutil.which("postoffice")


def has_cluster_mode(postoffice: str) -> bool:
    """True when `postoffice ingest serve` offers --cluster."""
    text = command_output([postoffice, "ingest", "serve", "--help"]) or ""
    return "--cluster" in text


# --- measuring ------------------------------------------------------------------------------


def _client_cpu_seconds() -> float:
    # This process only: the children's time (node, moto, our server) is counted apart,
    # by pid, and a child reaped during a run must not land in the client's figure.
    mine = resource.getrusage(resource.RUSAGE_SELF)
    return mine.ru_utime + mine.ru_stime


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _Seen:
    seconds: float
    client_cpu_s: float
    server_cpu_s: float
    s3_cpu_s: float
    s3_requests: int
    other_cpu_s: float
    load_avg_1m: float
    nats_cpu_s: float | None = None


def measure_peer(cluster: PeerCluster, body: Callable[[], T]) -> tuple[T, _Seen]:
    """Run `body` with wall time and the CPU of this client, the tus instances and moto."""
    cluster.check_alive()
    os.sync()
    load = os.getloadavg()[0]
    pids = cluster.pids()
    servers0 = sum(cpu_seconds(pid) for pid in pids)
    moto0 = cpu_seconds(cluster.moto.pid)
    requests0 = s3_requests(cluster.moto)
    client0 = _client_cpu_seconds()
    busy0 = machine_busy_seconds()
    began = time.monotonic()
    value = body()
    seconds = time.monotonic() - began
    busy = machine_busy_seconds() - busy0
    client = _client_cpu_seconds() - client0
    servers = sum(cpu_seconds(pid) for pid in pids) - servers0
    moto = cpu_seconds(cluster.moto.pid) - moto0
    requests = s3_requests(cluster.moto) - requests0
    cluster.check_alive()
    return value, _Seen(
        seconds=seconds,
        client_cpu_s=client,
        server_cpu_s=servers,
        s3_cpu_s=moto,
        s3_requests=requests,
        other_cpu_s=max(0.0, busy - client - servers - moto),
        load_avg_1m=load,
    )


def measure_ours_cluster(
    ours: OursCluster, peer: PeerCluster, body: Callable[[], T]
) -> tuple[T, _Seen]:
    """Run `body` with wall time and the CPU of this client, our nodes, NATS and moto."""
    ours.check_alive()
    peer.moto.check_alive()
    os.sync()
    load = os.getloadavg()[0]
    nodes, nats = ours.node_pids(), ours.nats_pids()
    nodes0 = sum(cpu_seconds(pid) for pid in nodes)
    nats0 = sum(cpu_seconds(pid) for pid in nats)
    moto0 = cpu_seconds(peer.moto.pid)
    requests0 = s3_requests(peer.moto)
    client0 = _client_cpu_seconds()
    busy0 = machine_busy_seconds()
    began = time.monotonic()
    value = body()
    seconds = time.monotonic() - began
    busy = machine_busy_seconds() - busy0
    client = _client_cpu_seconds() - client0
    servers = sum(cpu_seconds(pid) for pid in nodes) - nodes0
    nats_cpu = sum(cpu_seconds(pid) for pid in nats) - nats0
    moto = cpu_seconds(peer.moto.pid) - moto0
    requests = s3_requests(peer.moto) - requests0
    ours.check_alive()
    return value, _Seen(
        seconds=seconds,
        client_cpu_s=client,
        server_cpu_s=servers,
        s3_cpu_s=moto,
        s3_requests=requests,
        other_cpu_s=max(0.0, busy - client - servers - nats_cpu - moto),
        load_avg_1m=load,
        nats_cpu_s=nats_cpu,
    )


def _peer_run(
    workload: str,
    round_no: int,
    seen: _Seen,
    files: int,
    size: int,
    contender: str = PEER,
) -> ClusterRun:
    return ClusterRun(
        workload=workload,
        contender=contender,
        round=round_no,
        seconds=round(seen.seconds, 3),
        files=files,
        bytes=size,
        files_per_s=round(files / seen.seconds, 1),
        mb_per_s=round(size / MB / seen.seconds, 1),
        client_cpu_s=round(seen.client_cpu_s, 2),
        client_cpu_share=round(seen.client_cpu_s / seen.seconds, 3),
        server_cpu_s=round(seen.server_cpu_s, 2),
        s3_cpu_s=round(seen.s3_cpu_s, 2),
        s3_requests=seen.s3_requests,
        other_cpu_s=round(seen.other_cpu_s, 2),
        load_avg_1m=round(seen.load_avg_1m, 2),
        nats_cpu_s=None if seen.nats_cpu_s is None else round(seen.nats_cpu_s, 2),
    )


def _from_single_node(run: Run) -> ClusterRun:
    """contenders.Run of our single-node server, in this script's terms. Its bench CPU is
    this process with its reaped children (none while it runs) and includes the client's
    connect, which its time does not: it gets no client_cpu_share."""
    return ClusterRun(
        workload="small" if run.workload == "small" else "large",
        contender=SINGLE_NODE,
        round=run.round,
        seconds=run.seconds,
        files=run.files,
        bytes=run.output_bytes,
        files_per_s=run.files_per_s,
        mb_per_s=run.mb_per_s,
        client_cpu_s=run.bench_cpu_s,
        client_cpu_share=None,
        server_cpu_s=run.server_cpu_s,
        s3_cpu_s=None,
        s3_requests=None,
        other_cpu_s=run.other_cpu_s,
        load_avg_1m=run.load_avg_1m or 0.0,
    )


# --- the peer's runs ------------------------------------------------------------------------


def run_peer_small(
    cluster: PeerCluster, files: Sequence[tuple[str, bytes]], in_flight: int, round_no: int
) -> ClusterRun:
    """Every small file by creation-with-upload, spread over the instances; then every
    object's size, and every 97th object's bytes, checked in S3."""
    import cluster_load  # needs aiohttp, which main() checks for first

    urls = [proc.url for proc in cluster.instances]
    named = [(f"r{round_no}-{name}", body) for name, body in files]
    locations, seen = measure_peer(
        cluster, lambda: asyncio.run(cluster_load.upload_many(urls, named, in_flight))
    )
    keys = [cluster_load.upload_key(location) for location in locations]
    sizes = object_sizes(cluster.moto.url, cluster.bucket, keys)
    wrong = [key for key in keys if sizes.get(key) != SMALL_FILE_BYTES]
    if wrong:
        raise BenchError(f"{len(wrong)} small files missing or short in S3, e.g. {wrong[0]}")
    for index in range(0, len(keys), 97):
        _, sha = object_digest(cluster.moto.url, cluster.bucket, keys[index])
        if sha != hashlib.sha256(files[index][1]).hexdigest():
            raise BenchError(f"s3 object {keys[index]} differs from {files[index][0]}")
    return _peer_run("small", round_no, seen, len(files), len(files) * SMALL_FILE_BYTES)


def run_peer_large(
    cluster: PeerCluster, item: Input, patch_bytes: int, round_no: int
) -> ClusterRun:
    """The large file to the first instance, by PATCH; then its bytes checked in S3."""
    import cluster_load  # needs aiohttp, which main() checks for first

    url = cluster.instances[round_no % INSTANCES].url
    location, seen = measure_peer(
        cluster,
        lambda: asyncio.run(
            cluster_load.upload_large(url, item.plain, item.size, f"large-r{round_no}", patch_bytes)
        ),
    )
    key = cluster_load.upload_key(location)
    size, sha = object_digest(cluster.moto.url, cluster.bucket, key)
    if size != item.size or sha != item.sha256:
        raise BenchError(f"s3 object {key} ({size} bytes) differs from {item.plain}")
    return _peer_run("large", round_no, seen, 1, item.size)


def run_peer_failover(cluster: PeerCluster, item: Input, round_no: int) -> FailoverRun:
    """Kill the instance holding the upload mid-PATCH; resume on the other; check S3."""
    import cluster_load  # needs aiohttp, which main() checks for first

    first, survivor = cluster.instances[0], cluster.instances[1]
    load = os.getloadavg()[0]
    seen = asyncio.run(
        cluster_load.failover(
            first.url,
            survivor.url,
            item.plain,
            item.size,
            f"failover-r{round_no}",
            lambda: kill_hard(first),
            PART_SIZE_MIB * MIB,
        )
    )
    verified: bool | None = None
    if seen.served:
        key = cluster_load.upload_key(seen.location)
        size, sha = object_digest(cluster.moto.url, cluster.bucket, key)
        verified = size == item.size and sha == item.sha256
    return FailoverRun(
        round=round_no,
        size=seen.size,
        sent_before_kill=seen.sent_before_kill,
        survivor_head_status=seen.survivor_head_status,
        survivor_offset=seen.survivor_offset,
        resent_bytes=max(0, seen.sent_before_kill - max(seen.survivor_offset, 0)),
        served=seen.served,
        kill_to_head_s=seen.kill_to_head_s,
        kill_to_first_patch_s=seen.kill_to_first_patch_s,
        kill_to_done_s=seen.kill_to_done_s,
        verified=verified,
        first_patch_error=seen.first_patch_error,
        refused=seen.refused,
        offset_conflicts=seen.offset_conflicts,
        load_avg_1m=round(load, 2),
    )


# --- our cluster's runs ---------------------------------------------------------------------


def run_ours_cluster_small(
    ours: OursCluster,
    peer: PeerCluster,
    paths: Sequence[Path],
    files: Sequence[tuple[str, bytes]],
    in_flight: int,
    round_no: int,
) -> ClusterRun:
    """Every small file's .zst, file i sent starting at node i mod 2, with as many in
    flight as the peer's client; then every file checked in S3 as the peer's are."""
    names = [f"r{round_no}-{name}" for name, _ in files]
    _, seen = measure_ours_cluster(
        ours, peer, lambda: run_async(send_small(ours, paths, names, in_flight))
    )
    check_small_in_s3(ours, names, [body for _, body in files], SMALL_FILE_BYTES)
    return _peer_run(
        "small", round_no, seen, len(files), len(files) * SMALL_FILE_BYTES, OURS_CLUSTER
    )


def run_ours_cluster_large(
    ours: OursCluster, peer: PeerCluster, work: Path, item: Input, round_no: int
) -> ClusterRun:
    """The large file's .zst, starting at node 1 or 2 by round, until PUBLISHED is
    checked; then the published object's bytes checked in S3, and the object deleted."""
    name = f"cluster-large-r{round_no}"
    size, seen = measure_ours_cluster(
        ours,
        peer,
        lambda: run_async(send_large(ours, item.zst, name, round_no % NODES, work)),
    )
    _check_object(ours, name, size, item)
    return _peer_run("large", round_no, seen, 1, item.size, OURS_CLUSTER)


def _check_object(ours: OursCluster, name: str, published: int, item: Input) -> None:
    key = s3_key(name)
    size, sha = object_digest(ours.endpoint, ours.bucket, key)
    if published != item.size or size != item.size or sha != item.sha256:
        raise BenchError(
            f"s3 object {key} ({size} bytes, {published} published) differs from {item.plain}"
        )
    # moto keeps every object in its memory; ours is checked and no longer needed
    s3_client(ours.endpoint).delete_object(Bucket=ours.bucket, Key=key)


def run_ours_cluster_failover(
    ours: OursCluster, work: Path, item: Input, round_no: int
) -> OursFailoverRun:
    """Kill -9 the node owning the upload once half of it is acknowledged; the client
    fails over to the other node; then the object checked in S3."""
    name = f"cluster-failover-r{round_no}"
    load = os.getloadavg()[0]
    try:
        seen = run_async(send_with_failover(ours, item.zst, name, work))
    # the client's own errors, and the run's bound: recorded as a failed failover
    except (PostOfficeError, TimeoutError, BenchError) as exc:
        for node in ours.nodes:  # the work dir goes at the end: the logs say why
            say(f"{node.name} log tail:\n{tail(node.log_path)}")
        return OursFailoverRun(
            round=round_no,
            size=item.size,
            payload_bytes=0,
            acked_before_kill=0,
            acked_at_first_survivor_ack=0,
            kill_to_failover_s=None,
            kill_to_survivor_status_s=None,
            kill_to_first_ack_s=None,
            kill_to_survivor_s=None,
            kill_to_done_s=None,
            verified=False,
            error=f"{type(exc).__name__}: {exc}"[:300],
            load_avg_1m=round(load, 2),
        )
    error = ""
    try:
        _check_object(ours, name, seen.published_size, item)
    except BenchError as exc:
        error = str(exc)
    return OursFailoverRun(
        round=round_no,
        size=item.size,
        payload_bytes=seen.payload_bytes,
        acked_before_kill=seen.acked_before_kill,
        acked_at_first_survivor_ack=seen.acked_at_first_survivor_ack,
        kill_to_failover_s=seen.kill_to_failover_s,
        kill_to_survivor_status_s=seen.kill_to_survivor_status_s,
        kill_to_first_ack_s=seen.kill_to_first_ack_s,
        kill_to_survivor_s=seen.kill_to_first_ack_s
        if seen.kill_to_first_ack_s is not None
        else seen.kill_to_survivor_status_s,
        kill_to_done_s=seen.kill_to_done_s,
        verified=not error,
        error=error,
        load_avg_1m=round(load, 2),
    )


def ours_failover_line(run: OursFailoverRun, rounds: int) -> str:
    if run.kill_to_done_s is None:
        return f"[failover round {run.round}/{rounds}] ours_cluster: FAILED: {run.error}"
    return (
        f"[failover round {run.round}/{rounds}] ours_cluster: owner killed with "
        f"{run.acked_before_kill:,} of {run.payload_bytes:,} bytes acked; client failed over "
        f"{run.kill_to_failover_s} s, survivor's STATUS {run.kill_to_survivor_status_s} s, "
        f"its first ACK {run.kill_to_first_ack_s} s, "
        f"published {run.kill_to_done_s:.2f} s after the kill; "
        f"S3 bytes {'match' if run.verified else 'DIFFER'}"
    )


def probe_two_writers(cluster: PeerCluster, item: Input) -> dict[str, object]:
    """Untimed: ask the second instance to write an upload the first is still receiving,
    and see whether it takes it and what the upload holds afterwards."""
    import cluster_load  # needs aiohttp, which main() checks for first

    first, second = cluster.instances[0], cluster.instances[1]
    seen = asyncio.run(
        cluster_load.two_writers(
            first.url, second.url, item.plain, item.size, "two-writers", PART_SIZE_MIB * MIB
        )
    )
    check = "not complete on either instance"
    if item.size in seen.final_offsets:
        key = cluster_load.upload_key(seen.location)
        check = compare_object(cluster.moto.url, cluster.bucket, key, item.plain)
    return {
        **dataclasses.asdict(seen),
        "second_accepted_while_first_wrote": seen.second_status == 204,
        "object_check": check,
    }


def two_writers_line(found: dict[str, object]) -> str:
    return (
        f"[two writers] instance 2, asked while instance 1 was receiving the upload "
        f"({found['sent_to_first']:,} bytes sent to it): HEAD offset {found['second_offset']:,},"
        f" PATCH answered {found['second_status']}; instance 1's PATCH: "
        f"{found['first_outcome']}; offsets afterwards {found['final_offsets']}; "
        f"the object in S3: {found['object_check']}"
    )


# --- the script -----------------------------------------------------------------------------


def human_line(run: ClusterRun, rounds: int) -> str:
    figure = (
        f"{run.files_per_s:>9,.1f} files/s"
        if run.workload == "small"
        else f"{run.mb_per_s:>8,.1f} MB/s"
    )
    servers = "" if run.server_cpu_s is None else f", servers cpu {run.server_cpu_s:.1f} s"
    s3 = (
        ""
        if run.s3_cpu_s is None or run.s3_requests is None
        else f", s3 (moto) cpu {run.s3_cpu_s:.1f} s for {run.s3_requests:,} requests"
        f" ({run.s3_requests / run.files:,.1f} a file)"
    )
    if run.nats_cpu_s is not None:
        s3 += f", nats cpu {run.nats_cpu_s:.1f} s"
    share = "" if run.client_cpu_share is None else f" = {run.client_cpu_share:.0%} of a core"
    return (
        f"[{run.workload:<5} round {run.round}/{rounds}] {run.contender:<16} {figure} "
        f"({run.seconds:.2f} s; client cpu {run.client_cpu_s:.2f} s{share}{servers}{s3}, "
        f"other {run.other_cpu_s:.1f} s; "
        f"load {run.load_avg_1m})"
    )


def failover_line(run: FailoverRun, rounds: int) -> str:
    if not run.served:
        return (
            f"[failover round {run.round}/{rounds}] the survivor did not serve the upload: "
            f"{run.refused} (HEAD {run.kill_to_head_s:.3f} s after the kill)"
        )
    return (
        f"[failover round {run.round}/{rounds}] survivor served it: HEAD {run.kill_to_head_s:.3f}"
        f" s, first PATCH accepted {run.kill_to_first_patch_s:.3f} s, done "
        f"{run.kill_to_done_s:.2f} s after the kill; offset {run.survivor_offset:,} of "
        f"{run.sent_before_kill:,} sent; {run.offset_conflicts} offset conflicts (409); "
        f"S3 bytes {'match' if run.verified else 'DIFFER'}"
    )


def _dig(tree: object, *keys: str) -> float | None:
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return float(tree) if isinstance(tree, int | float) else None


def goals(result: dict[str, object]) -> dict[str, object]:
    """Our cluster against the peer and the goals, ours against our single node, and our
    single node against the figures docs/benchmarks.md records."""
    results = result["results"]
    found: dict[str, object] = {}
    for workload in ("small", "large"):
        ratios = (workload, "ratios")
        over_peer = _dig(results, *ratios, f"{OURS_CLUSTER}_over_{PEER}")
        unit = "files_per_s" if workload == "small" else "mb_per_s"
        single = _dig(results, workload, "contenders", SINGLE_NODE, unit)
        recorded = RECORDED_SINGLE_NODE[workload]
        found[workload] = {
            "unit": unit,
            "ours_cluster_over_peer": over_peer,
            "goal_at_least": GOALS[workload],
            "met": None if over_peer is None else over_peer >= GOALS[workload],
            "ours_cluster_over_single_node": _dig(
                results, *ratios, f"{OURS_CLUSTER}_over_{SINGLE_NODE}"
            ),
            "single_node": single,
            "single_node_recorded": recorded,
            "single_node_over_recorded": None if single is None else round(single / recorded, 3),
            "single_node_within_5_percent": None
            if single is None
            else abs(single / recorded - 1) <= 0.05,
        }
    ours = _dig(result, "ours_cluster_failover", "kill_to_survivor_s")
    peer = _dig(result, "failover", "kill_to_first_patch_s")
    found["failover"] = {
        "ours_kill_to_survivor_s": ours,
        "peer_kill_to_first_patch_s": peer,
        "ours_over_peer": None if ours is None or not peer else round(ours / peer, 2),
        "goal_at_most_s": GOALS["failover_s"],
        "met": None if ours is None else ours <= GOALS["failover_s"],
    }
    return found


def goal_lines(found: dict[str, object]) -> list[str]:
    """The goals, one line each, for stderr."""
    lines: list[str] = []
    for workload in ("small", "large"):
        entry = found[workload]
        assert isinstance(entry, dict)
        lines.append(
            f"[goal {workload}] {OURS_CLUSTER} / peer {entry['unit']}: "
            f"{entry['ours_cluster_over_peer']} (goal at least {entry['goal_at_least']}: "
            f"{'met' if entry['met'] else 'NOT met'}); {OURS_CLUSTER} / single node: "
            f"{entry['ours_cluster_over_single_node']}; single node {entry['single_node']} "
            f"against {entry['single_node_recorded']} recorded = "
            f"{entry['single_node_over_recorded']} "
            f"({'within' if entry['single_node_within_5_percent'] else 'NOT within'} 5 %)"
        )
    entry = found["failover"]
    assert isinstance(entry, dict)
    lines.append(
        f"[goal failover] {OURS_CLUSTER} kill to the survivor's first ACK (or STATUS when "
        f"nothing was left to send) {entry['ours_kill_to_survivor_s']}"
        f" s (goal at most {entry['goal_at_most_s']} s: "
        f"{'met' if entry['met'] else 'NOT met'}); the peer's kill to first PATCH accepted "
        f"{entry['peer_kill_to_first_patch_s']} s; ours / peer {entry['ours_over_peer']}"
    )
    return lines


@contextlib.contextmanager
def work_directory(given: Path | None) -> Iterator[Path]:
    """A fresh temp dir (removed at the end), or a new subdir of `given` (that one too)."""
    parent = given if given is not None else Path("/tmp")
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-cluster-", dir=parent))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _small_bodies(paths: Sequence[Path]) -> list[tuple[str, bytes]]:
    """Each small input as the user's file: the 4 KiB the .zst holds (the peer stores
    what it is sent; ours is sent the .zst and publishes these bytes)."""
    decompressor = zstandard.ZstdDecompressor()
    return [
        (path.name.removesuffix(".zst"), decompressor.decompress(path.read_bytes()))
        for path in paths
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print progress to stderr and one JSON object to stdout."""
    args = parse_args(argv)
    tools = find_peer_tools()
    if isinstance(tools, str):
        say(f"error: {tools}")
        return EXIT_MISSING_TOOL
    postoffice = find_postoffice()
    if postoffice is None:
        say("error: the postoffice command was not found; run `make setup` first")
        return EXIT_MISSING_TOOL
    try:
        ensure_node_modules(tools.npm)
    except (BenchError, OSError) as exc:
        say(f"error: the peer's npm packages could not be installed: {exc}".splitlines()[0])
        return EXIT_MISSING_TOOL
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    nats_server = find_nats_server()
    why_not: str | None = None
    if not has_cluster_mode(postoffice):
        why_not = "`postoffice ingest serve` has no --cluster: the peer only"
    elif nats_server is None:
        why_not = "nats-server is not installed (make tools installs it)"
    ours_entry: dict[str, object] = {"name": OURS_CLUSTER, "measured": why_not is None}
    if why_not is not None:
        ours_entry["why"] = why_not
        say(f"{OURS_CLUSTER}: not measured ({why_not})")
    contenders: list[dict[str, object]] = [
        {"name": PEER, "measured": True},
        {"name": SINGLE_NODE, "measured": True},
        ours_entry,
    ]
    started_at = datetime.datetime.now(datetime.UTC)
    runs: list[ClusterRun] = []
    failovers: list[FailoverRun] = []
    ours_failovers: list[OursFailoverRun] = []
    probes: dict[str, object] = {}
    inputs: dict[str, object] = {}
    with work_directory(args.work_dir) as work:
        machine = machine_facts(None, work)
        machine["work_dir_disk"] = watch_disk(work)
        machine["peer_versions"] = package_versions()
        say(f"work dir {work}")
        try:
            large = make_large_input(work, "random", args.size_mib * MIB)
            inputs["large"] = {"bytes": large.size, "sha256": large.sha256, "kind": "random"}
            small_paths, inputs["small"] = make_small_inputs(work, args.small_count)
            small_files = _small_bodies(small_paths)
            say(f"inputs: {inputs}")
            runs, failovers, ours_failovers, probes = _rounds(
                args,
                tools,
                postoffice,
                nats_server if why_not is None else None,
                work,
                large,
                small_paths,
                small_files,
            )
        except BenchError as exc:
            say(f"error: {exc}")
            return EXIT_RUN_FAILED
    patch = "one PATCH" if args.patch_mib == 0 else f"PATCHes of {args.patch_mib} MiB"
    result = {
        "benchmark": "ingest-cluster",
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round((datetime.datetime.now(datetime.UTC) - started_at).total_seconds(), 1),
        "contenders": contenders,
        "parameters": {
            "small_count": args.small_count,
            "size_mib": args.size_mib,
            "rounds": args.rounds,
            "quick": args.quick,
            "in_flight": args.in_flight,
            "instances": INSTANCES,
            "part_size_mib": PART_SIZE_MIB,
            "order": "per round: a fresh moto and two tus instances, a fresh NATS cluster "
            "and two of our nodes on a bucket of their own on that moto; small (peer, "
            "single-node, ours_cluster), large (peer, single-node, ours_cluster), "
            "two_writers (round 1), failover (peer, ours_cluster)",
            "mb": "10^6 bytes of the user's file",
            PEER: f"{INSTANCES} x node bench/ingest/tus-s3/server.mjs (@tus/server, "
            "@tus/s3-store, in-memory locker) on one moto_server bucket, path-style, "
            f"part size {PART_SIZE_MIB} MiB; client: aiohttp, small files by "
            f"creation-with-upload with {args.in_flight} in flight, file i to instance "
            f"i mod {INSTANCES}; the large file created, then {patch}",
            SINGLE_NODE: "postoffice ingest serve --sys-base B --data-base 0 --data-dir D "
            f"(fsync on); IngestClient(parallel={PARALLEL}, chunk_size="
            f"{CHUNK_BYTES // MIB} MiB) sent each file's .zst, small files "
            f"{SMALL_CONCURRENCY} at a time, timed until PUBLISHED is verified",
            OURS_CLUSTER: f"{NODES} x postoffice ingest serve --cluster N1,N2,N3 --s3 MOTO "
            "--bucket B --node-name N (fsync on, defaults otherwise) on 3 nats-server "
            "(JetStream) and the peer's moto; IngestClient(nodes=[...], parallel="
            f"{PARALLEL}, chunk_size={CHUNK_BYTES // MIB} MiB) sent each file's .zst; small "
            f"files with {args.in_flight} in flight over two clients, file i starting at "
            f"node i mod {NODES}; each send timed until PUBLISHED is checked; the objects "
            "then checked in S3 as the peer's",
            "ours_cluster_failover": "the large file's .zst from node 1 (its owner); once "
            "half of it is acknowledged, SIGKILL node 1; the client fails over to node 2, "
            "which takes the upload over once node 1's heartbeat is stale (4 s); timed from "
            "the kill to the client's failover, to node 2's first ACK and to PUBLISHED",
            "failover": "create on instance 1, one PATCH of the whole file; SIGKILL "
            "instance 1 once half is sent; HEAD on instance 2, then PATCHes of "
            f"{PART_SIZE_MIB} MiB from its offset (after a 409, HEAD again and go on from "
            "the new offset, as tus-js-client retries); the object then read back from S3",
            "two_writers": "round 1, untimed, before the failover: create on instance 1, "
            "one PATCH of the whole file; once a quarter is sent, HEAD and a PATCH of "
            f"{PART_SIZE_MIB} MiB on instance 2 while instance 1 still receives; then HEAD "
            "on both, and the object compared with the file if either says it is complete",
            "not_the_same": "the peer keeps the bytes in S3 (moto, in its memory) with no "
            "fsync; ours publishes to a local disk with fsync; ours is sent .zst and "
            "decompresses, the peer is sent the plain file",
        },
        "machine": machine,
        "inputs": inputs,
        "results": summarise(
            runs, [(PEER, SINGLE_NODE), (OURS_CLUSTER, PEER), (OURS_CLUSTER, SINGLE_NODE)]
        ),
        "failover": summarise_failover(failovers),
        "ours_cluster_failover": summarise_ours_failover(ours_failovers),
        "probes": probes,
        "runs": [dataclasses.asdict(run) for run in runs],
        "failover_runs": [dataclasses.asdict(run) for run in failovers],
        "ours_cluster_failover_runs": [dataclasses.asdict(run) for run in ours_failovers],
    }
    found_goals = goals(result)
    result["goals"] = found_goals
    for line in goal_lines(found_goals):
        say(line)
    text = json.dumps(result, indent=2)
    if args.json is not None:
        args.json.write_text(text + "\n")
    print(text)
    return 0


def _round_runs(
    args: argparse.Namespace,
    cluster: PeerCluster,
    ours: Server,
    mine: OursCluster | None,
    work: Path,
    large: Input,
    small_paths: Sequence[Path],
    small_files: Sequence[tuple[str, bytes]],
    round_no: int,
) -> Iterator[ClusterRun]:
    """One round's timed runs, in the order parameters.order gives."""
    patch_bytes = args.patch_mib * MIB if args.patch_mib else large.size
    yield run_peer_small(cluster, small_files, args.in_flight, round_no)
    yield _from_single_node(run_ours_small(ours, small_paths, round_no))
    if mine is not None:
        yield run_ours_cluster_small(
            mine, cluster, small_paths, small_files, args.in_flight, round_no
        )
    yield run_peer_large(cluster, large, patch_bytes, round_no)
    yield _from_single_node(run_ours(ours, work, large, round_no))
    if mine is not None:
        yield run_ours_cluster_large(mine, cluster, work, large, round_no)


def _rounds(
    args: argparse.Namespace,
    tools: PeerTools,
    postoffice: str,
    nats_server: str | None,
    work: Path,
    large: Input,
    small_paths: Sequence[Path],
    small_files: Sequence[tuple[str, bytes]],
) -> tuple[list[ClusterRun], list[FailoverRun], list[OursFailoverRun], dict[str, object]]:
    """Every round; our cluster's runs only when `nats_server` is given."""
    runs: list[ClusterRun] = []
    failovers: list[FailoverRun] = []
    ours_failovers: list[OursFailoverRun] = []
    probes: dict[str, object] = {}
    single: Server | None = None
    try:
        single = ours = start_ours(work, postoffice, SINGLE_NODE, via_part=False)
        for round_no in range(1, args.rounds + 1):
            folder = work / "peer" / f"r{round_no}"
            with contextlib.ExitStack() as stack:
                cluster = stack.enter_context(
                    peer_cluster(tools, folder, INSTANCES, f"tus-bench-r{round_no}")
                )
                say("started " + ", ".join(repr(p) for p in [cluster.moto, *cluster.instances]))
                mine: OursCluster | None = None
                if nats_server is not None:
                    mine = stack.enter_context(
                        ours_cluster(nats_server, postoffice, work, cluster, round_no)
                    )
                    started = [*mine.nats, *mine.nodes]
                    say("started " + ", ".join(f"{p.name} pid={p.pid} :{p.port}" for p in started))
                for done in _round_runs(
                    args, cluster, ours, mine, work, large, small_paths, small_files, round_no
                ):
                    runs.append(done)
                    say(human_line(done, args.rounds))
                if round_no == 1:
                    found = probe_two_writers(cluster, large)
                    probes["two_writers"] = found
                    say(two_writers_line(found))
                failover = run_peer_failover(cluster, large, round_no)
                failovers.append(failover)
                say(failover_line(failover, args.rounds))
                if mine is not None:
                    ours_failover = run_ours_cluster_failover(mine, work, large, round_no)
                    ours_failovers.append(ours_failover)
                    say(ours_failover_line(ours_failover, args.rounds))
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        if single is not None:
            stop(single)
    return runs, failovers, ours_failovers, probes


if __name__ == "__main__":
    sys.exit(main())
