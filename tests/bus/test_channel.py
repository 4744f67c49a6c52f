"""The channel library in one process: publish, read, reliability, drops, resize, waits."""

from __future__ import annotations

import asyncio
import gc
import os
import select

import pytest

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from postoffice.bus import (
    BusConfigError,
    BusLayoutError,
    BusLocation,
    BusUsageError,
    CapacityError,
    Channel,
    ChannelFds,
    ChannelSpec,
    ChecksumError,
    MessageSizeError,
    SystemControlBlock,
    TooManyUsersError,
    atomics,
    memory,
    remove_session_files,
)
from tests.bus.fixtures import MakeRig
from tests.bus.rig import Rig, shm_directory


def test_two_messages_are_read_back_exactly_and_in_order(rig: Rig) -> None:
    """The "Mikael" test."""
    publisher = rig.publisher()
    subscriber = rig.subscriber()
    assert publisher.publish_bytes(b"Hello Mikael") == 1
    assert publisher.publish_bytes(b"Goodbye") == 2
    first = subscriber.read()
    assert first is not None
    assert (bytes(first.data), first.ordinal, first.size) == (b"Hello Mikael", 1, 12)
    first.release()
    second = subscriber.read()
    assert second is not None
    assert (bytes(second.data), second.ordinal) == (b"Goodbye", 2)
    second.release()
    assert subscriber.read() is None
    assert subscriber.drops == 0


def test_a_publisher_writes_in_place_and_publishes_a_prefix(rig: Rig) -> None:
    publisher = rig.publisher()
    subscriber = rig.subscriber()
    view = publisher.get_buffer()
    assert view is not None
    assert len(view) == 64
    view[:5] = b"abcde"
    publisher.publish(3)
    with pytest.raises(ValueError, match="released"):
        view[0]
    message = subscriber.read()
    assert message is not None
    assert bytes(message.data) == b"abc"
    assert message.data.readonly


def test_read_newest_skips_without_counting_drops(rig: Rig) -> None:
    publisher = rig.publisher()
    drops: list[int] = []
    subscriber = rig.subscriber(on_drop=drops.append)
    for n in range(5):
        publisher.publish_bytes(b"m%d" % n)
    message = subscriber.read(newest=True)
    assert message is not None
    assert bytes(message.data) == b"m4"
    message.release()
    assert subscriber.read() is None
    publisher.publish_bytes(b"m5")
    later = subscriber.read()
    assert later is not None
    assert later.ordinal == 6
    assert drops == []
    assert subscriber.drops == 0


def test_reliable_publisher_waits_for_a_held_slot(make_rig: MakeRig) -> None:
    """5 slots, one message held: 4 more publishes succeed, then None until the release."""
    rig = make_rig(num_slots=5)
    publisher = rig.publisher(reliable=True)
    subscriber = rig.subscriber(reliable=True)
    assert publisher.publish_bytes(b"held") == 1
    held = subscriber.read()
    assert held is not None
    assert [publisher.publish_bytes(b"more%d" % n) for n in range(4)] == [2, 3, 4, 5]
    assert publisher.get_buffer(8) is None
    assert publisher.publish_bytes(b"nope") is None
    assert publisher.wait(0) is False
    held.release()
    assert publisher.wait(0) is True
    assert publisher.publish_bytes(b"after") == 6
    seen = []
    while (message := subscriber.read()) is not None:
        seen.append(bytes(message.data))
        message.release()
    assert seen == [b"more0", b"more1", b"more2", b"more3", b"after"]


def test_reliable_publisher_is_not_held_back_by_an_unreliable_subscriber(
    make_rig: MakeRig,
) -> None:
    rig = make_rig(num_slots=3)
    publisher = rig.publisher(reliable=True)
    rig.subscriber()
    assert [publisher.publish_bytes(b"x") for _ in range(10)] == list(range(1, 11))


