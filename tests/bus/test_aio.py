"""The asyncio helpers (bus.aio) on a real channel in this process: waits, iteration, publish."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from postoffice.bus import BusClosedError, BusUsageError, aio
from tests.bus.fixtures import MakeRig
from tests.bus.rig import Rig

#: Every wait in these tests that should end ends well within this.
LIMIT_S = 5.0


async def settle() -> None:
    """Let the loop run every ready callback (the waiting task reaches its sleep)."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_wait_returns_without_suspending_when_a_message_is_there(rig: Rig) -> None:
    publisher = rig.publisher()
    subscriber = rig.subscriber()
    publisher.publish_bytes(b"ready")
    coroutine = aio.wait(subscriber, LIMIT_S)
    # No event loop runs here: the first step finishing proves the wait never slept.
    with pytest.raises(StopIteration) as finished:
        coroutine.send(None)
    assert finished.value.value is True


async def test_wait_wakes_on_a_publish_and_removes_its_reader(rig: Rig) -> None:
    publisher = rig.publisher()
    user = rig.register_subscriber()
    subscriber = rig.subscriber_for(user)
    loop = asyncio.get_running_loop()
    loop.call_soon(publisher.publish_bytes, b"later")
    assert await aio.wait(subscriber, LIMIT_S) is True
    assert loop.remove_reader(rig.subscriber_fds[user]) is False
    message = subscriber.read()
    assert message is not None
    assert bytes(message.data) == b"later"


async def test_wait_times_out_with_false_and_removes_its_reader(rig: Rig) -> None:
    rig.publisher()
    user = rig.register_subscriber()
    subscriber = rig.subscriber_for(user)
    assert await aio.wait(subscriber, 0.01) is False
    assert asyncio.get_running_loop().remove_reader(rig.subscriber_fds[user]) is False


async def test_a_cancelled_wait_removes_its_reader_and_the_next_wait_works(rig: Rig) -> None:
    publisher = rig.publisher()
    user = rig.register_subscriber()
    subscriber = rig.subscriber_for(user)
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(aio.wait(subscriber))
    await settle()
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert loop.remove_reader(rig.subscriber_fds[user]) is False
    loop.call_soon(publisher.publish_bytes, b"after")
    assert await aio.wait(subscriber, LIMIT_S) is True


async def test_a_second_concurrent_wait_on_one_subscriber_is_refused(rig: Rig) -> None:
    publisher = rig.publisher()
    subscriber = rig.subscriber()
    first = asyncio.create_task(aio.wait(subscriber, LIMIT_S))
    await settle()
    with pytest.raises(
        BusUsageError,
        match=r"^subscriber 0 of 'test' is already waited on by another task of this loop$",
    ):
        await aio.wait(subscriber, LIMIT_S)
    publisher.publish_bytes(b"one")
    assert await first is True


async def test_waits_on_two_subscribers_of_one_channel_both_wake(rig: Rig) -> None:
    publisher = rig.publisher()
    subscribers = [rig.subscriber(), rig.subscriber()]
    waits = [asyncio.create_task(aio.wait(s, LIMIT_S)) for s in subscribers]
    await settle()
    publisher.publish_bytes(b"both")
    assert await asyncio.gather(*waits) == [True, True]


async def test_messages_yields_each_message_in_order_then_ends_after_the_timeout(
    rig: Rig,
) -> None:
    publisher = rig.publisher()
    subscriber = rig.subscriber(max_active=4)
    publisher.publish_bytes(b"m0")
    loop = asyncio.get_running_loop()
    for n in range(1, 4):  # the rest arrive while the iteration waits
        loop.call_later(0.001 * n, publisher.publish_bytes, b"m%d" % n)
    seen: list[bytes] = []
    async with asyncio.timeout(LIMIT_S):
        async for message in aio.messages(subscriber, timeout_s=0.2):
            with message:
                seen.append(bytes(message.data))
    assert seen == [b"m0", b"m1", b"m2", b"m3"]
    assert subscriber.drops == 0


async def test_messages_with_newest_skips_to_the_newest(rig: Rig) -> None:
    publisher = rig.publisher()
    subscriber = rig.subscriber()
    for n in range(3):
        publisher.publish_bytes(b"m%d" % n)
    iterator = aio.messages(subscriber, newest=True, timeout_s=0)
    message = await anext(iterator)
    assert bytes(message.data) == b"m2"
    message.release()
    with pytest.raises(StopAsyncIteration):
        await anext(iterator)


async def test_messages_of_a_closed_subscriber_raises(rig: Rig) -> None:
    rig.publisher()
    subscriber = rig.subscriber()
    subscriber.close()
    with pytest.raises(BusClosedError, match=r"^subscriber 0 is closed$"):
        await anext(aio.messages(subscriber))


async def test_publish_waits_for_a_reliable_subscriber_to_release(make_rig: MakeRig) -> None:
    rig = make_rig(num_slots=2)
    user = rig.register_publisher(reliable=True)
    publisher = rig.publisher_for(user)
    subscriber = rig.subscriber(reliable=True)
    assert await aio.publish(publisher, b"a", timeout_s=0) == 1
    assert await aio.publish(publisher, b"b", timeout_s=0) == 2
    assert await aio.publish(publisher, b"c", timeout_s=0.01) is None  # nothing read yet
    first = subscriber.read()
    assert first is not None
    asyncio.get_running_loop().call_soon(first.release)
    assert await aio.publish(publisher, b"c", timeout_s=LIMIT_S) == 3
    assert asyncio.get_running_loop().remove_reader(rig.publisher_fds[user]) is False


async def test_wait_of_a_reliable_publisher_claims_a_slot_at_once_when_one_is_free(
    make_rig: MakeRig,
) -> None:
    rig = make_rig(num_slots=2)
    publisher = rig.publisher(reliable=True)
    rig.subscriber(reliable=True)
    assert await aio.wait(publisher, 0) is True
    view = publisher.get_buffer(3)
    assert view is not None
    view[:] = b"xyz"
    assert publisher.publish(3) == 1


async def test_wait_on_an_unreliable_publisher_is_refused(rig: Rig) -> None:
    publisher = rig.publisher()
    with pytest.raises(
        BusUsageError, match=r"^only a reliable publisher waits: an unreliable one always"
    ):
        await aio.wait(publisher, 0)


async def test_a_negative_timeout_is_refused(rig: Rig) -> None:
    subscriber = rig.subscriber()
    with pytest.raises(BusUsageError, match=r"^a wait's timeout is at least 0 seconds, got -1$"):
        await aio.wait(subscriber, -1)


async def test_wait_on_a_closed_subscriber_raises_even_with_a_message_there(rig: Rig) -> None:
    publisher = rig.publisher()
    subscriber = rig.subscriber()
    publisher.publish_bytes(b"unread")
    subscriber.close()
    with pytest.raises(BusClosedError, match=r"^subscriber 0 is closed$"):
        await aio.wait(subscriber, 0)


async def test_wait_on_a_closed_publisher_raises(make_rig: MakeRig) -> None:
    rig = make_rig(num_slots=2)
    publisher = rig.publisher(reliable=True)
    publisher.close()
    with pytest.raises(BusClosedError, match=r"^publisher 0 is closed$"):
        await aio.wait(publisher, 0)
