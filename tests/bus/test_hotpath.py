"""The hot path: the whole publish in one C call, publish_many, the batched read and release."""

from __future__ import annotations

import gc
import os
import select
import time

import pytest

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from postoffice.bus import MessageSizeError, Triggers, atomics, memory, new_eventfd, retirement
from tests.bus.fixtures import MakeRig
from tests.bus.rig import Rig

BUSY = memory.BUSY_BIT
S = memory.CCB_SLOTS
P = memory.CCB_PENDING
NO_VCHAN_WORD = 0xFFFF_FFFF << 32


def block(slots: int = 4, *, mux: bool = False) -> bytearray:
    return bytearray(memory.ccb_bytes(slots, mux=mux))


def load(buf: bytearray, offset: int) -> int:
    return atomics.load_acquire_u64(buf, offset)


def fields(buf: bytearray, slot: int) -> tuple[int, ...]:
    return memory.SLOT_FIELDS.unpack_from(buf, memory.slot_offset(slot) + memory.SLOT_SIZE)


def claim(buf: bytearray, slot: int, publisher: int = 0) -> int:
    line = memory.slot_offset(slot)
    atomics.store_release_u64(buf, line + memory.SLOT_SEQ, BUSY | publisher)
    return line


def test_the_c_layout_constants_match_memory_py() -> None:
    assert (atomics.SLOT_SIZE, atomics.SLOT_FLAGS) == (memory.SLOT_SIZE, memory.SLOT_FLAGS)
    assert atomics.SLOT_FLAG_RETIRE == memory.SLOT_FLAG_RETIRE
    assert atomics.RETIRE_PUBLISHER_SHIFT == memory.RETIRE_PUBLISHER_SHIFT
    assert atomics.RETIRE_TAG_SHIFT == memory.RETIRE_TAG_SHIFT
    assert atomics.MAX_SLOTS == memory.MAX_SLOTS
    assert atomics.CCB_NEXT_ORDINAL == memory.CCB_NEXT_ORDINAL
    assert atomics.CCB_MESSAGES == memory.CCB_MESSAGES
    assert atomics.CCB_BYTES_PUBLISHED == memory.CCB_BYTES_PUBLISHED
    assert atomics.CCB_MAX_MESSAGE == memory.CCB_MAX_MESSAGE
    assert atomics.CCB_RELIABLE_SUBSCRIBERS == memory.CCB_RELIABLE_SUBSCRIBERS
    assert atomics.CCB_WHOLE_SUBSCRIBERS == memory.CCB_WHOLE_SUBSCRIBERS
    assert atomics.CCB_SUBSCRIBERS_WAITING == memory.CCB_SUBSCRIBERS_WAITING
    assert atomics.CCB_PUBLISHERS_WAITING == memory.CCB_PUBLISHERS_WAITING
    assert (atomics.CCB_PENDING, atomics.CCB_SLOTS) == (memory.CCB_PENDING, memory.CCB_SLOTS)
    assert atomics.VCHAN_SUBSCRIBERS == memory.VCHAN_SUBSCRIBERS