def test_unreliable_drops_are_counted_by_ordinal_gaps(make_rig: MakeRig) -> None:
    rig = make_rig(num_slots=5)
    publisher = rig.publisher()
    drops: list[int] = []
    subscriber = rig.subscriber(max_active=2, on_drop=drops.append)
    publisher.publish_bytes(b"first")
    held = subscriber.read()
    assert held is not None
    assert held.ordinal == 1
    for n in range(2, 12):
        publisher.publish_bytes(b"m%d" % n)
    # 4 free slots kept the last 4 (8..11); 2..7 were reused before they were read.
    following = subscriber.read()
    assert following is not None
    assert following.ordinal == 8
    assert drops == [6]
    assert subscriber.drops == 6
    assert rig.channel.stats().drops == 6
    assert bytes(held.data) == b"first"


def test_empty_messages_are_refused(rig: Rig) -> None:
    publisher = rig.publisher()
    with pytest.raises(
        MessageSizeError, match=r"^a message is 1\.\.1073741824 bytes, asked for 0$"
    ):
        publisher.get_buffer(0)
    assert publisher.get_buffer(4) is not None
    with pytest.raises(
        MessageSizeError, match=r"^cannot publish an empty message: a message has 1 byte or more$"
    ):
        publisher.publish(0)
    with pytest.raises(MessageSizeError, match=r"^cannot publish 5 bytes from a buffer of 4$"):
        publisher.publish(5)
    with pytest.raises(MessageSizeError):
        publisher.publish_bytes(b"")


def test_publish_needs_a_buffer_and_only_reliable_publishers_wait(rig: Rig) -> None:
    publisher = rig.publisher()
    with pytest.raises(BusUsageError, match=r"^publish without a buffer: call get_buffer first$"):
        publisher.publish(1)
    with pytest.raises(
        BusUsageError, match=r"^only a reliable publisher waits: an unreliable one always"
    ):
        publisher.wait(0)


def test_a_65th_subscriber_is_refused_with_the_bitmask_limit(make_rig: MakeRig) -> None:
    rig = make_rig(num_slots=4)
    ids = [rig.channel.add_subscriber() for _ in range(64)]
    assert ids == list(range(64))
    with pytest.raises(
        TooManyUsersError,
        match=r"^channel 'test' has 64 subscribers, the limit \(each is one bit of a 64-bit "
        r"mask\)$",
    ):
        rig.channel.add_subscriber()
    rig.channel.remove_subscriber(10)
    assert rig.channel.add_subscriber() == 10


def test_a_65th_publisher_is_refused(make_rig: MakeRig) -> None:
    rig = make_rig(num_slots=4)
    for _ in range(64):
        rig.channel.add_publisher(reliable=True)
    with pytest.raises(TooManyUsersError, match=r"^channel 'test' has 64 publishers, the limit"):
        rig.channel.add_publisher(reliable=True)


def test_unreliable_channel_admission_rule(make_rig: MakeRig) -> None:
    rig = make_rig(num_slots=5)
    rig.channel.add_publisher()
    rig.channel.add_subscriber(max_active_messages=2)  # 1 + 1 + 2 + 1 = 5
    with pytest.raises(
        CapacityError,
        match=r"^unreliable channel 'test' has 5 slots and needs 7: publishers 1 \+ "
        r"subscribers 2 \+ max active messages 3 \+ 1$",
    ):
        rig.channel.add_subscriber()
    with pytest.raises(CapacityError, match=r"needs 6: publishers 2 \+ subscribers 1"):
        rig.channel.add_publisher()
    # Reliable publishers never need the rule: they wait instead.
    reliable = make_rig(num_slots=2)
    reliable.channel.add_publisher(reliable=True)
    for _ in range(5):
        reliable.channel.add_subscriber(max_active_messages=4)


