"""A bridge receiver's retirement reports (bridge.receiver.Receiver): a channel in shared
memory, its subscriber in this process, the connection an in-memory transport."""

from __future__ import annotations

import pytest

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from postoffice.bus import BusLimitError, BusStateError, netwire
from postoffice.bus.bridge.link import Link
from postoffice.bus.bridge.receiver import Receiver
from postoffice.core.framing import NEED_DATA
from tests.bus.fixtures import MakeRig
from tests.bus.rig import Rig
from tests.fakes import FakeTransport


def attached(rig: Rig, *, retirement: bool = True) -> tuple[Receiver, Link, FakeTransport]:
    receiver = Receiver("chat")
    link = Link("test", lambda _, __: True, lambda _: None)
    transport = FakeTransport(link)
    link.connection_made(transport)
    publisher = rig.publisher(reliable=True, retirement=retirement)
    fd = publisher.retirement_fileno() if retirement else None
    receiver.attach(link, publisher, -1, fd)
    return receiver, link, transport


def sent(data: bytes) -> list[netwire.BridgeEvent]:
    stream = netwire.bridge_stream()
    stream.feed(data)
    events: list[netwire.BridgeEvent] = []
    while (item := stream.next_event()) is not NEED_DATA:
        events.append(item[1])
    return events


def held(ordinal: int) -> netwire.BridgedMessage:
    return netwire.BridgedMessage(ordinal=ordinal, data=b"m%d" % ordinal, held=True)


async def test_a_held_message_is_reported_by_its_source_ordinal_once_read_here(rig: Rig) -> None:
    receiver, link, transport = attached(rig)
    subscriber = rig.subscriber(reliable=True)
    assert receiver.publish(link, held(700))
    assert transport.take() == b""  # a local reliable subscriber must read it first
    message = subscriber.read()
    assert message is not None
    assert bytes(message.data) == b"m700"
    message.release()
    assert sent(await transport.next_write()) == [netwire.Retired(ordinals=(700,))]
    receiver.detach()


async def test_a_plain_message_is_not_reported(rig: Rig) -> None:
    receiver, link, transport = attached(rig)
    subscriber = rig.subscriber(reliable=True)
    assert receiver.publish(link, netwire.BridgedMessage(ordinal=5, data=b"plain"))
    assert receiver.publish(link, held(6))
    for _ in range(2):
        message = subscriber.read()
        assert message is not None
        message.release()
    # Both retire here; only the held one is told, by its own ordinal.
    assert sent(await transport.next_write()) == [netwire.Retired(ordinals=(6,))]
    receiver.detach()


async def test_a_held_message_nobody_must_read_is_reported_at_once(rig: Rig) -> None:
    receiver, link, transport = attached(rig)
    assert receiver.publish(link, held(9))
    assert sent(await transport.next_write()) == [netwire.Retired(ordinals=(9,))]
    receiver.detach()


async def test_a_held_message_without_retirement_is_refused(rig: Rig) -> None:
    receiver, link, _ = attached(rig, retirement=False)
    with pytest.raises(BusStateError, match=r"^HELD_MESSAGE on an unreliable channel$"):
        receiver.publish(link, held(1))
    receiver.detach()


async def test_more_held_messages_than_a_transmitter_may_hold_are_refused(
    make_rig: MakeRig,
) -> None:
    rig = make_rig(num_slots=netwire.MAX_HELD_MESSAGES + 8)
    receiver, link, _ = attached(rig)
    rig.subscriber(reliable=True)  # reads nothing: nothing retires
    for ordinal in range(1, netwire.MAX_HELD_MESSAGES + 1):
        assert receiver.publish(link, held(ordinal))
    with pytest.raises(BusLimitError, match=r"^more than 256 held messages not retired yet$"):
        receiver.publish(link, held(netwire.MAX_HELD_MESSAGES + 1))
    receiver.detach()


async def test_a_burst_of_retirements_larger_than_a_default_pipe_loses_no_held_one(
    make_rig: MakeRig,
) -> None:
    """Every message the bridge publishes writes a record when it retires; a reader that
    lets thousands go at once (the loop not reading meanwhile) must not push the held
    message's record out of a full pipe."""
    rig = make_rig(num_slots=8192)
    receiver, link, transport = attached(rig)
    subscriber = rig.subscriber(reliable=True)
    plain = 8000
    for ordinal in range(1, plain + 1):
        assert receiver.publish(link, netwire.BridgedMessage(ordinal=ordinal, data=b"p"))
    assert receiver.publish(link, held(plain + 1))
    for _ in range(plain + 1):
        message = subscriber.read()
        assert message is not None
        message.release()
    assert sent(await transport.next_write(timeout_s=5)) == [netwire.Retired(ordinals=(plain + 1,))]
    receiver.detach()