class TestCommit:
    def test_a_commit_stamps_the_slot_takes_an_ordinal_and_counts(self) -> None:
        buf = block()
        atomics.store_release_u64(buf, memory.CCB_NEXT_ORDINAL, 41)
        atomics.store_release_u64(buf, memory.CCB_WHOLE_SUBSCRIBERS, 0b0111)
        atomics.store_release_u64(buf, memory.CCB_RELIABLE_SUBSCRIBERS, 0b1101)
        atomics.store_release_u64(buf, memory.CCB_SUBSCRIBERS_WAITING, 0b100)
        line = claim(buf, 2, publisher=3)
        before = time.monotonic_ns()
        result = atomics.commit(
            buf, line, 5, 2, memory.SLOT_FLAG_CHECKSUM, 0xDEAD, 7 | NO_VCHAN_WORD, -1,
            memory.pending_offset(3), memory.pending_vchan_offset(3), -1,
        )  # fmt: skip
        after = time.monotonic_ns()
        assert result == (42, 0, 0b100)
        size, meta_size, stamp, index, vchan, vchan_ordinal, flags, checksum = fields(buf, 2)
        assert (size, meta_size, index, vchan, vchan_ordinal) == (5, 2, 7, -1, 0)
        assert (flags, checksum) == (memory.SLOT_FLAG_CHECKSUM, 0xDEAD)
        assert before <= stamp <= after
        assert load(buf, line + memory.SLOT_SEQ) == 42
        assert load(buf, line + memory.SLOT_UNREAD) == 0b0101
        assert load(buf, memory.CCB_NEXT_ORDINAL) == 42
        assert load(buf, memory.pending_offset(3)) == 0
        assert load(buf, memory.CCB_MESSAGES) == 1
        assert load(buf, memory.CCB_BYTES_PUBLISHED) == 5
        assert load(buf, memory.CCB_MAX_MESSAGE) == 5

    def test_the_largest_message_only_grows(self) -> None:
        buf = block()
        for slot, size in enumerate([9, 3]):
            atomics.commit(buf, claim(buf, slot), size, 0, 0, 0, NO_VCHAN_WORD, -1, P, 0, -1)
        assert load(buf, memory.CCB_MAX_MESSAGE) == 9
        assert load(buf, memory.CCB_BYTES_PUBLISHED) == 12

    def test_a_vchan_publish_takes_the_vchans_ordinal_too(self) -> None:
        buf = block(mux=True)
        vchan_line = memory.vchan_offset(4, 0, 5)
        atomics.store_release_u64(buf, vchan_line, 9)
        atomics.store_release_u64(buf, vchan_line + memory.VCHAN_SUBSCRIBERS, 0b10)
        atomics.store_release_u64(buf, memory.CCB_RELIABLE_SUBSCRIBERS, 0b11)
        line = claim(buf, 0, publisher=1)
        result = atomics.commit(
            buf, line, 1, 0, 0, 0, 5 << 32, vchan_line, memory.pending_offset(1),
            memory.pending_vchan_offset(1), -1,
        )  # fmt: skip
        assert result == (1, 10, 0)
        assert fields(buf, 0)[3:6] == (0, 5, 10)
        assert load(buf, vchan_line) == 10
        assert load(buf, memory.pending_vchan_offset(1)) == 0
        # Only the reliable subscribers of the whole mux and of this vchan must read it.
        assert load(buf, line + memory.SLOT_UNREAD) == 0b10

    def test_a_retirement_request_is_the_word_retirement_py_describes(self) -> None:
        buf = block()
        atomics.store_release_u64(buf, memory.CCB_NEXT_ORDINAL, 0x1_0004)
        line = claim(buf, 1, publisher=6)
        atomics.commit(
            buf, line, 1, 0, memory.SLOT_FLAG_CHECKSUM, 77, NO_VCHAN_WORD, -1,
            memory.pending_offset(6), 0, 6,
        )  # fmt: skip
        expected = retirement.flags_word(
            memory.SLOT_FLAG_CHECKSUM, 77, publisher_id=6, ordinal=0x1_0005
        )
        assert load(buf, line + memory.SLOT_FLAGS) == expected
        assert retirement.take(buf, 1, 0x1_0005) == 6  # type: ignore[arg-type]  # a bytearray stands in for the mmap

    @pytest.mark.parametrize(
        ("args", "error", "message"),
        [
            ((S + 8, 1, 0, 0, 0, 0, -1, P, 0, -1), ValueError, rf"^offset {S + 8} is not"),
            ((S, 2**32, 0, 0, 0, 0, -1, P, 0, -1), OverflowError, r"is not a u32"),
            ((S, 1, 0, 0, 0, 0, -1, P, 0, 64), ValueError, r"^publisher id 64 outside"),
            ((S, 1, 0, 0, 0, 0, -1, 1 << 40, 0, -1), ValueError, r"not an aligned part"),
            ((S, 1, 0, 0, 0, 0), TypeError, r"^commit takes 11 arguments, got 7$"),
        ],
    )
    def test_bad_arguments_are_refused_and_nothing_is_written(
        self, args: tuple[int, ...], error: type[Exception], message: str
    ) -> None:
        buf = block()
        with pytest.raises(error, match=message):
            atomics.commit(buf, *args)
        assert buf == block()