def test_a_larger_message_grows_the_channel(rig: Rig) -> None:
    publisher = rig.publisher()
    subscriber = rig.subscriber(max_active=2)
    publisher.publish_bytes(b"small")
    small = subscriber.read()
    big = bytes(range(256)) * 4
    publisher.publish_bytes(big)
    large = subscriber.read()
    assert small is not None
    assert large is not None
    assert bytes(small.data) == b"small"
    assert bytes(large.data) == big
    assert (small.buffer_index, large.buffer_index) == (0, 1)
    stats = rig.channel.stats()
    assert (stats.num_buffers, stats.slot_size, stats.max_message_bytes) == (2, 1024, 1024)
    assert rig.location.buffer_path(3, 1).stat().st_size == 8 * 1024
    # Another process's view of the channel maps the new buffer when it meets it.
    other = rig.reopen()
    try:
        assert other.buffer(1).slot_size == 1024
    finally:
        other.close()


def test_a_fixed_size_channel_refuses_to_grow(make_rig: MakeRig) -> None:
    rig = make_rig(fixed_size=True)
    publisher = rig.publisher()
    with pytest.raises(
        MessageSizeError, match=r"^message of 65 bytes exceeds the fixed slot size 64"
    ):
        publisher.get_buffer(65)


def test_a_corrupted_payload_fails_its_checksum(make_rig: MakeRig) -> None:
    rig = make_rig(checksum=True)
    publisher = rig.publisher()
    subscriber = rig.subscriber()
    publisher.publish_bytes(b"intact")
    publisher.publish_bytes(b"broken")
    message = subscriber.read()
    assert message is not None
    assert bytes(message.data) == b"intact"
    message.release()
    buffer = rig.channel.buffer(0)
    _, second_slot_holders, _ = rig.channel.slot_words(1)
    assert second_slot_holders == 0
    buffer.view[1 * 64] = ord("B")
    with pytest.raises(ChecksumError, match=r"^message 2 of channel 'test' fails its checksum$"):
        subscriber.read()
    assert rig.channel.slot_words(1)[1] == 0


def test_find_returns_the_message_with_a_timestamp(rig: Rig) -> None:
    publisher = rig.publisher()
    subscriber = rig.subscriber()
    for n in range(3):
        publisher.publish_bytes(b"m%d" % n)
    stamps = []
    while (message := subscriber.read()) is not None:
        stamps.append(message.timestamp_ns)
        message.release()
    found = subscriber.find(stamps[1])
    assert found is not None
    assert bytes(found.data) == b"m1"
    found.release()
    assert subscriber.find(stamps[2] + 1) is None
    assert subscriber.last_ordinal == 3


def test_read_all_returns_a_batch_up_to_the_active_limit(rig: Rig) -> None:
    publisher = rig.publisher()
    subscriber = rig.subscriber(max_active=3)
    for n in range(5):
        publisher.publish_bytes(b"m%d" % n)
    batch = subscriber.read_all()
    assert [bytes(m.data) for m in batch] == [b"m0", b"m1", b"m2"]
    assert subscriber.held == 3
    rest = subscriber.read_all()
    assert all(m.released for m in batch)
    assert [bytes(m.data) for m in rest] == [b"m3", b"m4"]
    assert subscriber.read_all() == []


def test_reading_past_the_active_limit_releases_the_oldest(rig: Rig) -> None:
    publisher = rig.publisher()
    subscriber = rig.subscriber()
    publisher.publish_bytes(b"one")
    publisher.publish_bytes(b"two")
    first = subscriber.read()
    second = subscriber.read()
    assert first is not None
    assert second is not None
    assert first.released
    assert subscriber.held == 1
    with pytest.raises(ValueError, match="released"):
        bytes(first.data)
    assert bytes(second.data) == b"two"


def test_a_dropped_message_object_releases_its_slot(rig: Rig) -> None:
    publisher = rig.publisher()
    subscriber = rig.subscriber()
    publisher.publish_bytes(b"x")
    message = subscriber.read()
    assert message is not None
    slot = message.slot
    assert rig.channel.slot_words(slot)[1] != 0
    del message
    gc.collect()
    assert rig.channel.slot_words(slot)[1] == 0
    assert subscriber.held == 0


def test_wait_reports_a_message_and_times_out_without_one(rig: Rig) -> None:
    publisher = rig.publisher()
    subscriber = rig.subscriber()
    assert subscriber.wait(0) is False
    publisher.publish_bytes(b"x")
    assert subscriber.wait(0) is True
    # A wait leaves no waiting bit behind: publishers need not wake anyone.
    assert atomics.load_acquire_u64(rig.channel.ccb, memory.CCB_SUBSCRIBERS_WAITING) == 0


