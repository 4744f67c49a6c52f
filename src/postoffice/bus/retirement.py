"""Retirement: telling a publisher that asked which of its messages every holder let go.

Whoever makes a message's holders and unread masks both empty (the last releaser, the
server's cleanup of a subscriber, the publisher itself when nobody must read it) takes
the slot's retire bit by CAS and writes a record to the publisher's retirement pipe.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Final

from postoffice.bus import memory
from postoffice.bus.native import atomics

_load: Final = atomics.load_acquire_u64
_cas: Final = atomics.cas_u64

#: One record on a retirement pipe: u32 slot index, u64 ordinal (little-endian).
RECORD: Final = struct.Struct("<IQ")


def flags_word(flags: int, checksum: int, *, publisher_id: int, ordinal: int) -> int:
    """The slot's flags word for a message whose retirement its publisher wants."""
    flags |= memory.SLOT_FLAG_RETIRE | publisher_id << memory.RETIRE_PUBLISHER_SHIFT
    flags |= (ordinal & memory.RETIRE_TAG_MASK) << memory.RETIRE_TAG_SHIFT
    return flags | checksum << 32


def _tag(word: int) -> int:
    return word >> memory.RETIRE_TAG_SHIFT & memory.RETIRE_TAG_MASK


def take(ccb: mmap.mmap, slot: int, ordinal: int) -> int | None:
    """Take slot `slot`'s retire bit if it is message `ordinal`'s: the publisher id to
    tell, or None (not asked for, or another process took it)."""
    offset = memory.slot_offset(slot) + memory.SLOT_FLAGS
    word = _load(ccb, offset)
    while word & memory.SLOT_FLAG_RETIRE and _tag(word) == ordinal & memory.RETIRE_TAG_MASK:
        done, word = _cas(ccb, offset, word, word & ~memory.SLOT_FLAG_RETIRE)
        if done:
            return word >> memory.RETIRE_PUBLISHER_SHIFT & 0x3F
    return None


def asked(ccb: mmap.mmap, slot: int, ordinal: int) -> bool:
    """Whether message `ordinal`, which the caller holds in slot `slot`, asks to be
    reported when it retires (a hold keeps anyone from taking its retire bit)."""
    word = _load(ccb, memory.slot_offset(slot) + memory.SLOT_FLAGS)
    return bool(word & memory.SLOT_FLAG_RETIRE) and _tag(word) == ordinal & memory.RETIRE_TAG_MASK


def check(ccb: mmap.mmap, slot: int) -> tuple[int, int] | None:
    """After a release: if the slot's message is published, held by nobody and unread by
    nobody, take its retire bit; (publisher id, ordinal) to report, or None."""
    line = memory.slot_offset(slot)
    # One load first: almost no message asks. A message's bit is stored before its seq,
    # so whoever saw the message published sees its bit here.
    if not _load(ccb, line + memory.SLOT_FLAGS) & memory.SLOT_FLAG_RETIRE:
        return None
    ordinal = _load(ccb, line + memory.SLOT_SEQ)
    if ordinal == 0 or ordinal & memory.BUSY_BIT:
        return None
    if _load(ccb, line + memory.SLOT_HOLDERS) or _load(ccb, line + memory.SLOT_UNREAD):
        return None
    publisher = take(ccb, slot, ordinal)
    return None if publisher is None else (publisher, ordinal)


def on_claim(ccb: mmap.mmap, slot: int) -> tuple[int, int] | None:
    """A publisher just claimed `slot` (now BUSY): if the message it replaces still has
    its retire bit, nobody has reported it yet, and nobody holds it any more; (publisher
    id, ordinal) to report. The ordinal is rebuilt from its low 16 bits and the channel's
    next ordinal (exact while fewer than 65536 messages were published since)."""
    word = _load(ccb, memory.slot_offset(slot) + memory.SLOT_FLAGS)
    if not word & memory.SLOT_FLAG_RETIRE:
        return None
    newest = _load(ccb, memory.CCB_NEXT_ORDINAL)
    ordinal = newest - ((newest - _tag(word)) & memory.RETIRE_TAG_MASK)
    publisher = take(ccb, slot, ordinal)
    return None if publisher is None else (publisher, ordinal)


def write(fd: int, slot: int, ordinal: int) -> bool:
    """Write one record (atomic: under PIPE_BUF); False if the pipe is full."""
    try:
        os.write(fd, RECORD.pack(slot, ordinal))
    except BlockingIOError:
        return False
    return True


def new_pipe() -> tuple[int, int]:
    """A retirement pipe (read end, write end), both non-blocking and close-on-exec."""
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    return read_end, write_end


def read_records(fd: int) -> list[tuple[int, int]]:
    """Every whole record waiting on a retirement pipe's read end: (slot, ordinal)."""
    records: list[tuple[int, int]] = []
    while True:
        try:
            data = os.read(fd, RECORD.size * 256)
        except BlockingIOError:
            return records
        if not data:
            return records
        # Records are written whole (atomic pipe writes), and reads take whole multiples.
        records.extend(RECORD.iter_unpack(data))