class TestPublishMany:
    def test_each_payload_is_claimed_copied_and_published_in_order(self) -> None:
        buf, data = block(), bytearray(4 * 8)
        result = atomics.publish_many(buf, 4, BUSY | 0, False, data, 8, 0, [b"a", b"bb", b"c"], 0)
        assert result == (3, -1, 0, 3)
        assert [load(buf, memory.slot_offset(i)) for i in range(4)] == [1, 2, 3, 0]
        assert bytes(data[:10]) == b"a" + bytes(7) + b"bb"
        assert [fields(buf, i)[0] for i in range(3)] == [1, 2, 1]

    def test_it_takes_the_oldest_claimable_slots_first(self) -> None:
        buf, data = block(), bytearray(4 * 8)
        for slot, seq in enumerate([4, 2, 3, 1]):
            atomics.store_release_u64(buf, memory.slot_offset(slot), seq)
        atomics.store_release_u64(buf, memory.CCB_NEXT_ORDINAL, 4)
        atomics.store_release_u64(buf, memory.slot_offset(1) + memory.SLOT_HOLDERS, 1)
        assert atomics.publish_many(buf, 4, BUSY, False, data, 8, 0, [b"5", b"6", b"7"], 0)[0] == 3
        # Slot 1 (ordinal 2) is held: 1, then 3, then 4 make way, in that order.
        seqs = [load(buf, memory.slot_offset(i)) for i in range(4)]
        assert seqs == [7, 2, 6, 5]

    def test_it_starts_at_the_index_given(self) -> None:
        buf, data = block(), bytearray(4 * 8)
        assert atomics.publish_many(buf, 4, BUSY, False, data, 8, 0, (b"x", b"y"), 1)[:2] == (2, -1)
        assert bytes(data[:1]) == b"y"

    @pytest.mark.parametrize("payload", [b"", b"123456789", "text"])
    def test_it_stops_before_a_payload_it_cannot_take_whole(self, payload: object) -> None:
        buf, data = block(), bytearray(4 * 8)
        payloads = [b"ok", payload, b"no"]
        result = atomics.publish_many(buf, 4, BUSY, False, data, 8, 0, payloads, 0)  # type: ignore[arg-type]
        assert result == (1, -1, 0, 1)

    def test_a_reliable_publisher_stops_where_every_slot_is_unread(self) -> None:
        buf, data = block(2), bytearray(2 * 8)
        atomics.store_release_u64(buf, memory.CCB_WHOLE_SUBSCRIBERS, 1)
        atomics.store_release_u64(buf, memory.CCB_RELIABLE_SUBSCRIBERS, 1)
        assert atomics.publish_many(buf, 2, BUSY, True, data, 8, 0, [b"1", b"2", b"3"], 0) == (
            2, -1, 0, 2,
        )  # fmt: skip

    def test_it_hands_back_a_claimed_slot_whose_retirement_is_unreported(self) -> None:
        buf, data = block(1), bytearray(8)
        word = retirement.flags_word(0, 0, publisher_id=2, ordinal=1)
        atomics.store_release_u64(buf, memory.slot_offset(0) + memory.SLOT_FLAGS, word)
        atomics.store_release_u64(buf, memory.slot_offset(0), 1)
        assert atomics.publish_many(buf, 1, BUSY | 4, False, data, 8, 0, [b"z"], 0) == (0, 0, 0, 0)
        assert load(buf, memory.slot_offset(0)) == BUSY | 4
        assert data == bytearray(8)

    def test_it_reports_a_waiting_subscriber_once_after_the_batch(self) -> None:
        buf, data = block(), bytearray(4 * 8)
        atomics.store_release_u64(buf, memory.CCB_SUBSCRIBERS_WAITING, 0b1000)
        assert atomics.publish_many(buf, 4, BUSY, False, data, 8, 0, [b"1", b"2"], 0) == (
            2, -1, 0b1000, 2,
        )  # fmt: skip

    def test_with_nothing_published_it_reports_no_waiting_subscriber(self) -> None:
        buf, data = block(), bytearray(4 * 8)
        atomics.store_release_u64(buf, memory.CCB_SUBSCRIBERS_WAITING, 0b1000)
        assert atomics.publish_many(buf, 4, BUSY, False, data, 8, 0, [b""], 0) == (0, -1, 0, 0)

    def test_payloads_must_be_a_list_or_a_tuple(self) -> None:
        with pytest.raises(TypeError, match=r"^payloads must be a list or a tuple, got set$"):
            atomics.publish_many(block(), 4, BUSY, False, bytearray(32), 8, 0, {b"x"}, 0)  # type: ignore[arg-type]

    def test_the_slots_must_fit_the_buffer(self) -> None:
        with pytest.raises(ValueError, match=r"^4 slots of 8 bytes do not fit a buffer of 31$"):
            atomics.publish_many(block(), 4, BUSY, False, bytearray(31), 8, 0, [b"x"], 0)


