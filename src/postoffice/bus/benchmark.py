"""`postoffice bus bench`'s measurement (bus library layer): one channel on a running
server, this process publishing, a child process subscribing; one-way latency, then
throughput."""

from __future__ import annotations

import math
import multiprocessing
import os
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Final

from postoffice.bus.client import Client
from postoffice.bus.errors import BusError, BusUsageError
from postoffice.bus.publisher import Publisher
from postoffice.bus.subscriber import Subscriber

# Design
# ------
# Two phases over one channel, the subscriber in a child process (spawned: a fresh
# interpreter, nothing of this one's state inherited):
#
# latency     one message at a time: this process stamps it with CLOCK_MONOTONIC (one
#             clock for every process of the machine) and publishes; the child, woken
#             by its eventfd, takes the difference and answers on a second channel,
#             which this process waits for before the next message. No queue builds
#             up, so each figure is one publish plus one wake-up of a sleeping reader.
# throughput  every message back to back (a reliable publisher waits for slots); the
#             child reads until the last one and reports when it came: messages/s and
#             bytes/s from the first publish to that moment. An unreliable subscriber
#             that falls behind loses messages: `received` and `drops` say so.
#
# Each message starts with a header of (phase, sequence number, stamp), checked by the
# child. The publisher writes the whole payload, as a real one would; the child reads only
# the header (a subscriber reads in place: a copy would be its own choice, and cost).

#: A message's header: phase, sequence number, CLOCK_MONOTONIC stamp in ns.
_HEADER: Final = struct.Struct("<IQQ")
MIN_SIZE: Final = _HEADER.size
_LATENCY: Final = 1
_THROUGHPUT: Final = 2
#: How long either side waits for the other before it calls the run failed.
STALL_S: Final = 10.0
#: How long the child may take to start (a fresh interpreter importing the bus).
START_S: Final = 60.0
_SPAWN: Final = multiprocessing.get_context("spawn")


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchResult:
    """What one run measured. Latencies are one way, publish to read, in microseconds."""

    channel: str
    size: int
    count: int
    reliable: bool
    num_slots: int
    latency_median_us: float
    latency_p99_us: float
    latency_min_us: float
    latency_max_us: float
    received: int
    drops: int
    elapsed_s: float
    messages_per_s: float
    gb_per_s: float


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of ascending `sorted_values` (fraction 0..1). Raises
    BusUsageError for no values or a fraction outside 0..1."""
    if not sorted_values:
        raise BusUsageError("a percentile of no values")
    if not 0.0 <= fraction <= 1.0:
        raise BusUsageError(f"a percentile's fraction is 0..1, got {fraction}")
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize(
    *,
    channel: str,
    size: int,
    count: int,
    reliable: bool,
    num_slots: int,
    latencies_ns: Sequence[int],
    received: int,
    drops: int,
    elapsed_ns: int,
) -> BenchResult:
    """The result of a run from its raw figures. Raises BusUsageError for no latencies
    or a non-positive elapsed time."""
    if elapsed_ns <= 0:
        raise BusUsageError(f"a run's elapsed time is positive, got {elapsed_ns} ns")
    ordered = sorted(ns / 1000 for ns in latencies_ns)
    elapsed_s = elapsed_ns / 1e9
    return BenchResult(
        channel=channel, size=size, count=count, reliable=reliable, num_slots=num_slots,
        latency_median_us=percentile(ordered, 0.5), latency_p99_us=percentile(ordered, 0.99),
        latency_min_us=ordered[0], latency_max_us=ordered[-1], received=received,
        drops=drops, elapsed_s=elapsed_s, messages_per_s=received / elapsed_s,
        gb_per_s=received * size / elapsed_s / 1e9,
    )  # fmt: skip


def run(
    socket_path: Path | None,
    *,
    size: int,
    count: int,
    reliable: bool,
    num_slots: int,
    channel: str | None = None,
) -> BenchResult:
    """Measure the bus of the server at `socket_path`: `count` messages of `size` bytes
    in each phase, on a new channel of `num_slots` slots (named `channel`, by default
    after this process). Raises BusUsageError for a size under MIN_SIZE or a count
    under 1, the server's errors (BusConnectionError, a refusal), and BusError when the
    child fails or stalls."""
    if size < MIN_SIZE:
        raise BusUsageError(f"a benchmark message is at least {MIN_SIZE} bytes, got {size}")
    if count < 1:
        raise BusUsageError(f"a benchmark sends at least 1 message, got {count}")
    name = channel or f"bench/{os.getpid()}"
    with Client(socket_path, name="postoffice bus bench") as client:
        publisher = client.create_publisher(
            name, slot_size=size, num_slots=num_slots, reliable=reliable
        )
        acks = client.create_subscriber(f"{name}/ack", num_slots=4, slot_size=MIN_SIZE)
        parent_end, child_end = _SPAWN.Pipe()
        child = _SPAWN.Process(
            target=_child,
            args=(child_end, client.socket_path, name, reliable, count),
            name="postoffice bus bench subscriber",
            daemon=True,
        )
        child.start()
        child_end.close()
        try:
            _expect(parent_end, "ready", START_S)
            latencies = _latency_phase(publisher, acks, size, count, parent_end)
            start_ns = time.monotonic_ns()
            _throughput_phase(publisher, size, count)
            report = _expect(parent_end, "done", STALL_S + count * 0.001)
        except BaseException:
            child.kill()  # a run that failed here has nothing more to learn from it
            raise
        finally:
            child.join(STALL_S)
            if child.is_alive():
                child.kill()
                child.join(STALL_S)
            parent_end.close()
    if not (isinstance(report, tuple) and len(report) == 3):
        raise BusError(f"the benchmark's subscriber reported {report!r}")
    received, drops, last_ns = (int(value) for value in report)
    return summarize(
        channel=name, size=size, count=count, reliable=reliable, num_slots=num_slots,
        latencies_ns=latencies, received=received, drops=drops, elapsed_ns=last_ns - start_ns,
    )  # fmt: skip


def _expect(conn: Connection, what: str, timeout_s: float) -> object:
    """The child's next report, which must be `what`. Raises BusError otherwise."""
    if not conn.poll(timeout_s):
        raise BusError(f"the benchmark's subscriber said nothing in {timeout_s:g} s")
    try:
        kind, value = conn.recv()
    except EOFError:
        raise BusError("the benchmark's subscriber exited without a report") from None
    if kind != what:
        raise BusError(f"the benchmark's subscriber failed: {value}")
    return value


