"""The bus's channel features through a real server and forked client processes:
metadata and checksums."""

from __future__ import annotations

import select
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from postoffice.bus import BusMismatchError, ChecksumError, Client, MessageSizeError, wire
from tests.integration.test_bus_server import WAIT_S, Bus, expect, fork, served_bus

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    yield from served_bus(tmp_path)


# -- metadata and checksums --------------------------------------------------------------


def _read_with_metadata(conn: Connection, socket_path: Path, count: int) -> list[object]:
    """Read count messages; before the last, report what came and wait for the parent's
    go-ahead, so the parent can corrupt the last one before it is read."""
    with Client(socket_path, name="reader") as client:
        subscriber = client.create_subscriber("meta", reliable=True, num_slots=8)
        conn.send(("registered", None))
        got: list[object] = []
        waited = False
        while len(got) < count:
            if len(got) == count - 1 and not waited:
                conn.send(("read", list(got)))
                assert conn.recv() == "go"
                waited = True
            try:
                message = subscriber.read()
            except ChecksumError as exc:
                got.append(str(exc))
                continue
            if message is None:
                assert subscriber.wait(WAIT_S), f"message {len(got)} did not come"
                continue
            with message:
                got.append((bytes(message.metadata), bytes(message.data)))
        return got


def test_metadata_and_checksums_cross_processes_and_corruption_is_caught(bus: Bus) -> None:
    with bus.client("writer") as client:
        publisher = client.create_publisher(
            "meta", num_slots=8, reliable=True, checksum=True, metadata_bytes=100
        )
        reader, conn = fork(_read_with_metadata, bus.socket, 3)
        expect(conn, "registered")
        with pytest.raises(MessageSizeError, match=r"^metadata of 101 bytes exceeds the 100"):
            publisher.publish_bytes(b"x", metadata=b"m" * 101)
        assert publisher.publish_bytes(b"first", metadata=b"k=1") is not None
        assert publisher.publish_bytes(b"second", metadata=b"k" * 100) is not None
        assert expect(conn, "read") == [(b"k=1", b"first"), (b"k" * 100, b"second")]
        # The third is corrupted in shared memory after its checksum was computed.
        view = publisher.get_buffer(5)
        assert view is not None
        view[:] = b"third"
        slot = publisher._slot_index()
        ordinal = publisher.publish(5, metadata=b"k=3")
        buffer = publisher.channel.buffer(0)
        buffer.view[slot * buffer.slot_size] = ord("T")
        conn.send("go")
        assert expect(conn) == [
            (b"k=1", b"first"),
            (b"k" * 100, b"second"),
            f"message {ordinal} of channel 'meta' fails its checksum",
        ]
        info = client.channel_info("meta")[0]
        assert info.flags & 0x2
        with pytest.raises(
            BusMismatchError,
            match=r"^channel 'meta' has 100 bytes of metadata per message, the publisher "
            r"asks for 10$",
        ):
            client.create_publisher("meta", reliable=True, checksum=True, metadata_bytes=10)
    reader.join(WAIT_S)
    assert reader.exitcode == 0


# -- activation messages -----------------------------------------------------------------


def _read_two(conn: Connection, socket_path: Path, pass_activations: bool) -> list[object]:
    with Client(socket_path, name="reader") as client:
        subscriber = client.create_subscriber(
            "active", reliable=True, pass_activations=pass_activations
        )
        conn.send(("registered", None))
        got: list[object] = []
        while len(got) < (2 if pass_activations else 1):
            message = subscriber.read()
            if message is None:
                assert subscriber.wait(WAIT_S), f"message {len(got)} did not come"
                continue
            with message:
                got.append((message.ordinal, message.activation, bytes(message.data)))
        return got


def test_a_joining_publishers_activation_is_seen_only_by_who_asks(bus: Bus) -> None:
    with bus.client("writer") as client:
        publisher = client.create_publisher("active", num_slots=8, reliable=True, activate=True)
        asking, asking_conn = fork(_read_two, bus.socket, True)
        expect(asking_conn, "registered")
        plain, plain_conn = fork(_read_two, bus.socket, False)
        expect(plain_conn, "registered")
        assert publisher.publish_bytes(b"hello") == 2
        assert expect(asking_conn) == [(1, True, b""), (2, False, b"hello")]
        assert expect(plain_conn) == [(2, False, b"hello")]
    for process in (asking, plain):
        process.join(WAIT_S)
        assert process.exitcode == 0


# -- placeholders ------------------------------------------------------------------------


def _placeholder_reader(
    conn: Connection, socket_path: Path, reliable: bool, count: int
) -> tuple[list[tuple[int, bytes, bytes]], int]:
    with Client(socket_path, name="early") as client:
        subscriber = client.create_subscriber("later", reliable=reliable, max_active=2)
        assert subscriber.channel.placeholder
        conn.send(("registered", None))
        got: list[tuple[int, bytes, bytes]] = []
        # Until the last ordinal: an unreliable reader may miss some on the way.
        while not got or got[-1][0] < count:
            message = subscriber.read()
            if message is None:
                assert subscriber.wait(WAIT_S), f"message {len(got)} did not come"
                continue
            with message:
                got.append((message.ordinal, bytes(message.data), bytes(message.metadata)))
        return got, subscriber.channel.num_slots