def test_an_external_poll_loop_is_woken_for_each_new_message(rig: Rig) -> None:
    """Get the fd once; drain reads until None; a publish then makes the fd readable."""
    publisher = rig.publisher()
    subscriber = rig.subscriber()
    fd = subscriber.fileno()
    assert subscriber.read() is None
    assert select.select([fd], [], [], 0)[0] == []
    for round_ in range(3):
        publisher.publish_bytes(b"r%d" % round_)
        publisher.publish_bytes(b"s%d" % round_)
        assert select.select([fd], [], [], 0)[0] == [fd]
        got = []
        while (message := subscriber.read()) is not None:
            got.append(bytes(message.data))
            message.release()
        assert got == [b"r%d" % round_, b"s%d" % round_]
        assert select.select([fd], [], [], 0)[0] == []


def test_a_polled_reliable_publisher_is_woken_by_a_release(make_rig: MakeRig) -> None:
    rig = make_rig(num_slots=2)
    publisher = rig.publisher(reliable=True)
    subscriber = rig.subscriber(reliable=True)
    fd = publisher.fileno()
    publisher.publish_bytes(b"a")
    publisher.publish_bytes(b"b")
    assert publisher.get_buffer(1) is None
    assert select.select([fd], [], [], 0)[0] == []
    message = subscriber.read()
    assert message is not None
    message.release()
    assert select.select([fd], [], [], 0)[0] == [fd]
    assert publisher.get_buffer(1) is not None


async def test_wait_async_wakes_on_a_publish(rig: Rig) -> None:
    publisher = rig.publisher()
    subscriber = rig.subscriber()
    loop = asyncio.get_running_loop()
    loop.call_soon(publisher.publish_bytes, b"async")
    async with asyncio.timeout(5):
        await subscriber.wait_async()
    message = subscriber.read()
    assert message is not None
    assert bytes(message.data) == b"async"


async def test_reliable_publisher_wait_async_wakes_on_a_release(make_rig: MakeRig) -> None:
    rig = make_rig(num_slots=1)
    publisher = rig.publisher(reliable=True)
    subscriber = rig.subscriber(reliable=True)
    publisher.publish_bytes(b"only")
    message = subscriber.read()
    assert message is not None
    asyncio.get_running_loop().call_soon(message.release)
    async with asyncio.timeout(5):
        await publisher.wait_async()
    assert publisher.publish_bytes(b"next") == 2


def test_a_dead_subscribers_holds_are_released(make_rig: MakeRig) -> None:
    rig = make_rig(num_slots=3)
    publisher = rig.publisher(reliable=True)
    dead = rig.register_subscriber(reliable=True, max_active=2)
    reader = rig.subscriber_for(dead)
    for n in range(3):
        publisher.publish_bytes(b"m%d" % n)
    first = reader.read()
    kept = reader.read()
    assert first is not None
    assert kept is not None
    assert publisher.get_buffer(1) is None
    # The subscriber "dies": its Message objects never release; the server cleans up.
    assert rig.channel.release_subscriber(dead, rig.triggers()) == 3
    assert all(rig.channel.slot_words(i)[1:] == (0, 0) for i in range(3))
    assert publisher.get_buffer(1) is not None


def test_a_removed_subscribers_late_unread_bit_does_not_block_a_reliable_publisher(
    make_rig: MakeRig,
) -> None:
    """A publish under way while a subscriber is removed may store its unread bit after
    the cleanup cleared it; reliable publishers count only registered subscribers."""
    rig = make_rig(num_slots=2)
    publisher = rig.publisher(reliable=True)
    gone = rig.register_subscriber(reliable=True)
    rig.channel.remove_subscriber(gone)
    for slot in range(2):
        line = memory.slot_offset(slot) + memory.SLOT_UNREAD
        atomics.fetch_or_u64(rig.channel.ccb, line, 1 << gone)
    assert [publisher.publish_bytes(b"x") for _ in range(3)] == [1, 2, 3]


