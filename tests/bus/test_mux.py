"""Multiplexers and virtual channels in one process: filtering, vchan ordinals, drops."""

from __future__ import annotations

import pytest

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from postoffice.bus import BusConfigError, BusLayoutError, Subscriber, atomics, memory
from tests.bus.fixtures import MakeRig
from tests.bus.rig import Rig


@pytest.fixture
def mux(make_rig: MakeRig) -> Rig:
    """A mux of 16 slots of 64 bytes."""
    return make_rig(name="mux", num_slots=16, mux=True)


def drain(subscriber: Subscriber) -> list[tuple[int, int, bytes]]:
    """(ordinal, vchan id, payload) of every message `subscriber` can read now."""
    got: list[tuple[int, int, bytes]] = []
    for _ in range(1000):
        message = subscriber.read()
        if message is None:
            return got
        got.append((message.ordinal, message.vchan_id, bytes(message.data)))
        message.release()
    raise AssertionError("more than 1000 messages")


def test_a_vchan_subscriber_sees_only_its_vchan_in_its_own_ordinals(mux: Rig) -> None:
    on_a = mux.publisher(vchan=1)
    on_b = mux.publisher(vchan=2)
    reader_a = mux.subscriber(vchan=1)
    reader_b = mux.subscriber(vchan=2)
    whole = mux.subscriber()
    assert on_a.publish_bytes(b"a1") == 1
    assert on_b.publish_bytes(b"b1") == 1
    assert on_a.publish_bytes(b"a2") == 2
    assert drain(reader_a) == [(1, 1, b"a1"), (2, 1, b"a2")]
    got_b = reader_b.read()
    assert got_b is not None
    assert (got_b.ordinal, got_b.vchan_ordinal, bytes(got_b.data)) == (1, 1, b"b1")
    got_b.release()
    assert reader_b.read() is None
    seen = []
    while (message := whole.read()) is not None:
        seen.append((message.ordinal, message.vchan_id, message.vchan_ordinal, bytes(message.data)))
        message.release()
    assert seen == [(1, 1, 1, b"a1"), (2, 2, 1, b"b1"), (3, 1, 2, b"a2")]
    assert (reader_a.drops, reader_b.drops, whole.drops) == (0, 0, 0)


def test_publishers_on_one_vchan_share_its_ordinals(mux: Rig) -> None:
    first = mux.publisher(vchan=5)
    second = mux.publisher(vchan=5)
    other = mux.publisher(vchan=6)
    reader = mux.subscriber(vchan=5, max_active=4)
    assert [first.publish_bytes(b"x"), other.publish_bytes(b"y"), second.publish_bytes(b"z")] == [
        1,
        1,
        2,
    ]
    assert mux.channel.vchan_last_ordinal(5) == 2
    assert mux.channel.vchan_last_ordinal(6) == 1
    messages = reader.read_all()
    assert [(m.ordinal, bytes(m.data)) for m in messages] == [(1, b"x"), (2, b"z")]
    for message in messages:
        message.release()


def test_drops_are_counted_in_the_vchan_own_ordinals(make_rig: MakeRig) -> None:
    """Slots reused by other vchans' messages are not drops of this vchan; its own
    overwritten messages are, counted in its ordinals."""
    rig = make_rig(name="mux", num_slots=8, mux=True)
    on_a = rig.publisher(vchan=0)
    on_b = rig.publisher(vchan=1)
    drops: list[int] = []
    reader = rig.subscriber(vchan=0, on_drop=drops.append)
    assert on_a.publish_bytes(b"a1") == 1
    first = reader.read()
    assert first is not None
    first.release()
    for n in range(3):
        on_a.publish_bytes(b"a%d" % (n + 2))  # a2..a4
    for _ in range(8):
        on_b.publish_bytes(b"b")  # reuses every free slot: a2..a4 are gone
    on_a.publish_bytes(b"a5")
    message = reader.read()
    assert message is not None
    assert (message.ordinal, bytes(message.data)) == (5, b"a5")
    message.release()
    assert drops == [3]
    assert reader.drops == 3


def test_a_vchan_reader_waits_for_its_vchan_ordinal_in_flight(mux: Rig) -> None:
    """Ordinal 2 of vchan 3 taken but not yet published: the reader that sees 3 waits."""
    ccb = mux.channel.ccb
    on_vchan = mux.publisher(vchan=3)
    slow = mux.register_publisher(vchan=3)
    reader = mux.subscriber(vchan=3)
    assert on_vchan.publish_bytes(b"one") == 1
    one = reader.read()
    assert one is not None
    one.release()
    # The slow publisher took vchan ordinal 2 and has not published it.
    line = mux.channel.vchan_line(3)
    atomics.store_release_u64(ccb, line, 2)
    atomics.store_release_u64(ccb, memory.pending_vchan_offset(slow), 2)
    assert on_vchan.publish_bytes(b"three") == 3
    assert reader.read() is None
    assert reader.drops == 0
    # A pending ordinal of another vchan does not hold the reader up.
    atomics.store_release_u64(ccb, memory.publisher_vchan_offset(slow), 4)
    three = reader.read()
    assert three is not None
    assert (three.ordinal, reader.drops) == (3, 1)
    three.release()