def test_subscribers_of_a_placeholder_follow_it_to_its_publishers_shape(bus: Bus) -> None:
    """Two subscribers (one waiting, one reliable) make the channel before any publisher,
    with the server's defaults; the publisher asks for 8 slots and metadata, which takes
    new files: both move there, read everything, and are counted once."""
    count = 40
    waiting, waiting_conn = fork(_placeholder_reader, bus.socket, False, count)
    expect(waiting_conn, "registered")
    reliable, reliable_conn = fork(_placeholder_reader, bus.socket, True, count)
    expect(reliable_conn, "registered")
    with bus.client("writer") as client:
        before = client.channel_info("later")[0]
        assert (before.num_slots, before.flags & wire.CHANNEL_PLACEHOLDER) == (16, 4)
        publisher = client.create_publisher(
            "later", num_slots=8, reliable=True, checksum=True, metadata_bytes=32
        )
        info = client.channel_info("later")[0]
        assert (info.num_slots, info.flags) == (8, wire.CHANNEL_CHECKSUM)
        assert (info.subscribers, info.reliable_subscribers, info.publishers) == (2, 1, 1)
        counters = client.scb.counters(info.channel_id)
        assert (counters.subscribers, counters.reliable_subscribers, counters.remaps) == (2, 1, 1)
        for n in range(count):
            while publisher.publish_bytes(b"m%d" % n, metadata=b"n=%d" % n) is None:
                assert publisher.wait(WAIT_S), f"no slot for message {n}"
        expected = [(n + 1, b"m%d" % n, b"n=%d" % n) for n in range(count)]
        assert expect(reliable_conn) == (expected, 8)
        got, slots = expect(waiting_conn)
        assert slots == 8
        # Unreliable: it may miss some, but in order and no other.
        assert got == sorted(got)
        assert set(got) <= set(expected)
        assert got[-1] == expected[-1]
    for process in (waiting, reliable):
        process.join(WAIT_S)
        assert process.exitcode == 0


def test_a_placeholder_publisher_of_the_same_shape_keeps_the_files(bus: Bus) -> None:
    with bus.client("one") as client:
        subscriber = client.create_subscriber("same", num_slots=8)
        publisher = client.create_publisher("same", num_slots=8)
        assert client.scb.counters(subscriber.channel.channel_id).remaps == 0
        assert publisher.channel is subscriber.channel
        publisher.publish_bytes(b"here")
        message = subscriber.read()
        assert message is not None
        assert bytes(message.data) == b"here"
        message.release()


def test_a_placeholder_in_the_same_client_moves_its_subscriber_at_once(bus: Bus) -> None:
    with bus.client("one") as client:
        subscriber = client.create_subscriber("own", reliable=True)
        publisher = client.create_publisher("own", num_slots=4, reliable=True)
        assert subscriber.channel is publisher.channel
        assert subscriber.channel.num_slots == 4
        publisher.publish_bytes(b"direct")
        message = subscriber.read()
        assert message is not None
        assert bytes(message.data) == b"direct"
        message.release()
        # The server's 8 files and this channel's three: the placeholder's are gone.
        assert len(bus.files()) == 8 + 3


# -- wake-ups after a user id is reused --------------------------------------------------


def test_a_reused_publisher_id_is_woken_through_its_own_eventfd(bus: Bus) -> None:
    """A subscriber that once woke publisher 0 must not wake a later publisher 0 (the id
    reused) through the first one's eventfd."""
    with bus.client("reader") as reader, bus.client("one") as one, bus.client("two") as two:
        subscriber = reader.create_subscriber("reuse", reliable=True, num_slots=2)
        first = one.create_publisher("reuse", reliable=True, num_slots=2)
        first.fileno()
        for _ in range(2):
            assert first.publish_bytes(b"m") is not None
        assert first.get_buffer(1) is None  # full: its waiting bit is armed
        for _ in range(2):
            message = subscriber.read()
            assert message is not None
            message.release()  # wakes publisher 0 (learning its eventfd)
        assert select.select([first.fileno()], [], [], WAIT_S)[0]
        one.remove_publisher(first)
        second = two.create_publisher("reuse", reliable=True, num_slots=2)
        assert second.publisher_id == first.publisher_id
        second.fileno()
        for _ in range(2):
            assert second.publish_bytes(b"n") is not None
        assert second.get_buffer(1) is None
        message = subscriber.read()
        assert message is not None
        message.release()
        assert select.select([second.fileno()], [], [], WAIT_S)[0], "publisher 0 not woken"