class TestTakeAndRelease:
    def test_take_holds_messages_in_order_with_their_fields(self) -> None:
        buf = block()
        for slot, size in [(1, 3), (2, 4)]:
            atomics.commit(buf, claim(buf, slot), size, 0, 0, 0, NO_VCHAN_WORD, -1, P, 0, -1)
        status, batch, uniform = atomics.take(buf, S, 4, P, 0, 5, False, 9, -1, 0, -1)
        assert (status, uniform) == (atomics.SCAN_NONE, 0)
        assert [(m[0], m[1], m[2], m[5], m[6]) for m in batch] == [
            (1, 1, 3, 0, -1),
            (2, 2, 4, 0, -1),
        ]
        assert [load(buf, memory.slot_offset(i) + memory.SLOT_HOLDERS) for i in (1, 2)] == [32, 32]

    def test_a_wrong_hint_only_costs_a_scan(self) -> None:
        buf = block()
        for slot in (3, 0):
            atomics.commit(buf, claim(buf, slot), 1, 0, 0, 0, NO_VCHAN_WORD, -1, P, 0, -1)
        for hint in (-1, 0, 1, 3):
            status, batch, _ = atomics.take(buf, S, 4, P, 0, 0, False, 1, -1, 0, hint)
            assert (status, [m[:2] for m in batch]) == (atomics.SCAN_FOUND, [(3, 1)])
            atomics.release_slots(buf, S, 4, 0, [3])

    @pytest.mark.parametrize(
        ("second", "uniform"),
        [
            ((2, 0, 0), 0),  # the next ordinal, the same buffer, no flags: alike
            ((3, 0, 0), -1),  # a gap
            ((2, 1, 0), -1),  # another buffer
            ((2, 0, memory.SLOT_FLAG_CHECKSUM), -1),
            ((2, 0, memory.SLOT_FLAG_ACTIVATION), -1),
        ],
    )
    def test_take_says_whether_a_batch_is_alike(
        self, second: tuple[int, int, int], uniform: int
    ) -> None:
        buf = block()
        for slot, (seq, buffer_index, slot_flags) in enumerate([(1, 0, 0), second]):
            line = memory.slot_offset(slot)
            memory.SLOT_FIELDS.pack_into(buf, line + memory.SLOT_SIZE, 1, 0, 0, buffer_index,
                                         -1, 0, slot_flags, 0)  # fmt: skip
            atomics.store_release_u64(buf, line + memory.SLOT_SEQ, seq)
        _, batch, found = atomics.take(buf, S, 4, P, 0, 0, False, 9, -1, 0, 0)
        assert ([m[1] for m in batch], found) == ([1, second[0]], uniform)

    def test_release_slots_lets_go_and_names_the_ones_asking_for_retirement(self) -> None:
        buf = block()
        for slot in range(3):
            line = memory.slot_offset(slot)
            atomics.store_release_u64(buf, line + memory.SLOT_HOLDERS, 0b11)
        retire = retirement.flags_word(0, 0, publisher_id=1, ordinal=1)
        atomics.store_release_u64(buf, memory.slot_offset(2) + memory.SLOT_FLAGS, retire)
        atomics.store_release_u64(buf, memory.CCB_PUBLISHERS_WAITING, 0b1)
        assert atomics.release_slots(buf, S, 4, 1, [0, 2]) == (1, [2])
        holders = [load(buf, memory.slot_offset(i) + memory.SLOT_HOLDERS) for i in range(3)]
        assert holders == [0b01, 0b11, 0b01]

    def test_a_bad_slot_index_releases_nothing(self) -> None:
        buf = block()
        atomics.store_release_u64(buf, memory.slot_offset(0) + memory.SLOT_HOLDERS, 1)
        with pytest.raises(ValueError, match=r"^slot 4 outside 0\.\.3$"):
            atomics.release_slots(buf, S, 4, 0, [0, 4])
        assert load(buf, memory.slot_offset(0) + memory.SLOT_HOLDERS) == 1


