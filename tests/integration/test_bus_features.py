"""The bus's channel features through a real server and forked client processes:
metadata and checksums."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from postoffice.bus import BusMismatchError, ChecksumError, Client, MessageSizeError
from tests.integration.test_bus_server import WAIT_S, Bus, expect, fork

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    rig = Bus(tmp_path)
    rig.start()
    yield rig
    if rig.server is not None:
        assert rig.server.stop() == 0, rig.server.log()
    leftover = rig.files()
    shutil.rmtree(rig.shm, ignore_errors=True)
    assert leftover == [], "the server left files behind"


# -- metadata and checksums --------------------------------------------------------------


def _read_with_metadata(conn: Connection, socket_path: Path, count: int) -> list[object]:
    with Client(socket_path, name="reader") as client:
        subscriber = client.create_subscriber("meta", reliable=True, num_slots=8)
        conn.send(("registered", None))
        got: list[object] = []
        while len(got) < count:
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
        # The third is corrupted in shared memory after its checksum was computed.
        view = publisher.get_buffer(5)
        assert view is not None
        view[:] = b"third"
        slot = publisher._slot_index()
        ordinal = publisher.publish(5, metadata=b"k=3")
        buffer = publisher.channel.buffer(0)
        buffer.view[slot * buffer.slot_size] = ord("T")
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
