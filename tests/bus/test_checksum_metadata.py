"""Per-message metadata and checksums: sizes, corruption, error or counted drop."""

from __future__ import annotations

import zlib

import pytest

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from postoffice.bus import BusConfigError, ChannelSpec, ChecksumError, MessageSizeError, memory
from tests.bus.fixtures import MakeRig
from tests.bus.rig import Rig


@pytest.mark.parametrize("size", [0, 1, 20, 64, 65, 200, memory.MAX_METADATA_BYTES])
def test_metadata_of_every_size_up_to_the_channels_comes_back(make_rig: MakeRig, size: int) -> None:
    rig = make_rig(metadata_bytes=memory.MAX_METADATA_BYTES, checksum=True)
    publisher = rig.publisher()
    subscriber = rig.subscriber()
    metadata = bytes(range(256))[:size]
    assert publisher.publish_bytes(b"payload", metadata=metadata) == 1
    message = subscriber.read()
    assert message is not None
    assert (bytes(message.metadata), bytes(message.data)) == (metadata, b"payload")
    assert message.metadata.readonly
    message.release()


def test_metadata_areas_of_neighbouring_slots_do_not_overlap(make_rig: MakeRig) -> None:
    rig = make_rig(metadata_bytes=65, num_slots=8)
    publisher = rig.publisher()
    subscriber = rig.subscriber(max_active=4)
    for n in range(4):
        publisher.publish_bytes(b"m", metadata=bytes([n]) * 65)
    messages = subscriber.read_all()
    assert [bytes(m.metadata) for m in messages] == [bytes([n]) * 65 for n in range(4)]
    for message in messages:
        message.release()


def test_metadata_past_the_channels_size_is_refused_and_costs_no_slot(make_rig: MakeRig) -> None:
    rig = make_rig(metadata_bytes=16)
    publisher = rig.publisher()
    subscriber = rig.subscriber()
    with pytest.raises(
        MessageSizeError,
        match=r"^metadata of 17 bytes exceeds the 16 bytes per message of channel 'test'$",
    ):
        publisher.publish_bytes(b"x", metadata=b"m" * 17)
    assert all(rig.channel.slot_words(i)[0] == 0 for i in range(rig.channel.num_slots))
    view = publisher.get_buffer(1)
    assert view is not None
    view[:1] = b"y"
    with pytest.raises(MessageSizeError, match=r"^metadata of 17 bytes exceeds"):
        publisher.publish(1, metadata=b"m" * 17)
    assert publisher.publish(1, metadata=b"m" * 16) == 1
    message = subscriber.read()
    assert message is not None
    assert bytes(message.metadata) == b"m" * 16


def test_a_channel_without_metadata_refuses_any() -> None:
    with pytest.raises(BusConfigError, match=r"^metadata_bytes 257 outside 0\.\.256$"):
        ChannelSpec(channel_id=1, name="x", num_slots=4, slot_size=64, metadata_bytes=257)


def test_a_corrupted_payload_is_an_error_and_the_next_read_goes_on(make_rig: MakeRig) -> None:
    rig = make_rig(checksum=True)
    publisher = rig.publisher()
    subscriber = rig.subscriber()
    for word in (b"one", b"two", b"three"):
        publisher.publish_bytes(word)
    rig.channel.buffer(0).view[1 * 64] = ord("T")
    first = subscriber.read()
    assert first is not None
    first.release()
    with pytest.raises(ChecksumError, match=r"^message 2 of channel 'test' fails its checksum$"):
        subscriber.read()
    third = subscriber.read()
    assert third is not None
    assert (third.ordinal, bytes(third.data)) == (3, b"three")
    assert subscriber.drops == 0


def test_corrupted_metadata_fails_the_checksum(make_rig: MakeRig) -> None:
    rig = make_rig(checksum=True, metadata_bytes=8)
    publisher = rig.publisher()
    subscriber = rig.subscriber()
    publisher.publish_bytes(b"payload", metadata=b"meta")
    with rig.channel.metadata(0, 1, writable=True) as area:
        area[0] = ord("M")
    with pytest.raises(ChecksumError, match=r"^message 1 of channel 'test' fails its checksum$"):
        subscriber.read()
    assert rig.channel.slot_words(0)[1] == 0


