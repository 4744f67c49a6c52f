"""The cluster benchmark's records and figures: one run, medians, paired ratios."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from typing import final


@final
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ClusterRun:
    """One timed workload by one contender in one round."""

    workload: str  # "small" or "large"
    contender: str
    round: int
    seconds: float
    files: int
    bytes: int
    files_per_s: float
    mb_per_s: float
    #: The load client's own CPU (this process), and that over the wall time: 1.0 is one
    #: core kept busy, the point where the client would be the bottleneck. Ours' CPU also
    #: covers its client's connect, which its time leaves out: no share for it.
    client_cpu_s: float
    client_cpu_share: float | None
    server_cpu_s: float | None  # the contender's server processes, summed
    s3_cpu_s: float | None  # moto_server, for the peer
    s3_requests: int | None  # the requests moto served during the run
    other_cpu_s: float  # the machine's busy time minus all of the above
    load_avg_1m: float
    nats_cpu_s: float | None = None  # our cluster's NATS servers, summed


@final
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FailoverRun:
    """One failover of the peer: what the client saw, and whether S3 holds the file."""

    round: int
    size: int
    sent_before_kill: int
    survivor_head_status: int
    survivor_offset: int
    #: Bytes the client had sent to the killed instance beyond the survivor's offset.
    resent_bytes: int
    served: bool
    kill_to_head_s: float
    kill_to_first_patch_s: float | None
    kill_to_done_s: float | None
    verified: bool | None  # the object in S3 has the input's bytes (None: not served)
    first_patch_error: str
    refused: str
    offset_conflicts: int  # 409s from the survivor, each answered by a new HEAD
    load_avg_1m: float


def _median(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


def summarise(runs: Sequence[ClusterRun], pairs: Sequence[tuple[str, str]]) -> dict[str, object]:
    """Medians per workload and contender, and each (top, bottom) pair's ratio: the median
    over rounds of the ratio of runs from the same round."""
    summary: dict[str, object] = {}
    for workload in dict.fromkeys(run.workload for run in runs):
        field = "files_per_s" if workload == "small" else "mb_per_s"
        mine = [run for run in runs if run.workload == workload]
        contenders: dict[str, object] = {}
        for contender in dict.fromkeys(run.contender for run in mine):
            picked = [run for run in mine if run.contender == contender]
            contenders[contender] = {
                field: _median([getattr(run, field) for run in picked]),
                "seconds": _median([run.seconds for run in picked]),
                "client_cpu_s": _median([run.client_cpu_s for run in picked]),
                "client_cpu_share": _median(
                    [run.client_cpu_share for run in picked if run.client_cpu_share is not None]
                ),
                "server_cpu_s": _median(
                    [run.server_cpu_s for run in picked if run.server_cpu_s is not None]
                ),
                "s3_cpu_s": _median([run.s3_cpu_s for run in picked if run.s3_cpu_s is not None]),
                "s3_requests": _median(
                    [run.s3_requests for run in picked if run.s3_requests is not None]
                ),
                "nats_cpu_s": _median(
                    [run.nats_cpu_s for run in picked if run.nats_cpu_s is not None]
                ),
                "max_other_cpu_s": max(run.other_cpu_s for run in picked),
                "load_avg_1m": [run.load_avg_1m for run in picked],
                "rounds": len(picked),
            }
        ratios: dict[str, float] = {}
        for top, bottom in pairs:
            value = _paired_ratio(mine, top, bottom, field)
            if value is not None:
                ratios[f"{top}_over_{bottom}"] = value
        summary[workload] = {"unit": field, "contenders": contenders, "ratios": ratios}
    return summary


def _paired_ratio(runs: Sequence[ClusterRun], top: str, bottom: str, field: str) -> float | None:
    by_round: dict[int, dict[str, ClusterRun]] = {}
    for run in runs:
        by_round.setdefault(run.round, {})[run.contender] = run
    ratios = [
        getattr(pair[top], field) / getattr(pair[bottom], field)
        for pair in by_round.values()
        if top in pair and bottom in pair and getattr(pair[bottom], field) > 0
    ]
    return _median(ratios)


def summarise_failover(runs: Sequence[FailoverRun]) -> dict[str, object]:
    """Medians of the failover times, and how many rounds the survivor served."""
    served = [run for run in runs if run.served]
    return {
        "rounds": len(runs),
        "served_rounds": len(served),
        "verified_rounds": sum(1 for run in runs if run.verified),
        "kill_to_first_patch_s": _median(
            [run.kill_to_first_patch_s for run in served if run.kill_to_first_patch_s is not None]
        ),
        "kill_to_head_s": _median([run.kill_to_head_s for run in runs]),
        "kill_to_done_s": _median(
            [run.kill_to_done_s for run in served if run.kill_to_done_s is not None]
        ),
        "resent_bytes": _median([run.resent_bytes for run in runs]),
        "offset_conflicts": [run.offset_conflicts for run in runs],
        "refused": sorted({run.refused for run in runs if run.refused}),
    }


@final
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class OursFailoverRun:
    """One failover of our cluster: the owner killed with half the upload acknowledged,
    the times the client saw after it, and whether S3 holds the file."""

    round: int
    size: int  # the file's bytes
    payload_bytes: int  # what the client sends: the .zst
    acked_before_kill: int
    acked_at_first_survivor_ack: int
    kill_to_failover_s: float | None  # the client gave up on the dead owner
    kill_to_survivor_status_s: float | None  # the survivor answered the client's QUERY
    kill_to_first_ack_s: float | None  # the survivor acknowledged a chunk
    #: The first ACK, or the survivor's STATUS when it held every chunk already (then
    #: nothing is left to acknowledge): the figure the failover goal is about.
    kill_to_survivor_s: float | None
    kill_to_done_s: float | None  # the PUBLISHED event checked
    verified: bool  # the object in S3 has the input's bytes
    error: str  # why the upload did not complete ("" when it did)
    load_avg_1m: float


def summarise_ours_failover(runs: Sequence[OursFailoverRun]) -> dict[str, object]:
    """Medians of our failover times, and how many rounds ended with the right bytes."""
    return {
        "rounds": len(runs),
        "verified_rounds": sum(1 for run in runs if run.verified),
        "kill_to_failover_s": _median(
            [run.kill_to_failover_s for run in runs if run.kill_to_failover_s is not None]
        ),
        "kill_to_survivor_status_s": _median(
            [
                run.kill_to_survivor_status_s
                for run in runs
                if run.kill_to_survivor_status_s is not None
            ]
        ),
        "kill_to_first_ack_s": _median(
            [run.kill_to_first_ack_s for run in runs if run.kill_to_first_ack_s is not None]
        ),
        "kill_to_survivor_s": _median(
            [run.kill_to_survivor_s for run in runs if run.kill_to_survivor_s is not None]
        ),
        "kill_to_done_s": _median(
            [run.kill_to_done_s for run in runs if run.kill_to_done_s is not None]
        ),
        "errors": [run.error for run in runs if run.error],
    }