def test_a_reliable_vchan_subscriber_blocks_only_its_vchan(make_rig: MakeRig) -> None:
    rig = make_rig(name="mux", num_slots=4, mux=True)
    on_a = rig.publisher(reliable=True, vchan=0)
    on_b = rig.publisher(reliable=True, vchan=1)
    reader_b = rig.subscriber(reliable=True, vchan=1)
    for _ in range(10):
        assert on_a.publish_bytes(b"a") is not None  # nobody must read vchan 0
    for _ in range(4):
        assert on_b.publish_bytes(b"b") is not None
    assert on_b.get_buffer(1) is None  # every slot is unread by vchan 1's reader
    message = reader_b.read()
    assert message is not None
    assert message.ordinal == 1
    message.release()
    assert on_b.get_buffer(1) is not None


def test_a_reliable_whole_mux_subscriber_must_read_every_vchan(make_rig: MakeRig) -> None:
    rig = make_rig(name="mux", num_slots=4, mux=True)
    on_a = rig.publisher(reliable=True, vchan=0)
    on_b = rig.publisher(reliable=True, vchan=7)
    rig.subscriber(reliable=True)
    for publisher in (on_a, on_b, on_a, on_b):
        assert publisher.publish_bytes(b"m") is not None
    assert on_a.get_buffer(1) is None
    assert on_b.get_buffer(1) is None


def test_newest_on_a_vchan_skips_only_its_own_and_marks_them_read(make_rig: MakeRig) -> None:
    rig = make_rig(name="mux", num_slots=6, mux=True)
    on_a = rig.publisher(reliable=True, vchan=0)
    on_b = rig.publisher(reliable=True, vchan=1)
    reader = rig.subscriber(reliable=True, vchan=0)
    for n in range(3):
        on_a.publish_bytes(b"a%d" % n)
        on_b.publish_bytes(b"b%d" % n)
    newest = reader.read(newest=True)
    assert newest is not None
    assert (newest.ordinal, bytes(newest.data)) == (3, b"a2")
    newest.release()
    # Vchan 0's older messages were marked read: three more fit beside vchan 1's.
    for _ in range(3):
        assert on_a.publish_bytes(b"more") is not None


def test_find_on_a_vchan_matches_only_its_messages(mux: Rig) -> None:
    on_a = mux.publisher(vchan=0)
    on_b = mux.publisher(vchan=1)
    reader_a = mux.subscriber(vchan=0)
    whole = mux.subscriber()
    on_a.publish_bytes(b"a")
    on_b.publish_bytes(b"b")
    stamped = [whole.read() for _ in range(2)]
    stamps = []
    for message in stamped:
        assert message is not None
        stamps.append(message.timestamp_ns)
        message.release()
    found = reader_a.find(stamps[0])
    assert found is not None
    assert (found.ordinal, bytes(found.data)) == (1, b"a")
    found.release()
    assert reader_a.find(stamps[1]) is None


def test_two_hundred_vchans_on_one_mux(make_rig: MakeRig) -> None:
    """Many channels multiplexed: each of 200 vchans has its own ordinals, the mux's
    subscriber sees them all, and a vchan's subscriber only its own."""
    rig = make_rig(name="mux", num_slots=64, mux=True)
    whole = rig.subscriber(max_active=1)
    watched = {vchan: rig.subscriber(vchan=vchan) for vchan in range(0, 200, 20)}
    publishers = [rig.publisher(vchan=v) for v in range(32)]
    seen: list[tuple[int, int]] = []
    for round_ in range(2):
        for vchan in range(200):
            publisher = publishers[vchan % 32]
            if publisher.vchan_id != vchan:
                rig.channel.remove_publisher(publisher.publisher_id)
                publisher.close()
                publisher = rig.publisher(vchan=vchan)
                publishers[vchan % 32] = publisher
            assert publisher.publish_bytes(b"%d" % vchan) == round_ + 1
            message = whole.read()
            assert message is not None
            seen.append((message.vchan_id, message.vchan_ordinal))
            message.release()
            for other, subscriber in watched.items():
                expected = [(round_ + 1, vchan, b"%d" % vchan)] if other == vchan else []
                assert drain(subscriber) == expected
    assert seen == [(v, r + 1) for r in range(2) for v in range(200)]
    assert sum(subscriber.drops for subscriber in watched.values()) == 0


def test_a_vchan_needs_a_mux_and_an_id_in_range(rig: Rig, mux: Rig) -> None:
    with pytest.raises(BusConfigError, match=r"^channel 'test' is not a multiplexer$"):
        rig.channel.add_subscriber(vchan=0)
    with pytest.raises(BusConfigError, match=r"^channel 'test' is not a multiplexer$"):
        rig.channel.add_publisher(vchan=0)
    with pytest.raises(BusLayoutError, match=r"^vchan id 1024 outside 0\.\.1023$"):
        mux.channel.add_publisher(vchan=1024)


def test_removing_a_vchan_subscriber_takes_it_out_of_the_vchan_mask(make_rig: MakeRig) -> None:
    rig = make_rig(name="mux", num_slots=4, mux=True)
    publisher = rig.publisher(reliable=True, vchan=2)
    user = rig.register_subscriber(reliable=True, vchan=2)
    line = rig.channel.vchan_line(2)
    assert atomics.load_acquire_u64(rig.channel.ccb, line + memory.VCHAN_SUBSCRIBERS) == 1 << user
    rig.channel.remove_subscriber(user)
    assert atomics.load_acquire_u64(rig.channel.ccb, line + memory.VCHAN_SUBSCRIBERS) == 0
    for _ in range(8):
        assert publisher.publish_bytes(b"m") is not None
