"""Publishing on 32 channels while subscribers come and go, in real processes against a
real server: nothing crashes or hangs, no message is corrupted, no slot stays held."""

from __future__ import annotations

import os
import random
import signal
import struct
import time
import zlib
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from postoffice.bus import Client, Message, Subscriber
from tests.integration.test_bus_server import FORK, Bus, expect, fork, served_bus

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SEED = 20_417
CHANNELS = 32
PUBLISHERS = 4  # processes, each publishing on CHANNELS // PUBLISHERS channels in turn
CHURNERS = 3  # processes subscribing and unsubscribing over and over
ROUNDS = 150  # subscriptions per churner
#: Bounds on the publishers: messages per channel, and seconds.
MAX_PER_CHANNEL = 20_000
DEADLINE_S = 60.0
#: Room for the unreliable channels' admission rule with every churner on one channel
#: (1 publisher + 4 subscribers + their max_active_messages + 1), and then some for a
#: subscriber whose disconnection the server has yet to see.
SLOTS = 24
WAIT_S = 10.0
#: A message: channel, sequence number, body length; the body; a CRC-32 of all before it.
HEAD = struct.Struct("<HII")
CRC = struct.Struct("<I")


def reliable(channel: int) -> bool:
    """Even channels have a reliable publisher, and their subscribers are reliable."""
    return channel % 2 == 0


def name(channel: int) -> str:
    return f"race/{channel}"


def message(channel: int, sequence: int) -> bytes:
    size = 1 + (channel * 131 + sequence * 17) % 200
    body = bytes((channel + sequence + i) & 0xFF for i in range(size))
    data = HEAD.pack(channel, sequence, size) + body
    return data + CRC.pack(zlib.crc32(data))


def check(channel: int, data: bytes) -> int:
    """The sequence number of an intact message of `channel`; AssertionError otherwise."""
    assert len(data) >= HEAD.size + CRC.size, f"channel {channel}: {len(data)} bytes"
    (crc,) = CRC.unpack_from(data, len(data) - CRC.size)
    assert zlib.crc32(data[: -CRC.size]) == crc, f"channel {channel}: bad CRC-32"
    got_channel, sequence, size = HEAD.unpack_from(data)
    assert got_channel == channel, f"channel {channel} carried a message of {got_channel}"
    assert data == message(channel, sequence), f"channel {channel}: message {sequence} changed"
    assert len(data) == HEAD.size + size + CRC.size
    return int(sequence)


def _publish(conn: Connection, socket_path: Path, index: int, stop: Event) -> dict[int, int]:
    """Publish on this process's channels in turn until told to stop (or the bounds):
    how many messages each got. Then wait for "exit", still registered, so that the test
    can look at the channels."""
    mine = list(range(index, CHANNELS, PUBLISHERS))
    with Client(socket_path, name=f"publisher {index}", timeout_s=WAIT_S) as client:
        publishers = {
            channel: client.create_publisher(
                name(channel),
                slot_size=256,
                num_slots=SLOTS,
                reliable=reliable(channel),
                checksum=channel % 4 < 2,
            )
            for channel in mine
        }
        conn.send(("registered", None))
        sent = dict.fromkeys(mine, 0)
        deadline = time.monotonic() + DEADLINE_S
        while not stop.is_set() and time.monotonic() < deadline:
            if all(count >= MAX_PER_CHANNEL for count in sent.values()):
                break
            for channel, publisher in publishers.items():
                data = message(channel, sent[channel])
                while publisher.publish_bytes(data) is None:
                    # A reliable subscriber must read or go; one that went (removed,
                    # disconnected, killed) must not keep its slots.
                    assert publisher.wait(WAIT_S), (
                        f"seed {SEED}: publisher {index} stuck on {name(channel)} at "
                        f"message {sent[channel]}"
                    )
                sent[channel] += 1
        conn.send(("published", sent))
        assert conn.recv() == "exit"
        return sent


def _read_some(subscriber: Subscriber, channel: int, count: int, rng: random.Random) -> int:
    """Read up to `count` messages, checking each; keeps the last one held (or not)."""
    last = -1
    read = 0
    keep: Message | None = None
    for _ in range(count):
        got = subscriber.read()
        if got is None:
            if not subscriber.wait(0.02):
                break
            continue
        sequence = check(channel, bytes(got.data))
        assert sequence > last, f"{name(channel)}: {sequence} after {last}"
        last = sequence
        read += 1
        if keep is not None:
            keep.release()
        keep = got
    if keep is not None and rng.random() < 0.5:
        keep.release()  # else the removal (or the disconnection) must let go of it
    return read


