"""Hostile peers on a bus server's bridge side (TCP), as receiver and as transmitter:
each is refused with a clear ERROR and log line, and the server goes on serving."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from postoffice.bus import Client, netwire
from postoffice.bus.triggers import poll_readable
from postoffice.core import framing
from postoffice.core.framing import NEED_DATA
from tests.integration.test_bus_bridge import WAIT_S, Bus, free_udp_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

#: Short, so the silent peer is timed out quickly.
HANDSHAKE_S = "0.5"
QUIET_S = 0.5


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    rig = Bus(tmp_path, "b")
    rig.start("--discovery-port", str(free_udp_port()), "--bridge-handshake-timeout", HANDSHAKE_S)
    yield rig
    rig.stop()
    leftover = sorted(p.name for p in rig.shm.iterdir())
    assert leftover == [], "the server left files behind"


def serves_locally(bus: Bus, channel: str) -> None:
    """A client of `bus` still publishes to and reads from one of its channels."""
    with Client(bus.socket, timeout_s=WAIT_S) as client:
        subscriber = client.create_subscriber(channel)
        publisher = client.create_publisher(channel)
        assert publisher.publish_bytes(b"still serving") is not None
        assert subscriber.wait(WAIT_S)
        message = subscriber.read()
        assert message is not None
        with message:
            assert bytes(message.data) == b"still serving"


class Peer:
    """A raw TCP connection speaking (or not) the bridge protocol."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(WAIT_S)
        self.stream = netwire.bridge_stream()

    @classmethod
    def connect(cls, address: tuple[str, int]) -> Peer:
        return cls(socket.create_connection(address, timeout=WAIT_S))

    def send(self, *events: netwire.BridgeEvent) -> None:
        self.sock.sendall(b"".join(netwire.encode_bridge(event) for event in events))

    def next(self) -> netwire.BridgeEvent:
        """The next event the server sends; fails on the end of the stream."""
        while True:
            item = self.stream.next_event()
            if item is not NEED_DATA:
                return item[1]
            chunk = self.sock.recv(65536)
            assert chunk, "the server closed without a word"
            self.stream.feed(chunk)

    def refused(self) -> netwire.BridgeError:
        """The ERROR the server closes with (it closes right after)."""
        event = self.next()
        assert isinstance(event, netwire.BridgeError), event
        assert self.sock.recv(4096) == b"", "not closed after the ERROR"
        return event

    def close(self) -> None:
        self.sock.close()


def refusal(address: tuple[str, int], data: bytes) -> netwire.BridgeError:
    peer = Peer.connect(address)
    try:
        peer.sock.sendall(data)
        return peer.refused()
    finally:
        peer.close()


# -- a hostile transmitter (the server is the receiver) ----------------------------------


def test_a_peer_that_connects_and_never_speaks_is_refused_after_the_handshake_timeout(
    bus: Bus,
) -> None:
    started = time.monotonic()
    peer = Peer.connect(bus.bridge)
    try:
        error = peer.refused()
    finally:
        peer.close()
    assert (error.code, error.message) == ("STATE", "no SUBSCRIBED in 0.5 s")
    assert time.monotonic() - started < WAIT_S
    assert "bridge closed" in bus.log()
    assert "no SUBSCRIBED in 0.5 s" in bus.log()
    serves_locally(bus, "after-silence")


def test_a_frame_cut_short_then_silence_is_refused_after_the_handshake_timeout(
    bus: Bus,
) -> None:
    subscribed = netwire.encode_bridge(netwire.Subscribed(channel="cut"))
    error = refusal(bus.bridge, subscribed[:30])
    assert (error.code, error.message) == ("STATE", "no SUBSCRIBED in 0.5 s")
    serves_locally(bus, "after-cut")


def test_a_peer_that_goes_away_inside_a_frame_is_logged_and_forgotten(bus: Bus) -> None:
    subscribed = netwire.encode_bridge(netwire.Subscribed(channel="cut"))
    with socket.create_connection(bus.bridge, timeout=WAIT_S) as sock:
        sock.sendall(subscribed[:30])
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(4096) == b"", "the server kept a connection whose peer had gone"
    wait_until("the log line", lambda: "bridge peer closed inside a frame" in bus.log())
    assert "bytes=30" in bus.log()
    serves_locally(bus, "after-eof")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_garbage_is_refused_as_a_broken_frame(bus: Bus, seed: int) -> None:
    data = random.Random(seed).randbytes(200)
    error = refusal(bus.bridge, data)
    assert error.code == "PROTO", f"seed {seed}"
    assert "bad frame magic" in error.message, f"seed {seed}"
    serves_locally(bus, f"after-garbage-{seed}")


def test_a_length_just_over_the_limit_is_refused_from_the_header_alone(bus: Bus) -> None:
    header = framing.HEADER.pack(
        framing.MAGIC, 1, 0x11, 0, 0, 0, netwire.MAX_BRIDGE_PAYLOAD_BYTES + 1, 0
    )
    error = refusal(bus.bridge, header)
    assert error.code == "PROTO"
    assert error.message.startswith("frame payload length 16777217 exceeds limit")
    serves_locally(bus, "after-oversize")


def test_a_frame_with_a_bad_crc_is_refused(bus: Bus) -> None:
    frame = bytearray(netwire.encode_bridge(netwire.Subscribed(channel="crc")))
    frame[-1] ^= 0xFF
    error = refusal(bus.bridge, bytes(frame))
    assert error.code == "PROTO"
    assert error.message.startswith("payload checksum 0x"), error.message
    serves_locally(bus, "after-crc")


