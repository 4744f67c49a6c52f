"""The channel library across real processes sharing one channel's descriptors."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import pytest

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from postoffice.bus import Message, Subscriber
from tests.bus.fixtures import MakeRig
from tests.bus.rig import Rig

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

FORK = multiprocessing.get_context("fork")
JOIN_TIMEOUT_S = 120.0
WAIT_S = 10.0


def start(target: Callable[..., Any], *args: Any) -> tuple[Any, Connection]:
    """Fork a child running target(conn, *args); it reports its result (or its
    traceback) on the pipe whose other end is returned."""
    parent_end, child_end = FORK.Pipe()

    def main() -> None:
        try:
            child_end.send(("ok", target(child_end, *args)))
        except BaseException:
            child_end.send(("error", traceback.format_exc()))
            raise

    process = FORK.Process(target=main, daemon=True)
    process.start()
    return process, parent_end


def result(process: Any, conn: Connection) -> Any:
    assert conn.poll(JOIN_TIMEOUT_S), "the child reported nothing in time"
    status, value = conn.recv()
    process.join(JOIN_TIMEOUT_S)
    assert status == "ok", value
    assert process.exitcode == 0
    return value


def payload(publisher: int, n: int, size: int = 16) -> bytes:
    head = b"%d:%d:" % (publisher, n)
    return (head * (size // len(head) + 1))[:size] if size > len(head) else head


def publish_many(_: Connection, rig: Rig, user: int, count: int, size: int) -> int:
    channel = rig.reopen()
    publisher = rig.publisher_for(user, channel)
    for n in range(count):
        data = payload(user, n, size)
        while publisher.publish_bytes(data) is None:
            assert publisher.wait(WAIT_S), f"publisher {user} got no slot at message {n}"
    return publisher.published


def read_all_of(_: Connection, rig: Rig, user: int, expected: dict[int, int]) -> dict[int, int]:
    """Read until every publisher's count arrived, checking each one's order and bytes."""
    channel = rig.reopen()
    subscriber = rig.subscriber_for(user, channel)
    return drain_into(subscriber, expected)


def drain_into(subscriber: Subscriber, expected: dict[int, int]) -> dict[int, int]:
    seen = dict.fromkeys(expected, 0)
    total = sum(expected.values())
    got = 0
    while got < total:
        message = subscriber.read()
        if message is None:
            assert subscriber.wait(WAIT_S), f"nothing after {got} of {total} messages"
            continue
        publisher, n = (int(x) for x in bytes(message.data).split(b":")[:2])
        assert n == seen[publisher], f"publisher {publisher}: got {n}, expected {seen[publisher]}"
        assert bytes(message.data) == payload(publisher, n, message.size)
        seen[publisher] += 1
        got += 1
        message.release()
    assert subscriber.read() is None
    assert subscriber.drops == 0
    return seen


def test_two_reliable_subscribers_each_receive_every_message(make_rig: MakeRig) -> None:
    rig = make_rig(num_slots=16)
    count = 20_000
    publisher = rig.register_publisher(reliable=True)
    readers = [rig.register_subscriber(reliable=True) for _ in range(2)]
    children = [start(read_all_of, rig, user, {publisher: count}) for user in readers]
    writer = start(publish_many, rig, publisher, count, 32)
    assert result(*writer) == count
    assert [result(*child) for child in children] == [{publisher: count}] * 2
    assert rig.channel.stats().messages == count


def test_concurrent_publishers_lose_nothing_in_a_reliable_channel(make_rig: MakeRig) -> None:
    """4 publisher processes x 20,000 messages into one reliable subscriber."""
    rig = make_rig(num_slots=32)
    count = 20_000
    publishers = [rig.register_publisher(reliable=True) for _ in range(4)]
    reader = rig.register_subscriber(reliable=True)
    expected = dict.fromkeys(publishers, count)
    child = start(read_all_of, rig, reader, expected)
    writers = [start(publish_many, rig, user, count, 24) for user in publishers]
    assert [result(*w) for w in writers] == [count] * 4
    assert result(*child) == expected
    stats = rig.channel.stats()
    assert (stats.messages, stats.last_ordinal, stats.drops) == (4 * count, 4 * count, 0)


def grow_while_publishing(_: Connection, rig: Rig, user: int, sizes: list[int]) -> int:
    channel = rig.reopen()
    publisher = rig.publisher_for(user, channel)
    for n, size in enumerate(sizes):
        data = payload(user, n, size)
        while publisher.publish_bytes(data) is None:
            assert publisher.wait(WAIT_S)
    return channel.stats().num_buffers


def test_a_larger_message_grows_the_channel_while_a_subscriber_reads(make_rig: MakeRig) -> None:
    rig = make_rig(num_slots=4, slot_size=64)
    publisher = rig.register_publisher(reliable=True)
    subscriber = rig.subscriber(reliable=True)
    sizes = [64 + n * 97 for n in range(400)]  # up to ~38 KiB: several resizes
    writer = start(grow_while_publishing, rig, publisher, sizes)
    seen: list[int] = []
    while len(seen) < len(sizes):
        message = subscriber.read()
        if message is None:
            assert subscriber.wait(WAIT_S)
            continue
        n = len(seen)
        assert message.size == sizes[n]
        assert bytes(message.data) == payload(publisher, n, sizes[n])
        seen.append(message.buffer_index)
        message.release()
    buffers = result(*writer)
    assert buffers >= 5
    assert seen == sorted(seen)
    assert seen[-1] == buffers - 1
    assert rig.channel.stats().num_buffers == buffers


def hold_then_hang(conn: Connection, rig: Rig, user: int) -> None:
    channel = rig.reopen()
    subscriber = rig.subscriber_for(user, channel)
    held: list[Message] = []
    while len(held) < 2:
        message = subscriber.read()
        if message is None:
            assert subscriber.wait(WAIT_S)
        else:
            held.append(message)
    conn.send(("holding", [m.slot for m in held]))
    conn.poll(JOIN_TIMEOUT_S)  # killed long before this returns


def test_a_killed_subscribers_holds_are_released_by_the_cleanup(make_rig: MakeRig) -> None:
    rig = make_rig(num_slots=3)
    publisher = rig.publisher(reliable=True)
    doomed = rig.register_subscriber(reliable=True, max_active=2)
    process, conn = start(hold_then_hang, rig, doomed)
    for n in range(3):
        assert publisher.publish_bytes(b"m%d" % n) is not None
    assert conn.poll(JOIN_TIMEOUT_S)
    tag, slots = conn.recv()
    assert tag == "holding"
    assert publisher.get_buffer(8) is None
    assert process.pid is not None
    os.kill(process.pid, signal.SIGKILL)
    process.join(JOIN_TIMEOUT_S)
    assert process.exitcode == -signal.SIGKILL
    assert all(rig.channel.slot_words(s)[1] == 1 << doomed for s in slots)
    assert rig.channel.remove_subscriber(doomed, rig.triggers()) == 3
    assert all(rig.channel.slot_words(s)[1:] == (0, 0) for s in range(3))
    assert publisher.wait(0)
    assert publisher.publish_bytes(b"again") == 4


def test_blocking_wake_ups_carry_a_ping_pong_between_processes(make_rig: MakeRig) -> None:
    there = make_rig(channel_id=1, name="there")
    back = make_rig(channel_id=2, name="back")
    out_pub = there.publisher()
    there_sub = there.register_subscriber()
    back_pub = back.register_publisher()
    in_sub = back.subscriber()
    rounds = 2000

    def echo(conn: Connection) -> int:
        channel_there, channel_back = there.reopen(), back.reopen()
        subscriber = there.subscriber_for(there_sub, channel_there)
        publisher = back.publisher_for(back_pub, channel_back)
        for n in range(rounds):
            while (message := subscriber.read()) is None:
                assert subscriber.wait(WAIT_S)
            assert bytes(message.data) == b"ping %d" % n
            message.release()
            publisher.publish_bytes(b"pong %d" % n)
        return rounds

    child = start(echo)
    for n in range(rounds):
        out_pub.publish_bytes(b"ping %d" % n)
        while (message := in_sub.read()) is None:
            assert in_sub.wait(WAIT_S)
        assert bytes(message.data) == b"pong %d" % n
        message.release()
    assert result(*child) == rounds


def test_without_the_extension_the_bus_says_what_is_missing() -> None:
    """A build without a C compiler: `import postoffice.bus` fails with one clear error,
    and the rest of the package still imports."""
    script = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "postoffice.bus._atomics":
            raise ModuleNotFoundError("No module named 'postoffice.bus._atomics'")
        return None
sys.meta_path.insert(0, Block())
import postoffice.core.errors, postoffice.store
try:
    import postoffice.bus
except ImportError as exc:
    print(type(exc).__name__, exc)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.startswith(
        "BusUnavailableError postoffice.bus needs its C extension postoffice.bus._atomics, "
        "which is not built or cannot be loaded (No module named 'postoffice.bus._atomics'); "
    )
    assert "C compiler" in done.stdout
