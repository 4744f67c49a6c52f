"""Retirement across a bridge: a publisher on server A that watches retirement hears of
its messages only once the reliable subscribers on server B let them go (real servers)."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from postoffice.bus import BusError, Message, Publisher
from postoffice.bus.triggers import poll_readable
from tests.integration.test_bus_bridge import WAIT_S, Bus, bridged, pair, read_n, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

__all__ = ["pair"]  # the fixture, used by name

#: How long a retirement that must not come is given to come anyway.
QUIET_S = 0.5


def retired_until(publisher: Publisher, count: int) -> list[tuple[int, int]]:
    """The publisher's retirements, waited for until there are `count` of them."""
    got: list[tuple[int, int]] = []
    deadline = time.monotonic() + WAIT_S
    while len(got) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {got} of {count} retirements came"
        if poll_readable(publisher.retirement_fileno(), left):
            got.extend(publisher.retired())
    return got


def test_a_retires_a_message_only_once_the_reliable_subscriber_on_b_released_it(
    pair: tuple[Bus, Bus],
) -> None:
    a, b = pair
    far = b.client().create_subscriber("ledger", reliable=True, max_active=4)
    client_a = a.client()
    publisher = client_a.create_publisher(
        "ledger", reliable=True, retirement=True, slot_size=64, num_slots=8
    )
    near = client_a.create_subscriber("ledger", max_active=4)
    bridged(a, b, "ledger", subscribers=1)
    ordinals = [publisher.publish_bytes(b"entry %d" % i) for i in range(1, 4)]
    assert ordinals == [1, 2, 3]
    # A's own subscriber reads them (giving their slots on A) and lets them go at once.
    slots: dict[int, int] = {}
    deadline = time.monotonic() + WAIT_S
    while len(slots) < 3:
        assert time.monotonic() < deadline, f"A's subscriber read only {slots}"
        message = near.read()
        if message is None:
            near.wait(0.2)
            continue
        with message:
            slots[message.ordinal] = message.slot
    # B holds all three: nothing retired on A, though A's own readers are done.
    held: dict[bytes, Message] = {}
    deadline = time.monotonic() + WAIT_S
    while len(held) < 3:
        assert time.monotonic() < deadline, f"B got only {sorted(held)}"
        message = far.read()
        if message is None:
            far.wait(0.2)
            continue
        held[bytes(message.data)] = message
    assert sorted(held) == [b"entry 1", b"entry 2", b"entry 3"]
    assert not poll_readable(publisher.retirement_fileno(), QUIET_S)
    assert publisher.retired() == []
    # B lets the second go: A hears of exactly that one, by its slot and ordinal on A.
    held[b"entry 2"].release()
    assert retired_until(publisher, 1) == [(slots[2], 2)]
    assert not poll_readable(publisher.retirement_fileno(), QUIET_S)
    held[b"entry 3"].release()
    held[b"entry 1"].release()
    assert sorted(retired_until(publisher, 2)) == [(slots[1], 1), (slots[3], 3)]
    assert publisher.retired() == []


def test_every_message_through_a_small_reliable_channel_retires_on_a_in_order_of_release(
    pair: tuple[Bus, Bus],
) -> None:
    """4 slots on A, 500 messages: the publisher waits for slots that only B's
    retirements free, and every message is read on B and reported retired on A."""
    a, b = pair
    count = 500
    far = b.client().create_subscriber("journal", reliable=True)
    publisher = a.client().create_publisher(
        "journal", reliable=True, retirement=True, slot_size=64, num_slots=4
    )
    bridged(a, b, "journal")
    failure: list[str] = []

    def publish() -> None:
        for i in range(count):
            while publisher.publish_bytes(b"line %d" % i) is None:
                if not publisher.wait(WAIT_S):
                    failure.append(f"no slot for message {i}")
                    return

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    got = read_n(far, count, timeout_s=60)
    thread.join(WAIT_S)
    assert failure == []
    assert got == [b"line %d" % i for i in range(count)]
    # read_n released each on reading the next or at once: all retired on B, so on A.
    ordinals = [ordinal for _, ordinal in retired_until(publisher, count)]
    assert sorted(ordinals) == list(range(1, count + 1))
    assert "bridge transmitting channel=journal" in a.log()


def test_what_a_bridge_held_retires_on_a_when_server_b_dies(pair: tuple[Bus, Bus]) -> None:
    """B's subscriber holds the message when B's server is killed: the transmitter on A
    lets go of it (its fate on B is unknown), so A's publisher is not left waiting."""
    a, b = pair
    far = b.client().create_subscriber("outbox", reliable=True)
    publisher = a.client().create_publisher(
        "outbox", reliable=True, retirement=True, slot_size=64, num_slots=4
    )
    bridged(a, b, "outbox")
    assert publisher.publish_bytes(b"parcel") == 1
    deadline = time.monotonic() + WAIT_S
    message = far.read()
    while message is None:
        assert far.wait(max(0.0, deadline - time.monotonic())), "nothing came to B"
        message = far.read()
    assert not poll_readable(publisher.retirement_fileno(), QUIET_S)
    assert b.server is not None
    b.server.proc.kill()
    b.server.proc.wait(WAIT_S)
    b.server = None
    assert [ordinal for _, ordinal in retired_until(publisher, 1)] == [1]
    message.release()
    for dead in b.clients:
        with contextlib.suppress(BusError):
            dead.close()
    b.clients.clear()
    # A new server on B's directory removes what the killed one left.
    b.start("--peer", f"127.0.0.1:{a.discovery[1]}")


def test_a_bridge_whose_publishers_all_left_ends_so_an_unreliable_publisher_can_come(
    pair: tuple[Bus, Bus],
) -> None:
    """The transmitter of a reliable channel may hold many messages; once the channel
    has no publisher on A and nothing left to forward, it ends, so its hold no longer
    counts against an unreliable publisher's admission, and the channel is bridged
    again for the new publisher."""
    a, b = pair
    far = b.client().create_subscriber("relay")
    client_a = a.client()
    first = client_a.create_publisher("relay", reliable=True, slot_size=64, num_slots=16)
    bridged(a, b, "relay")
    assert first.publish_bytes(b"from the reliable one") == 1
    assert read_n(far, 1) == [b"from the reliable one"]
    client_a.remove_publisher(first)
    wait_until("A's bridge subscriber removed", lambda: a.users("relay") == (0, 0))
    second = client_a.create_publisher("relay", slot_size=64, num_slots=16)
    bridged(a, b, "relay")
    assert second.publish_bytes(b"from the unreliable one") is not None
    assert read_n(far, 1) == [b"from the unreliable one"]