def _churn(conn: Connection, socket_path: Path, index: int) -> int:
    """Subscribe to a random channel, read a few messages, unsubscribe (or drop the whole
    connection), ROUNDS times: how many messages were read and checked."""
    rng = random.Random(SEED * 100 + index)
    client = Client(socket_path, name=f"churner {index}", timeout_s=WAIT_S)
    total = 0
    try:
        for _ in range(ROUNDS):
            channel = rng.randrange(CHANNELS)
            subscriber = client.create_subscriber(
                name(channel), reliable=reliable(channel), max_active=2
            )
            total += _read_some(subscriber, channel, rng.randrange(8), rng)
            if rng.random() < 0.2:
                client.close()  # the server removes what the connection had
                client = Client(socket_path, name=f"churner {index}", timeout_s=WAIT_S)
            else:
                client.remove_subscriber(subscriber)
    finally:
        client.close()
    return total


def _hold_and_die(conn: Connection, socket_path: Path) -> None:
    """Subscribe reliably to every reliable channel, hold a message of each, say so, and
    wait to be killed (the server must free what it held)."""
    client = Client(socket_path, name="doomed", timeout_s=WAIT_S)
    held: list[Message] = []
    for channel in range(0, CHANNELS, 2):
        subscriber = client.create_subscriber(name(channel), reliable=True, max_active=1)
        deadline = time.monotonic() + WAIT_S
        while (got := subscriber.read()) is None:
            assert time.monotonic() < deadline, f"nothing on {name(channel)}"
            subscriber.wait(0.1)
        check(channel, bytes(got.data))
        held.append(got)
    conn.send(("holding", len(held)))
    time.sleep(WAIT_S * 6)  # killed long before this ends


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    yield from served_bus(tmp_path)


def test_publishing_on_32_channels_survives_subscribers_coming_and_going(bus: Bus) -> None:
    stop = FORK.Event()
    publishers = [fork(_publish, bus.socket, index, stop) for index in range(PUBLISHERS)]
    for _, conn in publishers:
        expect(conn, "registered")
    doomed, doomed_conn = fork(_hold_and_die, bus.socket)
    churners = [fork(_churn, bus.socket, index) for index in range(CHURNERS)]
    assert expect(doomed_conn, "holding") == CHANNELS // 2
    os.kill(doomed.pid, signal.SIGKILL)  # mid-churn, holding a slot of every reliable channel
    doomed.join(WAIT_S)
    checked = [expect(conn) for _, conn in churners]
    stop.set()
    sent: dict[int, int] = {}
    for _, conn in publishers:
        sent.update(expect(conn, "published"))
    assert sorted(sent) == list(range(CHANNELS))
    assert all(count > 0 for count in sent.values()), sent
    assert sum(checked) > 0, "the churners read nothing: the race was not run"

    # Only the publishers are left: every slot of every channel is free, and no
    # subscriber registration remains.
    assert bus.server is not None
    assert bus.server.proc.poll() is None, bus.server.log()
    with Client(bus.socket, name="inspector", timeout_s=WAIT_S) as client:
        infos = {info.name: info for info in client.channel_info()}
        for channel in range(CHANNELS):
            info = infos[name(channel)]
            assert (info.publishers, info.subscribers) == (1, 0), info
            assert info.reliable_publishers == int(reliable(channel))
            inspector = client.create_subscriber(name(channel), reliable=reliable(channel))
            slots = [inspector.channel.slot_words(i) for i in range(SLOTS)]
            assert all(holders == 0 and unread == 0 for _, holders, unread in slots), (
                f"seed {SEED}: {name(channel)} slots (seq, holders, unread): {slots}"
            )
            # The newest message is there and intact.
            newest = inspector.read(newest=True)
            assert newest is not None
            with newest:
                assert check(channel, bytes(newest.data)) == sent[channel] - 1
            client.remove_subscriber(inspector)
        stats = {record.name: record for record in client.channel_stats()}
        for channel in range(CHANNELS):
            assert stats[name(channel)].messages == sent[channel]
    for process, conn in publishers:
        conn.send("exit")
        own = expect(conn)
        assert own == {channel: sent[channel] for channel in own}
        process.join(WAIT_S)
        assert process.exitcode == 0
    for process, _ in churners:
        process.join(WAIT_S)
        assert process.exitcode == 0
