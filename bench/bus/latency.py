"""Bus micro-benchmark: 64-byte ping-pong between two processes over two channels
(polling and blocking wake-ups), and one-way throughput; prints one JSON object.

    python bench/bus/latency.py [--rounds 20000] [--messages 200000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from postoffice.bus import (
    BusLocation,
    Channel,
    ChannelSpec,
    Publisher,
    Subscriber,
    Triggers,
    create_channel,
    new_eventfd,
)

PAYLOAD_BYTES = 64
FORK = multiprocessing.get_context("fork")


class Link:
    """One channel with one publisher and one subscriber registered, fds made here."""

    def __init__(self, location: BusLocation, channel_id: int, *, reliable: bool) -> None:
        spec = ChannelSpec(channel_id=channel_id, name=f"bench{channel_id}", num_slots=64,
                           slot_size=PAYLOAD_BYTES)  # fmt: skip
        self.location = location
        self.fds = create_channel(location, spec)
        channel = Channel.open(location, self.fds)
        self.pub_id = channel.add_publisher(reliable=reliable)
        self.sub_id = channel.add_subscriber(reliable=reliable)
        self.pub_fd = new_eventfd() if reliable else None
        self.sub_fd = new_eventfd()
        channel.close()

    def _open(self) -> tuple[Channel, Triggers]:
        channel = Channel.open(self.location, self.fds)
        triggers = Triggers(channel.ccb)
        triggers.set_subscriber(self.sub_id, self.sub_fd)
        if self.pub_fd is not None:
            triggers.set_publisher(self.pub_id, self.pub_fd)
        return channel, triggers

    def publisher(self) -> Publisher:
        channel, triggers = self._open()
        return Publisher(channel, self.pub_id, triggers=triggers, eventfd=self.pub_fd)

    def subscriber(self) -> Subscriber:
        channel, triggers = self._open()
        return Subscriber(channel, self.sub_id, triggers=triggers, eventfd=self.sub_fd)


def receive(subscriber: Subscriber, blocking: bool) -> Any:
    while True:
        message = subscriber.read()
        if message is not None:
            return message
        if blocking:
            subscriber.wait(10.0)


def echo(there: Link, back: Link, rounds: int, blocking: bool) -> None:
    subscriber, publisher = there.subscriber(), back.publisher()
    payload = bytes(PAYLOAD_BYTES)
    for _ in range(rounds):
        receive(subscriber, blocking).release()
        publisher.publish_bytes(payload)


def ping_pong(location: BusLocation, rounds: int, blocking: bool, base: int) -> dict[str, float]:
    there, back = Link(location, base, reliable=False), Link(location, base + 1, reliable=False)
    child = FORK.Process(target=echo, args=(there, back, rounds, blocking), daemon=True)
    child.start()
    publisher, subscriber = there.publisher(), back.subscriber()
    payload = bytes(PAYLOAD_BYTES)
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        publisher.publish_bytes(payload)
        receive(subscriber, blocking).release()
        samples.append(time.perf_counter_ns() - start)
    child.join(60)
    warm = samples[len(samples) // 10 :]
    return {
        "median_one_way_us": statistics.median(warm) / 2000,
        "p99_one_way_us": sorted(warm)[int(len(warm) * 0.99)] / 2000,
        "round_trips_per_s": 1e9 / statistics.mean(warm),
    }


def flood(link: Link, count: int) -> None:
    publisher = link.publisher()
    payload = bytes(PAYLOAD_BYTES)
    for _ in range(count):
        while publisher.publish_bytes(payload) is None:
            publisher.wait(10.0)


def one_way(location: BusLocation, count: int, base: int) -> dict[str, float]:
    link = Link(location, base, reliable=True)
    subscriber = link.subscriber()
    child = FORK.Process(target=flood, args=(link, count), daemon=True)
    start = time.perf_counter()
    child.start()
    got = 0
    while got < count:
        batch = subscriber.read()
        if batch is None:
            subscriber.wait(10.0)
            continue
        batch.release()
        got += 1
    elapsed = time.perf_counter() - start
    child.join(60)
    return {"messages": count, "seconds": elapsed, "msgs_per_s": count / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20_000)
    parser.add_argument("--messages", type=int, default=200_000)
    args = parser.parse_args()
    base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None
    directory = Path(tempfile.mkdtemp(prefix="po-bus-bench-", dir=base))
    try:
        location = BusLocation.new(directory)
        results = {
            "ping_pong_polling": ping_pong(location, args.rounds, False, 0),
            "ping_pong_blocking": ping_pong(location, args.rounds, True, 2),
            "one_way_reliable_blocking": one_way(location, args.messages, 4),
        }
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(json.dumps({
        "benchmark": "bus-latency",
        "parameters": {"payload_bytes": PAYLOAD_BYTES, "rounds": args.rounds,
                       "messages": args.messages, "num_slots": 64},
        "machine": {"python": platform.python_version(), "system": platform.platform(),
                    "cpus": os.cpu_count()},
        "results": results,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
