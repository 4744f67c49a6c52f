"""The C extension: each atomic op, its bounds checks, and the slot scans on their own."""

from __future__ import annotations

import mmap

import pytest

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from postoffice.bus import atomics, memory

BUSY = memory.BUSY_BIT
S = memory.CCB_SLOTS
P = memory.CCB_PENDING


def block(slots: int = 4) -> bytearray:
    return bytearray(memory.ccb_bytes(slots))


def set_slot(buf: bytearray, index: int, seq: int, holders: int = 0, unread: int = 0) -> None:
    line = memory.slot_offset(index)
    atomics.store_release_u64(buf, line + memory.SLOT_SEQ, seq)
    atomics.store_release_u64(buf, line + memory.SLOT_HOLDERS, holders)
    atomics.store_release_u64(buf, line + memory.SLOT_UNREAD, unread)


def words(buf: bytearray, index: int) -> tuple[int, int, int]:
    line = memory.slot_offset(index)
    return (
        atomics.load_acquire_u64(buf, line),
        atomics.load_acquire_u64(buf, line + 8),
        atomics.load_acquire_u64(buf, line + 16),
    )


class TestWordOps:
    def test_store_then_load(self) -> None:
        buf = bytearray(16)
        atomics.store_release_u64(buf, 8, 2**64 - 1)
        assert atomics.load_acquire_u64(buf, 8) == 2**64 - 1
        assert buf[8:] == b"\xff" * 8
        assert atomics.load_acquire_u64(buf, 0) == 0

    def test_cas_succeeds_only_on_the_expected_value(self) -> None:
        buf = bytearray(8)
        assert atomics.cas_u64(buf, 0, 0, 7) == (True, 0)
        assert atomics.cas_u64(buf, 0, 0, 9) == (False, 7)
        assert atomics.load_acquire_u64(buf, 0) == 7

    def test_fetch_ops_return_the_old_value(self) -> None:
        buf = bytearray(8)
        assert atomics.fetch_add_u64(buf, 0, 5) == 0
        assert atomics.fetch_or_u64(buf, 0, 0b1010) == 5
        assert atomics.fetch_and_u64(buf, 0, 0b0110) == 0b1111
        assert atomics.load_acquire_u64(buf, 0) == 0b0110

    def test_fetch_add_wraps_modulo_two_to_the_64(self) -> None:
        buf = bytearray(8)
        atomics.fetch_add_u64(buf, 0, 1)
        assert atomics.fetch_add_u64(buf, 0, 2**64 - 1) == 1
        assert atomics.load_acquire_u64(buf, 0) == 0

    def test_works_on_a_shared_mapping_and_lets_it_close(self) -> None:
        """The buffer is released after every call, errors included, so close works."""
        mapped = mmap.mmap(-1, 64)
        atomics.store_release_u64(mapped, 56, 42)
        assert atomics.load_acquire_u64(mapped, 56) == 42
        with pytest.raises(ValueError, match="outside"):
            atomics.load_acquire_u64(mapped, 64)
        mapped.close()

    @pytest.mark.parametrize(
        ("offset", "message"),
        [
            (-8, r"^offset -8 length 8 outside a buffer of 16 bytes$"),
            (16, r"^offset 16 length 8 outside a buffer of 16 bytes$"),
            (12, r"^offset 12 length 8 outside a buffer of 16 bytes$"),
            (4, r"^offset 4 is not 8-byte aligned$"),
        ],
    )
    def test_bad_offsets_are_refused(self, offset: int, message: str) -> None:
        buf = bytearray(16)
        for call in (
            lambda: atomics.load_acquire_u64(buf, offset),
            lambda: atomics.store_release_u64(buf, offset, 1),
            lambda: atomics.cas_u64(buf, offset, 0, 1),
            lambda: atomics.fetch_add_u64(buf, offset, 1),
            lambda: atomics.fetch_or_u64(buf, offset, 1),
            lambda: atomics.fetch_and_u64(buf, offset, 1),
        ):
            with pytest.raises(ValueError, match=message):
                call()
        assert buf == bytearray(16)

    def test_a_read_only_buffer_is_refused(self) -> None:
        with pytest.raises(BufferError):
            atomics.load_acquire_u64(bytes(8), 0)

    def test_values_past_64_bits_are_refused(self) -> None:
        with pytest.raises(OverflowError):
            atomics.store_release_u64(bytearray(8), 0, 2**64)

    def test_constants_match_the_layout(self) -> None:
        assert atomics.SLOT_BYTES == memory.SLOT_BYTES
        assert atomics.SLOT_SEQ == memory.SLOT_SEQ
        assert atomics.SLOT_HOLDERS == memory.SLOT_HOLDERS
        assert atomics.SLOT_UNREAD == memory.SLOT_UNREAD
        assert atomics.SLOT_TIMESTAMP == memory.SLOT_TIMESTAMP
        assert atomics.BUSY_BIT == memory.BUSY_BIT
        assert atomics.MAX_USERS == memory.MAX_PUBLISHERS == memory.MAX_SUBSCRIBERS