def test_a_dead_publishers_busy_slot_is_freed(rig: Rig) -> None:
    user = rig.register_publisher()
    publisher = rig.publisher_for(user)
    assert publisher.get_buffer(8) is not None
    busy = [i for i in range(8) if rig.channel.slot_words(i)[0] & memory.BUSY_BIT]
    assert busy == [0]
    assert rig.channel.free_publisher(user) == 1
    assert rig.channel.slot_words(0) == (0, 0, 0)


def test_registration_moves_the_session_counters(make_rig: MakeRig) -> None:
    rig = make_rig()
    scb, fd = SystemControlBlock.create(rig.location)
    try:
        channel = Channel.open(rig.location, rig.fds, scb=scb)
        publisher = channel.add_publisher(reliable=True)
        channel.add_subscriber()
        counters = scb.counters(3)
        assert (counters.publishers, counters.reliable_publishers, counters.subscribers) == (
            1, 1, 1,
        )  # fmt: skip
        assert counters.updates == 3
        channel.remove_publisher(publisher)
        assert scb.counters(3).publishers == 0
        assert scb.counters(3).reliable_publishers == 0
        reopened = SystemControlBlock.open(fd, rig.directory)
        assert reopened.location == rig.location
        assert reopened.counters(3).subscribers == 1
        reopened.close()
        channel.close()
    finally:
        scb.close()
        os.close(fd)


def test_channel_files_are_named_and_removed(rig: Rig) -> None:
    names = sorted(p.name for p in rig.directory.iterdir())
    session = rig.location.session
    assert names == [
        f"po-bus.{session}.3.0.buf",
        f"po-bus.{session}.3.bcb",
        f"po-bus.{session}.3.ccb",
    ]
    assert remove_session_files(rig.location) == 3
    assert list(rig.directory.iterdir()) == []


def test_mapping_something_that_is_not_a_channel_is_refused() -> None:
    directory = shm_directory()
    location = BusLocation.new(directory)
    path = directory / "junk"
    path.write_bytes(bytes(memory.ccb_bytes(4)))
    fd = os.open(path, os.O_RDWR)
    try:
        fds = ChannelFds(ccb=fd, bcb=fd, buffers=())
        with pytest.raises(BusLayoutError, match=r"^not a ccb: magic 0x0+$"):
            Channel.open(location, fds)
    finally:
        os.close(fd)
        path.unlink()
        directory.rmdir()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"num_slots": 0}, r"^num_slots must be 1\.\.65536, got 0$"),
        ({"slot_size": 0}, r"^slot_size must be 1\.\.1073741824 bytes, got 0$"),
        ({"name": ""}, r"^channel name is empty$"),
        ({"channel_id": 5000}, r"^channel id 5000 outside 0\.\.1023$"),
        ({"num_slots": 65536, "slot_size": 1 << 30}, r"exceeds the buffer limit"),
    ],
)
def test_bad_channel_specs_are_refused(fields: dict[str, object], message: str) -> None:
    settings: dict[str, object] = {"channel_id": 1, "name": "c", "num_slots": 4, "slot_size": 64}
    settings.update(fields)
    with pytest.raises(BusConfigError, match=message):
        ChannelSpec(**settings)  # type: ignore[arg-type]


def test_a_polled_reliable_publisher_never_takes_a_slot_a_second_subscriber_owes(
    make_rig: MakeRig,
) -> None:
    """The look after arming the wait bit counts every reliable subscriber, not the
    first alone."""
    rig = make_rig(num_slots=2)
    publisher = rig.publisher(reliable=True)
    first = rig.subscriber(reliable=True)
    rig.subscriber(reliable=True)  # reads nothing
    publisher.fileno()
    for _ in range(2):
        assert publisher.publish_bytes(b"m") is not None
    for _ in range(2):
        message = first.read()
        assert message is not None
        message.release()
    assert publisher.get_buffer(1) is None