class TestPublisherPublishMany:
    def test_a_batch_is_read_back_in_order(self, make_rig: MakeRig) -> None:
        rig = make_rig(num_slots=16)
        publisher = rig.publisher()
        subscriber = rig.subscriber(max_active=8)
        payloads = [b"m%d" % n for n in range(6)]
        assert publisher.publish_many(payloads) == 6
        assert publisher.published == 6
        messages = subscriber.read_all()
        assert [(m.ordinal, bytes(m.data)) for m in messages] == [
            (n + 1, p) for n, p in enumerate(payloads)
        ]
        assert subscriber.drops == 0

    def test_any_iterable_of_buffers_is_taken(self, rig: Rig) -> None:
        publisher = rig.publisher()
        subscriber = rig.subscriber(max_active=4)
        assert publisher.publish_many(bytes([n]) * 3 for n in range(3)) == 3
        assert [bytes(m.data) for m in subscriber.read_all()] == [b"\0" * 3, b"\1" * 3, b"\2" * 3]

    def test_a_reliable_publisher_stops_when_slots_run_out_and_goes_on_later(
        self, make_rig: MakeRig
    ) -> None:
        rig = make_rig(num_slots=4)
        publisher = rig.publisher(reliable=True)
        subscriber = rig.subscriber(reliable=True, max_active=4)
        payloads = [b"p%d" % n for n in range(7)]
        assert publisher.publish_many(payloads) == 4
        assert [bytes(m.data) for m in subscriber.read_all()] == payloads[:4]
        subscriber.release_all()
        assert publisher.publish_many(payloads[4:]) == 3
        assert [m.ordinal for m in subscriber.read_all()] == [5, 6, 7]

    def test_a_payload_past_the_slot_size_grows_the_channel_mid_batch(self, rig: Rig) -> None:
        publisher = rig.publisher()
        subscriber = rig.subscriber(max_active=4)
        big = bytes(range(200))
        assert publisher.publish_many([b"small", big, b"after"]) == 3
        messages = subscriber.read_all()
        assert [bytes(m.data) for m in messages] == [b"small", big, b"after"]
        assert [m.buffer_index for m in messages] == [0, 1, 1]

    def test_an_empty_payload_is_refused_after_the_ones_before_it(self, rig: Rig) -> None:
        publisher = rig.publisher()
        subscriber = rig.subscriber(max_active=4)
        with pytest.raises(MessageSizeError, match=r"^a message is 1\.\.\d+ bytes, asked for 0$"):
            publisher.publish_many([b"one", b"", b"three"])
        assert [bytes(m.data) for m in subscriber.read_all()] == [b"one"]

    @pytest.mark.parametrize("kind", ["checksum", "retirement", "vchan"])
    def test_publishers_that_need_python_per_message_publish_batches_too(
        self, make_rig: MakeRig, kind: str
    ) -> None:
        rig = make_rig(checksum=kind == "checksum", mux=kind == "vchan")
        vchan = 3 if kind == "vchan" else -1
        publisher = rig.publisher(retirement=kind == "retirement", vchan=vchan)
        subscriber = rig.subscriber(max_active=3, vchan=vchan)
        assert publisher.publish_many([b"a", b"b", b"c"]) == 3
        messages = subscriber.read_all()
        assert [(m.ordinal, bytes(m.data)) for m in messages] == [(1, b"a"), (2, b"b"), (3, b"c")]
        if kind == "retirement":
            for message in messages:
                message.release()
            assert publisher.retired() == [(m.slot, m.ordinal) for m in messages]

    def test_a_waiting_subscriber_is_woken_by_a_batch(self, rig: Rig) -> None:
        publisher = rig.publisher()
        subscriber = rig.subscriber(max_active=4)
        fd = subscriber.fileno()
        assert subscriber.read() is None  # arms the waiting bit: the poller sleeps now
        assert publisher.publish_many([b"x", b"y"]) == 2
        assert select.select([fd], [], [], 0)[0] == [fd]
        assert atomics.load_acquire_u64(rig.channel.ccb, memory.CCB_SUBSCRIBERS_WAITING) == 0
        os.eventfd_read(fd)

    def test_a_slot_whose_old_message_still_asks_for_retirement_is_reported(
        self, make_rig: MakeRig
    ) -> None:
        rig = make_rig(num_slots=5)
        retiring = rig.publisher(reliable=True, retirement=True)
        subscriber = rig.subscriber(reliable=True)
        plain = rig.publisher()
        retiring.publish_bytes(b"r")
        message = subscriber.read()
        assert message is not None
        # As if its releaser looked before a claim: nobody holds it, its bit is still set.
        line = memory.slot_offset(message.slot) + memory.SLOT_HOLDERS
        atomics.store_release_u64(rig.channel.ccb, line, 0)
        assert retiring.retired() == []
        # Four never-published slots go first; the fifth payload takes the old message's.
        assert plain.publish_many([b"p%d" % n for n in range(5)]) == 5
        assert retiring.retired() == [(message.slot, 1)]


