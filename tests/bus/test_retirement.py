"""Retirement notifications: a publisher hears of a message once every holder let it go."""

from __future__ import annotations

import pytest

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from postoffice.bus import BusConfigError, retirement
from postoffice.bus.triggers import poll_readable
from tests.bus.fixtures import MakeRig
from tests.bus.rig import Rig


def test_two_holders_retire_a_message_only_after_both_released(rig: Rig) -> None:
    publisher = rig.publisher(reliable=True, retirement=True)
    first = rig.subscriber(reliable=True)
    second = rig.subscriber(reliable=True)
    ordinal = publisher.publish_bytes(b"held twice")
    assert ordinal == 1
    message_a = first.read()
    message_b = second.read()
    assert message_a is not None
    assert message_b is not None
    assert not poll_readable(publisher.retirement_fileno(), 0)
    message_a.release()
    assert not poll_readable(publisher.retirement_fileno(), 0)
    assert publisher.retired() == []
    message_b.release()
    assert poll_readable(publisher.retirement_fileno(), 0)
    assert publisher.retired() == [(message_b.slot, 1)]
    assert publisher.retired() == []


def test_a_reliable_subscriber_that_has_not_read_keeps_the_message_unretired(rig: Rig) -> None:
    publisher = rig.publisher(reliable=True, retirement=True)
    reader = rig.subscriber(reliable=True)
    rig.subscriber(reliable=True)  # registered, never reads
    publisher.publish_bytes(b"x")
    message = reader.read()
    assert message is not None
    message.release()
    assert publisher.retired() == []


def test_a_removed_subscriber_retires_what_it_held(rig: Rig) -> None:
    publisher = rig.publisher(reliable=True, retirement=True)
    keeper = rig.subscriber(reliable=True)
    reader = rig.subscriber(reliable=True)
    publisher.publish_bytes(b"held by a subscriber that goes")
    held = keeper.read()
    assert held is not None
    message = reader.read()
    assert message is not None
    message.release()
    assert publisher.retired() == []
    # As the server does for a subscriber whose session died: its bits go, in place.
    rig.channel.remove_subscriber(keeper.subscriber_id, rig.triggers())
    assert publisher.retired() == [(held.slot, 1)]


def test_a_removed_subscriber_retires_what_it_had_still_to_read(rig: Rig) -> None:
    publisher = rig.publisher(reliable=True, retirement=True)
    laggard = rig.subscriber(reliable=True)
    publisher.publish_bytes(b"never read")
    assert publisher.retired() == []
    rig.channel.remove_subscriber(laggard.subscriber_id, rig.triggers())
    assert [ordinal for _, ordinal in publisher.retired()] == [1]


def test_with_no_subscriber_a_message_retires_at_once(rig: Rig) -> None:
    publisher = rig.publisher(reliable=True, retirement=True)
    assert publisher.publish_bytes(b"a") == 1
    assert publisher.publish_bytes(b"b") == 2
    assert [ordinal for _, ordinal in publisher.retired()] == [1, 2]


def test_a_skip_to_the_newest_retires_the_skipped_messages(rig: Rig) -> None:
    publisher = rig.publisher(reliable=True, retirement=True)
    reader = rig.subscriber(reliable=True)
    for payload in (b"a", b"b", b"c"):
        publisher.publish_bytes(payload)
    message = reader.read(newest=True)
    assert message is not None
    assert message.ordinal == 3
    assert sorted(ordinal for _, ordinal in publisher.retired()) == [1, 2]
    message.release()
    assert [ordinal for _, ordinal in publisher.retired()] == [3]


def test_a_slot_taken_over_an_unread_message_reports_that_message(make_rig: MakeRig) -> None:
    small = make_rig(num_slots=4)
    publisher = small.publisher(retirement=True)  # unreliable: reuses unread slots
    small.subscriber(reliable=True)  # must read every message, never does
    for payload in (b"a", b"b", b"c", b"d"):
        publisher.publish_bytes(payload)
    assert publisher.retired() == []
    publisher.publish_bytes(b"e")  # takes the slot of message 1 from its reader
    assert [ordinal for _, ordinal in publisher.retired()] == [1]
    publisher.publish_bytes(b"f")
    assert [ordinal for _, ordinal in publisher.retired()] == [2]


def test_only_publishers_that_asked_hear_of_retirement(rig: Rig) -> None:
    quiet = rig.publisher()
    loud = rig.publisher(retirement=True)
    quiet.publish_bytes(b"q")
    loud.publish_bytes(b"l")
    assert [ordinal for _, ordinal in loud.retired()] == [2]
    with pytest.raises(BusConfigError, match="did not ask"):
        quiet.retired()


def test_a_vchan_publisher_cannot_ask_for_retirement(make_rig: MakeRig) -> None:
    mux = make_rig(name="mux", num_slots=8, mux=True)
    with pytest.raises(BusConfigError, match="virtual channel"):
        mux.publisher(vchan=1, retirement=True)


def test_a_holder_tells_a_message_that_asked_for_retirement_from_one_that_did_not(
    rig: Rig,
) -> None:
    """What a bridge's transmitter looks at to decide whether to hold a message."""
    watching = rig.publisher(reliable=True, retirement=True)
    plain = rig.publisher(reliable=True)
    subscriber = rig.subscriber(reliable=True, max_active=2)
    assert watching.publish_bytes(b"watched") == 1
    assert plain.publish_bytes(b"unwatched") == 2
    first = subscriber.read()
    second = subscriber.read()
    assert first is not None
    assert second is not None
    assert retirement.asked(rig.channel.ccb, first.slot, first.ordinal)
    assert not retirement.asked(rig.channel.ccb, second.slot, second.ordinal)
    # Another ordinal in the same slot is another message: it did not ask.
    assert not retirement.asked(rig.channel.ccb, first.slot, first.ordinal + 1)
    first.release()
    assert watching.retired() == [(first.slot, 1)]
    second.release()
