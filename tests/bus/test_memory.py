"""The shared-memory layout: offsets, sizes, names and the CCB header."""

from __future__ import annotations

import pytest

pytest.importorskip("postoffice.bus", exc_type=ImportError)

import itertools

from postoffice.bus import memory
from postoffice.bus.errors import BusLayoutError

SESSION = "0123456789abcdef"


def test_ccb_regions_are_line_aligned_and_in_order() -> None:
    regions = [
        (0, memory.CCB_HEADER.size),
        (memory.CCB_NAME, memory.MAX_NAME_BYTES),
        (memory.CCB_TYPE, memory.MAX_TYPE_BYTES),
        (memory.CCB_NEXT_ORDINAL, 8),
        (memory.CCB_STATS, 32),
        (memory.CCB_MASKS, 40),
        (memory.CCB_WAITING, 16),
        (memory.CCB_PENDING, 8 * memory.MAX_PUBLISHERS),
        (memory.CCB_VCHAN_FILTERS, 8 * memory.MAX_SUBSCRIBERS),
        (memory.CCB_ACTIVE_LIMITS, 8 * memory.MAX_SUBSCRIBERS),
        (memory.CCB_SLOTS, memory.SLOT_BYTES),
    ]
    for (start, length), (after, _) in itertools.pairwise(regions):
        assert start % memory.LINE_BYTES == 0
        assert start + length <= after
    # The ordinal counter and the waiting masks have lines of their own.
    assert memory.CCB_NEXT_ORDINAL + memory.LINE_BYTES == memory.CCB_STATS
    assert memory.CCB_WAITING + memory.LINE_BYTES == memory.CCB_PENDING


def test_a_slot_is_one_line() -> None:
    assert memory.SLOT_SIZE + memory.SLOT_FIELDS.size == memory.SLOT_BYTES == 64
    assert memory.SLOT_TIMESTAMP == memory.SLOT_SIZE + 8
    assert memory.slot_offset(3) == memory.CCB_SLOTS + 192
    assert memory.ccb_bytes(10) == memory.CCB_SLOTS + 640


def test_scb_and_bcb_sizes() -> None:
    assert memory.SCB_BYTES == 64 + 1024 * 64
    assert memory.scb_counter(2, "updates") == 64 + 2 * 64 + 4 * 8
    assert memory.BCB_BYTES == 64 + 1024 * 8
    assert memory.bcb_slot_size_offset(1023) == memory.BCB_BYTES - 8


def test_file_names() -> None:
    assert memory.scb_name(SESSION) == "po-bus.0123456789abcdef.scb"
    assert memory.ccb_name(SESSION, 7) == "po-bus.0123456789abcdef.7.ccb"
    assert memory.bcb_name(SESSION, 7) == "po-bus.0123456789abcdef.7.bcb"
    assert memory.buffer_name(SESSION, 7, 2) == "po-bus.0123456789abcdef.7.2.buf"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: memory.scb_name("XYZ"),
            r"^session id must be 16 lowercase hex digits, got 'XYZ'$",
        ),
        (lambda: memory.ccb_name(SESSION, 1024), r"^channel id 1024 outside 0\.\.1023$"),
        (lambda: memory.buffer_name(SESSION, 1, 1024), r"^buffer index 1024 outside 0\.\.1023$"),
        (lambda: memory.bcb_slot_size_offset(-1), r"^buffer index -1 outside 0\.\.1023$"),
    ],
)
def test_bad_names_are_refused(call: object, message: str) -> None:
    with pytest.raises(BusLayoutError, match=message):
        call()  # type: ignore[operator]


def header(**changes: object) -> memory.CcbHeader:
    fields: dict[str, object] = {
        "channel_id": 5, "num_slots": 16, "flags": memory.FLAG_CHECKSUM,
        "name": "/sensors/lidar", "type": "lidar.Scan",
    }  # fmt: skip
    fields.update(changes)
    return memory.CcbHeader(**fields)  # type: ignore[arg-type]


def test_ccb_header_round_trips() -> None:
    packed = header().pack()
    assert len(packed) == memory.CCB_NEXT_ORDINAL
    assert memory.CcbHeader.unpack(packed, memory.ccb_bytes(16)) == header()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": ""}, r"^channel name is empty$"),
        ({"name": "x" * 129}, r"^channel name is 129 bytes, the limit is 128$"),
        ({"name": "a\0b"}, r"^channel name 'a\\x00b' holds a NUL byte$"),
        ({"type": "t" * 65}, r"^channel type is 65 bytes, the limit is 64$"),
        ({"num_slots": 0}, r"^num_slots 0 outside 1\.\.65536$"),
        ({"flags": 32}, r"^unknown channel flags 0x20$"),
    ],
)
def test_bad_headers_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(BusLayoutError, match=message):
        header(**changes).pack()


def test_a_block_that_is_not_a_ccb_is_refused() -> None:
    good = header().pack()
    size = memory.ccb_bytes(16)
    with pytest.raises(BusLayoutError, match=r"^not a ccb: magic 0x0000000000000000$"):
        memory.CcbHeader.unpack(bytes(len(good)), size)
    wrong_version = good[:8] + (9).to_bytes(4, "little") + good[12:]
    with pytest.raises(BusLayoutError, match=r"^ccb version 9, expected 3$"):
        memory.CcbHeader.unpack(wrong_version, size)
    with pytest.raises(BusLayoutError, match=r"^ccb of 16 slots says \d+ bytes, the file has"):
        memory.CcbHeader.unpack(good, size - 64)