def _publish(publisher: Publisher, body: bytes, phase: int, sequence: int) -> None:
    size = _HEADER.size + len(body)
    view = publisher.get_buffer(size)
    while view is None:  # a reliable publisher, every slot unread: wait for the reader
        if not publisher.wait(STALL_S):
            raise BusError(f"no free slot in {STALL_S:g} s at message {sequence}")
        view = publisher.get_buffer(size)
    view[_HEADER.size :] = body
    _HEADER.pack_into(view, 0, phase, sequence, time.monotonic_ns())
    publisher.publish(size)


def _latency_phase(
    publisher: Publisher, acks: Subscriber, size: int, count: int, conn: Connection
) -> list[int]:
    body = _body(size)
    for sequence in range(count):
        _publish(publisher, body, _LATENCY, sequence)
        while (ack := acks.read()) is None:
            if not acks.wait(STALL_S):
                raise BusError(f"no answer to message {sequence} in {STALL_S:g} s")
        ack.release()
    latencies = _expect(conn, "latencies", STALL_S)
    if not isinstance(latencies, list) or len(latencies) != count:
        raise BusError(
            f"the benchmark's subscriber reported {latencies!r:.80}, not {count} latencies"
        )
    return [int(ns) for ns in latencies]


def _throughput_phase(publisher: Publisher, size: int, count: int) -> None:
    body = _body(size)
    for sequence in range(count):
        _publish(publisher, body, _THROUGHPUT, sequence)


def _body(size: int) -> bytes:
    """A message's payload after its header: bytes that are not all alike."""
    pattern = bytes(range(251))
    length = size - _HEADER.size
    return (pattern * (length // len(pattern) + 1))[:length]


# -- the child --------------------------------------------------------------------------


def _child(conn: Connection, socket_path: Path, name: str, reliable: bool, count: int) -> None:
    """The subscriber process: reports ("ready"), ("latencies", [ns...]) and ("done",
    (received, drops, ns of the last message)), or ("error", message)."""
    try:
        with Client(socket_path, name="postoffice bus bench subscriber") as client:
            subscriber = client.create_subscriber(name, reliable=reliable)
            answers = client.create_publisher(f"{name}/ack")
            conn.send(("ready", None))
            latencies: list[int] = []
            for sequence in range(count):
                stamp = _next(subscriber, _LATENCY, sequence)[1]
                latencies.append(time.monotonic_ns() - stamp)
                answers.publish_bytes(_HEADER.pack(_LATENCY, sequence, 0))
            conn.send(("latencies", latencies))
            received = 0
            while True:
                sequence, _ = _next(subscriber, _THROUGHPUT, None)
                received += 1
                if sequence == count - 1:
                    break
            conn.send(("done", (received, subscriber.drops, time.monotonic_ns())))
    except (BusError, OSError) as exc:
        conn.send(("error", str(exc)))
    finally:
        conn.close()


def _next(subscriber: Subscriber, phase: int, sequence: int | None) -> tuple[int, int]:
    """The next message's (sequence, stamp), checked to be of `phase` (and `sequence`)."""
    while (message := subscriber.read()) is None:
        if not subscriber.wait(STALL_S):
            raise BusError(f"no message in {STALL_S:g} s (phase {phase}, after {sequence})")
    with message:
        if message.size < MIN_SIZE:
            raise BusError(f"a message of {message.size} bytes, expected at least {MIN_SIZE}")
        got_phase, got_sequence, stamp = _HEADER.unpack_from(message.data)
    if got_phase != phase or (sequence is not None and got_sequence != sequence):
        raise BusError(
            f"message ({got_phase}, {got_sequence}) where ({phase}, {sequence}) was expected"
        )
    return got_sequence, stamp