class TestBatchedRead:
    def test_a_gap_inside_a_batch_is_counted_as_a_drop(self, rig: Rig) -> None:
        publisher = rig.publisher()
        reader = rig.subscriber(max_active=3)
        holder = rig.subscriber()
        for n in range(1, 9):
            publisher.publish_bytes(b"m%d" % n)
        first = reader.read()
        assert first is not None
        first.release()
        for _ in range(2):
            held = holder.read()
            assert held is not None
        # The holder keeps message 2; 9 and 10 reuse the oldest free slots: 1's and 3's.
        publisher.publish_bytes(b"m9")
        publisher.publish_bytes(b"m10")
        messages = reader.read_all()
        assert [(m.ordinal, bytes(m.data)) for m in messages] == [
            (2, b"m2"),
            (4, b"m4"),
            (5, b"m5"),
        ]
        assert reader.drops == 1
        assert reader.last_ordinal == 5

    def test_an_activation_inside_a_batch_is_passed_over(self, rig: Rig) -> None:
        publisher = rig.publisher()
        joining = rig.publisher()
        subscriber = rig.subscriber(max_active=4)
        publisher.publish_bytes(b"a")
        assert joining.activate() == 2
        publisher.publish_bytes(b"b")
        messages = subscriber.read_all()
        assert [(m.ordinal, bytes(m.data)) for m in messages] == [(1, b"a"), (3, b"b")]
        assert subscriber.drops == 0
        assert subscriber.held == 2

    def test_messages_of_a_batch_dropped_unreleased_let_their_slots_go(self, rig: Rig) -> None:
        publisher = rig.publisher()
        subscriber = rig.subscriber(max_active=4)
        publisher.publish_many([b"1", b"2", b"3"])
        messages = subscriber.read_all()
        slots = [m.slot for m in messages]
        assert all(rig.channel.slot_words(slot)[1] for slot in slots)
        del messages
        gc.collect()
        assert [rig.channel.slot_words(slot)[1] for slot in slots] == [0, 0, 0]
        assert subscriber.held == 0

    def test_a_batch_of_alike_messages_is_read_whole_and_let_go_when_garbage(
        self, rig: Rig
    ) -> None:
        publisher = rig.publisher()
        subscriber = rig.subscriber(max_active=4)
        publisher.publish_bytes(b"first")
        assert [bytes(m.data) for m in subscriber.read_all()] == [b"first"]
        publisher.publish_many([b"a", b"bb", b"ccc"])
        messages = subscriber.read_all()
        assert [(m.ordinal, m.size, bytes(m.data), m.activation) for m in messages] == [
            (2, 1, b"a", False), (3, 2, b"bb", False), (4, 3, b"ccc", False),
        ]  # fmt: skip
        assert (subscriber.received, subscriber.last_ordinal, subscriber.held) == (4, 4, 3)
        slots = [m.slot for m in messages]
        del messages
        gc.collect()
        assert [rig.channel.slot_words(slot)[1] for slot in slots] == [0, 0, 0]
        assert subscriber.held == 0

    def test_the_garbage_of_a_batch_lets_go_of_exactly_its_slots(self, make_rig: MakeRig) -> None:
        rig = make_rig(num_slots=80)
        publisher = rig.publisher()
        subscriber = rig.subscriber(max_active=64)
        publisher.publish_bytes(b"start")
        subscriber.read_all()
        publisher.publish_many([b"%d" % n for n in range(64)])
        messages = subscriber.read_all()
        kept, dropped = messages[::2], messages[1::2]
        dropped_slots = [m.slot for m in dropped]
        del messages, dropped
        gc.collect()
        assert subscriber.held == 32
        assert [rig.channel.slot_words(slot)[1] for slot in dropped_slots] == [0] * 32
        kept[0].release()  # let go by hand: its reference is gone before any garbage
        kept_slots = [m.slot for m in kept]
        del kept
        gc.collect()
        assert subscriber.held == 0
        assert [rig.channel.slot_words(slot)[1] for slot in kept_slots] == [0] * 32

    def test_release_all_releases_every_view_made_or_not(self, rig: Rig) -> None:
        publisher = rig.publisher()
        subscriber = rig.subscriber(max_active=4)
        publisher.publish_many([b"seen", b"unseen"])
        seen, unseen = subscriber.read_all()
        data = seen.data
        assert bytes(data) == b"seen"
        subscriber.release_all()
        assert seen.released
        assert unseen.released
        for view in (data, unseen.data, unseen.metadata):
            with pytest.raises(ValueError, match="released"):
                bytes(view)
        assert [rig.channel.slot_words(m.slot)[1] for m in (seen, unseen)] == [0, 0]

    def test_a_read_finds_the_next_message_wherever_the_publishers_put_it(
        self, make_rig: MakeRig
    ) -> None:
        """The look at the slot after the last one read is only a shortcut."""
        rig = make_rig(num_slots=4)
        publisher = rig.publisher(reliable=True)
        subscriber = rig.subscriber(reliable=True, max_active=1)
        seen = []
        for n in range(10):
            assert publisher.publish_bytes(b"%d" % n) is not None
            if n % 3 == 2:  # let some pile up, so slots are reused out of turn
                while (message := subscriber.read()) is not None:
                    seen.append(bytes(message.data))
                    message.release()
        while (message := subscriber.read()) is not None:
            seen.append(bytes(message.data))
            message.release()
        assert seen == [b"%d" % n for n in range(10)]
        assert subscriber.drops == 0


def test_a_wake_up_serves_every_waiting_bit_it_knows_lowest_and_highest(rig: Rig) -> None:
    triggers = Triggers(rig.channel.ccb)
    fds = {user: new_eventfd() for user in (0, 5, 63)}
    try:
        for user, fd in fds.items():
            triggers.set_subscriber(user, fd)
        waiting = 1 | 1 << 63 | 1 << 40  # 40: a subscriber this process cannot wake
        atomics.store_release_u64(rig.channel.ccb, memory.CCB_SUBSCRIBERS_WAITING, waiting)
        assert triggers.wake_subscribers() == 2
        ready = select.select(list(fds.values()), [], [], 0)[0]
        assert sorted(ready) == sorted([fds[0], fds[63]])
        assert atomics.load_acquire_u64(rig.channel.ccb, memory.CCB_SUBSCRIBERS_WAITING) == 1 << 40
    finally:
        for fd in fds.values():
            os.close(fd)