def wanted_here(bus: Bus, channel: str, *, reliable: bool = False, num_slots: int = 0) -> None:
    """A client of `bus` subscribes to `channel`, so the server takes a bridge for it."""
    bus.client().create_subscriber(channel, reliable=reliable, num_slots=num_slots)


def test_a_transmitter_that_sends_retired_is_refused(bus: Bus) -> None:
    wanted_here(bus, "backwards")
    peer = Peer.connect(bus.bridge)
    try:
        peer.send(netwire.Subscribed(channel="backwards"), netwire.Retired(ordinals=(1,)))
        error = peer.refused()
    finally:
        peer.close()
    assert (error.code, error.message) == ("PROTO", "a transmitter sends no RETIRED")
    serves_locally(bus, "after-backwards")


def test_a_held_message_on_an_unreliable_channel_is_refused(bus: Bus) -> None:
    wanted_here(bus, "loose")
    peer = Peer.connect(bus.bridge)
    try:
        peer.send(
            netwire.Subscribed(channel="loose"),
            netwire.BridgedMessage(ordinal=1, data=b"x", held=True),
        )
        error = peer.refused()
    finally:
        peer.close()
    assert (error.code, error.message) == ("STATE", "HELD_MESSAGE on an unreliable channel")
    serves_locally(bus, "after-loose")


def test_a_transmitter_holding_more_than_it_may_is_refused(bus: Bus) -> None:
    """Nobody reads on this side, so nothing retires: the 257th held message is one too
    many (the channel has room for it, so the limit is what refuses it)."""
    wanted_here(bus, "greedy", reliable=True, num_slots=300)
    peer = Peer.connect(bus.bridge)
    try:
        held = [
            netwire.BridgedMessage(ordinal=i, data=b"x", held=True)
            for i in range(1, netwire.MAX_HELD_MESSAGES + 2)
        ]
        peer.send(netwire.Subscribed(channel="greedy", reliable=True), *held)
        error = peer.refused()
    finally:
        peer.close()
    assert (error.code, error.message) == ("LIMIT", "more than 256 held messages not retired yet")
    serves_locally(bus, "after-greedy")


# -- a hostile receiver (the server is the transmitter) ----------------------------------


def fake_receiver(bus: Bus, channel: str) -> tuple[Peer, netwire.Subscribed]:
    """Ask `bus` for `channel` as a receiver would (SUBSCRIBE from a UDP socket, naming
    our own TCP port); the transmitter's connection and its SUBSCRIBED."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
    ):
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(WAIT_S)
        ask = netwire.Subscribe(server_id=0x5EED, channel=channel, port=listener.getsockname()[1])
        udp.sendto(netwire.encode_datagram(ask), bus.discovery)
        sock, _ = listener.accept()
    peer = Peer(sock)
    first = peer.next()
    assert isinstance(first, netwire.Subscribed), first
    return peer, first


def test_a_scripted_receiver_sees_held_messages_and_its_retired_reaches_the_publisher(
    bus: Bus,
) -> None:
    """The transmitter's half of retirement, byte by byte: HELD_MESSAGE out, nothing
    retired until RETIRED comes in, then the publisher hears of it."""
    client = bus.client()
    publisher = client.create_publisher(
        "parcels", reliable=True, retirement=True, slot_size=64, num_slots=8
    )
    peer, subscribed = fake_receiver(bus, "parcels")
    try:
        assert subscribed.reliable
        assert publisher.publish_bytes(b"one") == 1
        assert peer.next() == netwire.BridgedMessage(ordinal=1, data=b"one", held=True)
        assert not poll_readable(publisher.retirement_fileno(), QUIET_S)
        peer.send(netwire.Retired(ordinals=(1,)))
        assert poll_readable(publisher.retirement_fileno(), WAIT_S)
        assert [ordinal for _, ordinal in publisher.retired()] == [1]
        # The same again names a message no longer held.
        peer.send(netwire.Retired(ordinals=(1,)))
        error = peer.refused()
    finally:
        peer.close()
    assert (error.code, error.message) == ("PROTO", "RETIRED names ordinal 1, which is not held")
    assert "bridge closed" in bus.log()
    serves_locally(bus, "after-receiver")


def test_a_publisher_not_watching_retirement_is_forwarded_without_holding(bus: Bus) -> None:
    client = bus.client()
    publisher = client.create_publisher("plain", reliable=True, slot_size=64, num_slots=8)
    peer, subscribed = fake_receiver(bus, "plain")
    try:
        assert subscribed.reliable
        assert publisher.publish_bytes(b"one") == 1
        assert peer.next() == netwire.BridgedMessage(ordinal=1, data=b"one")
    finally:
        peer.close()


def test_a_receiver_that_sends_garbage_is_refused_and_the_server_goes_on(bus: Bus) -> None:
    bus.client().create_publisher("spoiled")
    peer, _ = fake_receiver(bus, "spoiled")
    try:
        peer.sock.sendall(b"not a frame at all, just noise")
        error = peer.refused()
    finally:
        peer.close()
    assert error.code == "PROTO"
    assert "bad frame magic" in error.message
    wait_until("the log line", lambda: 'bridge closed link="to spoiled"' in bus.log())
    serves_locally(bus, "after-spoiled")