def test_with_drop_bad_checksums_a_bad_message_is_a_counted_drop(make_rig: MakeRig) -> None:
    rig = make_rig(checksum=True)
    publisher = rig.publisher()
    drops: list[int] = []
    user = rig.register_subscriber()
    subscriber = rig.subscriber_for(user, on_drop=drops.append)
    subscriber.drop_bad_checksums = True
    for word in (b"one", b"two", b"three"):
        publisher.publish_bytes(word)
    rig.channel.buffer(0).view[0] = ord("O")
    message = subscriber.read()
    assert message is not None
    assert (message.ordinal, bytes(message.data)) == (2, b"two")
    assert (subscriber.drops, subscriber.bad_checksums, drops) == (1, 1, [1])
    assert rig.channel.stats().drops == 1
    message.release()
    assert rig.channel.slot_words(0)[1] == 0


def test_a_custom_checksum_must_be_the_same_on_both_sides(make_rig: MakeRig) -> None:
    def adler(metadata: memoryview, payload: memoryview) -> int:
        return zlib.adler32(payload, zlib.adler32(metadata))

    rig = make_rig(checksum=True)
    rig.register_publisher()
    from postoffice.bus import Publisher, Subscriber

    publisher = Publisher(rig.channel, 0, triggers=rig.triggers(), checksum=adler)
    rig.users.append(publisher)
    agreeing = rig.register_subscriber()
    other = rig.register_subscriber()
    good = Subscriber(
        rig.channel, agreeing, triggers=rig.triggers(), eventfd=rig.subscriber_fds[agreeing],
        checksum=adler,
    )  # fmt: skip
    default = Subscriber(
        rig.channel, other, triggers=rig.triggers(), eventfd=rig.subscriber_fds[other]
    )
    rig.users.extend([good, default])
    publisher.publish_bytes(b"hello")
    message = good.read()
    assert message is not None
    assert bytes(message.data) == b"hello"
    message.release()
    with pytest.raises(ChecksumError):
        default.read()


def test_without_the_checksum_option_corruption_goes_unseen(make_rig: MakeRig) -> None:
    rig = make_rig()
    publisher = rig.publisher()
    subscriber = rig.subscriber()
    publisher.publish_bytes(b"plain")
    rig.channel.buffer(0).view[0] = ord("P")
    message = subscriber.read()
    assert message is not None
    assert bytes(message.data) == b"Plain"


# -- activation messages -----------------------------------------------------------------


def test_an_activation_message_is_skipped_by_default_without_a_drop(make_rig: MakeRig) -> None:
    rig = make_rig(checksum=True)
    publisher = rig.publisher()
    drops: list[int] = []
    subscriber = rig.subscriber(on_drop=drops.append)
    assert publisher.activate() == 1
    assert publisher.publish_bytes(b"data") == 2
    message = subscriber.read()
    assert message is not None
    assert (message.ordinal, bytes(message.data), message.activation) == (2, b"data", False)
    message.release()
    assert (subscriber.drops, drops) == (0, [])
    assert all(rig.channel.slot_words(i)[1] == 0 for i in range(rig.channel.num_slots))


def test_a_subscriber_that_asks_sees_the_activation_first(make_rig: MakeRig) -> None:
    rig = make_rig()
    reliable = rig.publisher(reliable=True)
    subscriber = rig.subscriber(reliable=True)
    subscriber.pass_activations = True
    assert reliable.activate() == 1
    reliable.publish_bytes(b"after")
    first = subscriber.read()
    assert first is not None
    assert (first.ordinal, first.size, bytes(first.data), first.activation) == (1, 0, b"", True)
    first.release()
    second = subscriber.read()
    assert second is not None
    assert (bytes(second.data), second.activation) == (b"after", False)
    second.release()
    # Read by the reliable subscriber: the activation's slot is free for the publisher.
    assert rig.channel.slot_words(0)[2] == 0


def test_an_activation_does_not_make_empty_publishes_legal(rig: Rig) -> None:
    publisher = rig.publisher()
    view = publisher.get_buffer(1)
    assert view is not None
    with pytest.raises(MessageSizeError, match=r"^cannot publish an empty message"):
        publisher.publish(0)