class TestClaim:
    def test_never_published_slots_go_first_then_the_oldest(self) -> None:
        buf = block()
        set_slot(buf, 0, 5)
        set_slot(buf, 1, 3)
        set_slot(buf, 3, 4)
        assert atomics.claim_slot(buf, S, 4, BUSY | 2, 0) == 2
        assert words(buf, 2)[0] == BUSY | 2
        assert atomics.claim_slot(buf, S, 4, BUSY | 2, 0) == 1

    def test_held_and_busy_slots_are_never_claimed(self) -> None:
        buf = block(3)
        set_slot(buf, 0, 1, holders=1)
        set_slot(buf, 1, BUSY | 7)
        set_slot(buf, 2, 2, holders=1 << 63)
        assert atomics.claim_slot(buf, S, 3, BUSY | 0, 0) == -1
        assert words(buf, 0) == (1, 1, 0)

    def test_a_claim_respects_only_the_unread_bits_it_is_given(self) -> None:
        buf = block(2)
        set_slot(buf, 0, 1, unread=0b10)
        set_slot(buf, 1, 2, unread=0b01)
        assert atomics.claim_slot(buf, S, 2, BUSY | 0, 0b11) == -1
        assert atomics.claim_slot(buf, S, 2, BUSY | 0, 0b01) == 0
        assert atomics.claim_slot(buf, S, 2, BUSY | 0, 0) == 1

    def test_the_owner_must_carry_the_busy_bit(self) -> None:
        with pytest.raises(ValueError, match=r"^owner must have the busy bit set$"):
            atomics.claim_slot(block(), S, 4, 3, 0)

    @pytest.mark.parametrize(
        ("num_slots", "message"),
        [
            (0, r"^num_slots 0 out of range$"),
            (5, rf"^offset {S} length 320 outside a buffer of {S + 256} bytes$"),
        ],
    )
    def test_the_slot_array_must_fit(self, num_slots: int, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            atomics.claim_slot(block(4), S, num_slots, BUSY, 0)


class TestScans:
    def test_next_reads_in_ordinal_order_and_holds(self) -> None:
        buf = block()
        set_slot(buf, 0, 2)
        set_slot(buf, 3, 1)
        assert atomics.next_message(buf, S, 4, P, 0, 5, False) == (atomics.SCAN_FOUND, 3, 1)
        assert words(buf, 3) == (1, 1 << 5, 0)
        assert atomics.next_message(buf, S, 4, P, 1, 5, False) == (atomics.SCAN_FOUND, 0, 2)
        assert atomics.next_message(buf, S, 4, P, 2, 5, False)[0] == atomics.SCAN_NONE

    def test_a_peek_holds_nothing(self) -> None:
        buf = block()
        set_slot(buf, 1, 1)
        assert atomics.next_message(buf, S, 4, P, 0, -1, False) == (atomics.SCAN_FOUND, 1, 1)
        assert words(buf, 1) == (1, 0, 0)

    def test_a_gap_being_published_is_not_a_drop(self) -> None:
        buf = block()
        set_slot(buf, 0, 3)
        atomics.store_release_u64(buf, memory.pending_offset(9), 2)
        assert atomics.next_message(buf, S, 4, P, 1, 0, False)[0] == atomics.SCAN_IN_FLIGHT
        assert words(buf, 0)[1] == 0
        atomics.store_release_u64(buf, memory.pending_offset(9), 0)
        assert atomics.next_message(buf, S, 4, P, 1, 0, False) == (atomics.SCAN_FOUND, 0, 3)

    def test_a_reliable_hold_clears_the_unread_bit(self) -> None:
        buf = block()
        set_slot(buf, 2, 1, unread=0b11)
        assert atomics.next_message(buf, S, 4, P, 0, 1, True)[0] == atomics.SCAN_FOUND
        assert words(buf, 2) == (1, 0b10, 0b01)

    def test_collect_holds_a_batch_in_order(self) -> None:
        buf = block()
        for index, ordinal in enumerate([4, 2, 3, 1]):
            set_slot(buf, index, ordinal)
        status, batch = atomics.collect(buf, S, 4, P, 1, 0, False, 2)
        assert (status, batch) == (atomics.SCAN_FOUND, [(1, 2), (2, 3)])
        assert [words(buf, i)[1] for i in range(4)] == [0, 1, 1, 0]
        assert atomics.collect(buf, S, 4, P, 3, 0, False, 9) == (atomics.SCAN_NONE, [(0, 4)])

    def test_newest_skips_and_marks_the_rest_read(self) -> None:
        buf = block()
        for index, ordinal in enumerate([1, 2, 3]):
            set_slot(buf, index, ordinal, unread=0b1)
        assert atomics.newest_message(buf, S, 4, 0, 0, True) == (2, 3)
        assert [words(buf, i) for i in range(3)] == [(1, 0, 0), (2, 0, 0), (3, 1, 0)]
        assert atomics.newest_message(buf, S, 4, 3, 0, True) == (-1, 0)

    def test_find_timestamp_holds_only_the_match(self) -> None:
        buf = block()
        for index in range(3):
            set_slot(buf, index, index + 1)
            atomics.store_release_u64(buf, memory.slot_offset(index) + 32, 100 + index)
        assert atomics.find_timestamp(buf, S, 4, 101, 4) == (1, 2)
        assert [words(buf, i)[1] for i in range(3)] == [0, 1 << 4, 0]
        assert atomics.find_timestamp(buf, S, 4, 999, 4) == (-1, 0)

    def test_release_subscriber_clears_its_bit_everywhere(self) -> None:
        buf = block()
        set_slot(buf, 0, 1, holders=0b11, unread=0b01)
        set_slot(buf, 1, 2, unread=0b10)
        set_slot(buf, 2, 3, holders=0b01)
        assert atomics.release_subscriber(buf, S, 4, 0) == 2
        assert [words(buf, i) for i in range(3)] == [(1, 0b10, 0), (2, 0, 0b10), (3, 0, 0)]

    def test_free_publisher_frees_only_its_busy_slots(self) -> None:
        buf = block()
        set_slot(buf, 0, BUSY | 1, unread=0b1)
        set_slot(buf, 1, BUSY | 2)
        set_slot(buf, 2, 7)
        assert atomics.free_publisher(buf, S, 4, BUSY | 1) == 1
        assert [words(buf, i)[0] for i in range(3)] == [0, BUSY | 2, 7]
        assert words(buf, 0)[2] == 0

    @pytest.mark.parametrize("user", [64, -2])
    def test_subscriber_ids_are_checked(self, user: int) -> None:
        with pytest.raises(ValueError, match=rf"^subscriber id {user} outside 0\.\.63$"):
            atomics.next_message(block(), S, 4, P, 0, user, False)
