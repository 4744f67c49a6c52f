"""The bus's shared-memory layout: file names, struct formats and byte offsets, no I/O.

Pure: the channel library (channel.py) maps files and moves words; this module only says
where each word is. docs/design/bus-memory.md draws it and argues its memory ordering.

Design
------
Three kinds of block, all made of 64-byte lines so that words written by different
processes at high rates never share a cache line:

- the System Control Block (SCB), one per session: a header line, then one line of
  counters per channel (publishers, reliable publishers, subscribers, reliable
  subscribers, an update sequence, resizes, remaps), written by the server;
- the Channel Control Block (CCB), one per channel: identity, the ordinal counter,
  statistics, the user masks, the waiting masks, each publisher's pending ordinal, each
  subscriber's vchan filter and message limit, then the slot array, one line per slot;
- the Buffer Control Block (BCB), one per channel: how many buffers exist and each one's
  slot size; buffer i is a file of num_slots payloads of slot_size[i] bytes.

Users are numbered 0..63 and named by one bit in a u64 mask, so that one atomic operation
covers them all: at most 64 publishers and 64 subscribers per channel.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Final

from postoffice.bus.errors import BusLayoutError

LINE_BYTES: Final = 64
WORD_BYTES: Final = 8

#: Users of one channel: one bit each in a u64 mask, so one atomic op covers them all.
MAX_SUBSCRIBERS: Final = 64
MAX_PUBLISHERS: Final = 64
#: Channels per session: the SCB has one 64-byte line each (64 KiB in all).
MAX_CHANNELS: Final = 1024
#: Buffers per channel (a new one per resize), as many as the BCB records.
MAX_BUFFERS: Final = 1024
#: Slots per channel: every claim and read scans the slot array, so keep it short.
MAX_SLOTS: Final = 65536
#: One message's payload, so a buffer of MAX_SLOTS slots stays addressable and sane.
MAX_SLOT_BYTES: Final = 1 << 30
#: A buffer file (num_slots * slot_size), within what /dev/shm can be expected to hold.
MAX_BUFFER_BYTES: Final = 1 << 34
#: Channel names and type strings, NUL-padded in the CCB (a NUL inside is refused).
MAX_NAME_BYTES: Final = 128
MAX_TYPE_BYTES: Final = 64
#: Messages one subscriber may hold at once.
MAX_ACTIVE_MESSAGES: Final = 4096
#: A message's metadata: a small area per slot in the CCB (four lines), so that even
#: MAX_SLOTS slots keep the CCB at 16 MiB of metadata.
MAX_METADATA_BYTES: Final = 256
#: Virtual channels of one multiplexer: a line each in the mux's CCB (64 KiB in all).
MAX_VCHANS: Final = 1024

VERSION: Final = 3
SCB_MAGIC: Final = int.from_bytes(b"POBUSSCB", "little")
CCB_MAGIC: Final = int.from_bytes(b"POBUSCCB", "little")
BCB_MAGIC: Final = int.from_bytes(b"POBUSBCB", "little")

#: seq's top bit: the slot is being written by the publisher in its low bits.
BUSY_BIT: Final = 1 << 63
#: A u64 with every bit set (masks, "no vchan filter").
ALL_BITS: Final = (1 << 64) - 1

# -- the System Control Block -----------------------------------------------------------

#: magic u64, version u32, max_channels u32, session id (8 bytes).
SCB_HEADER: Final = struct.Struct("<QII8s")
SCB_COUNTERS: Final = LINE_BYTES
SCB_BYTES: Final = SCB_COUNTERS + MAX_CHANNELS * LINE_BYTES

#: The counter words of a channel's SCB line, in order.
SCB_FIELDS: Final = (
    "publishers",
    "reliable_publishers",
    "subscribers",
    "reliable_subscribers",
    "updates",
    "resizes",
    "remaps",
)


def scb_counter(channel_id: int, field: str) -> int:
    """The byte offset in the SCB of one channel's counter `field` (of SCB_FIELDS)."""
    check_channel_id(channel_id)
    return SCB_COUNTERS + channel_id * LINE_BYTES + SCB_FIELDS.index(field) * WORD_BYTES


# -- the Channel Control Block ----------------------------------------------------------

#: magic u64, version u32, flags u32, channel_id u32, num_slots u32, ccb_bytes u64,
#: metadata_bytes u32 (each slot's metadata capacity), reserved u32.
CCB_HEADER: Final = struct.Struct("<QIIIIQII")
CCB_NAME: Final = 64
CCB_TYPE: Final = CCB_NAME + MAX_NAME_BYTES
#: The last ordinal handed out (the first message is 1); alone on its line, every
#: publish moves it.
CCB_NEXT_ORDINAL: Final = 256
#: Statistics, each moved atomically: messages, bytes, largest message, drops seen.
CCB_STATS: Final = 320
CCB_MESSAGES: Final = CCB_STATS
CCB_BYTES_PUBLISHED: Final = CCB_STATS + 8
CCB_MAX_MESSAGE: Final = CCB_STATS + 16
CCB_DROPS: Final = CCB_STATS + 24
#: Who is registered: one bit per user id. Read on every publish, written on
#: registration only.
CCB_MASKS: Final = 384
CCB_PUBLISHERS: Final = CCB_MASKS
CCB_RELIABLE_PUBLISHERS: Final = CCB_MASKS + 8
CCB_SUBSCRIBERS: Final = CCB_MASKS + 16
CCB_RELIABLE_SUBSCRIBERS: Final = CCB_MASKS + 24
#: Sum of the registered subscribers' max_active_messages (the admission rule's term).
CCB_ACTIVE_LIMIT: Final = CCB_MASKS + 32
#: The subscribers that read the whole channel (on a mux: every vchan); the others
#: read one vchan each (their bit is in that vchan's line).
CCB_WHOLE_SUBSCRIBERS: Final = CCB_MASKS + 40
#: Who sleeps on its eventfd: a subscriber for a message, a reliable publisher for a
#: slot. Written at every wait, so on a line of their own.
CCB_WAITING: Final = 448
CCB_SUBSCRIBERS_WAITING: Final = CCB_WAITING
CCB_PUBLISHERS_WAITING: Final = CCB_WAITING + 8
#: Per publisher: the ordinal it is publishing (0 when none), so that a subscriber can
#: tell a message still being published from a dropped one.
CCB_PENDING: Final = 512
#: Per subscriber: the vchan it reads (ALL_BITS: every message of the channel).
CCB_VCHAN_FILTERS: Final = CCB_PENDING + MAX_PUBLISHERS * WORD_BYTES
#: Per subscriber: its max_active_messages (0 when the id is free).
CCB_ACTIVE_LIMITS: Final = CCB_VCHAN_FILTERS + MAX_SUBSCRIBERS * WORD_BYTES
#: Per publisher: the vchan it publishes on (ALL_BITS: none), fixed while registered.
CCB_PUBLISHER_VCHANS: Final = CCB_ACTIVE_LIMITS + MAX_SUBSCRIBERS * WORD_BYTES
#: Per publisher: the vchan ordinal it is publishing (0 when none), the vchan's
#: counterpart of CCB_PENDING.
CCB_PENDING_VCHAN: Final = CCB_PUBLISHER_VCHANS + MAX_PUBLISHERS * WORD_BYTES
CCB_SLOTS: Final = CCB_PENDING_VCHAN + MAX_PUBLISHERS * WORD_BYTES

#: Channel flags (the CCB header's flags word). A placeholder is a channel a subscriber
#: made before any publisher: its first publisher may give it another shape (new files),
#: and its subscribers then map those (the SCB's `remaps` counter tells them).
FLAG_FIXED_SIZE: Final = 1
FLAG_CHECKSUM: Final = 2
FLAG_PLACEHOLDER: Final = 4
#: Set (atomically) in a placeholder's old CCB once the server gave the channel new
#: files: its subscribers then ask for those.
FLAG_REPLACED: Final = 8
#: A multiplexer: its slots carry the messages of many virtual channels, and its CCB
#: ends with the vchan table.
FLAG_MUX: Final = 16
KNOWN_FLAGS: Final = FLAG_FIXED_SIZE | FLAG_CHECKSUM | FLAG_PLACEHOLDER | FLAG_REPLACED | FLAG_MUX
#: The CCB word holding version (low half) and flags (high half).
CCB_VERSION_FLAGS: Final = 8

# -- a slot: one line ---------------------------------------------------------------------

SLOT_BYTES: Final = LINE_BYTES
#: BUSY | publisher id while being written, else the ordinal; 0 = never published.
SLOT_SEQ: Final = 0
#: Bit per subscriber holding the message (its payload must not change).
SLOT_HOLDERS: Final = 8
#: Bit per reliable subscriber that must still read the message.
SLOT_UNREAD: Final = 16
#: The plain fields a publisher writes before its store of seq, read under a hold:
#: size u32, metadata size u32, timestamp u64 (CLOCK_MONOTONIC ns), buffer index u32,
#: vchan id i32, vchan ordinal u64, flags u32, checksum u32.
SLOT_FIELDS: Final = struct.Struct("<IIQIiQII")
SLOT_SIZE: Final = 24
SLOT_METADATA_SIZE: Final = 28
SLOT_TIMESTAMP: Final = 32
#: buffer index u32 and vchan id i32, one word: stored atomically (a scan of a vchan
#: reads it without a hold, checked against seq before and after).
SLOT_BUFFER_VCHAN: Final = 40
#: The message's ordinal on its vchan, stored atomically for the same reason.
SLOT_VCHAN_ORDINAL: Final = 48
#: The vchan id of a message on no virtual channel.
NO_VCHAN: Final = -1

#: Slot flags: the message carries a checksum; it is an activation message (a
#: publisher saying it joined: no payload, skipped by subscribers unless they ask).
SLOT_FLAG_CHECKSUM: Final = 1
SLOT_FLAG_ACTIVATION: Final = 2
#: The publisher wants to hear when the message retires (every holder let it go). The
#: flags word (with the checksum, one u64 at SLOT_FLAGS) is then stored atomically and
#: the bit is taken by CAS, so exactly one process reports the retirement.
SLOT_FLAG_RETIRE: Final = 4
#: The u64 of flags (low half) and checksum (high half).
SLOT_FLAGS: Final = 56
#: With SLOT_FLAG_RETIRE: flags bits 8..13 are the publisher id, bits 16..31 the low 16
#: bits of the ordinal (which tell this message's bit from a later one's in the slot).
RETIRE_PUBLISHER_SHIFT: Final = 8
RETIRE_TAG_SHIFT: Final = 16
RETIRE_TAG_MASK: Final = 0xFFFF


def slot_offset(index: int) -> int:
    """The byte offset in the CCB of slot `index`'s line."""
    return CCB_SLOTS + index * SLOT_BYTES


def metadata_stride(metadata_bytes: int) -> int:
    """The bytes each slot's metadata area takes: its capacity rounded up to whole lines,
    so that two slots' metadata never share a line."""
    return -(-metadata_bytes // LINE_BYTES) * LINE_BYTES


def metadata_offset(num_slots: int, metadata_bytes: int, index: int) -> int:
    """The byte offset in the CCB of slot `index`'s metadata area (after the slots)."""
    return CCB_SLOTS + num_slots * SLOT_BYTES + index * metadata_stride(metadata_bytes)


def ccb_bytes(num_slots: int, metadata_bytes: int = 0, *, mux: bool = False) -> int:
    """The size of a CCB with `num_slots` slots of `metadata_bytes` of metadata each (and
    the vchan table, for a mux)."""
    table = MAX_VCHANS * LINE_BYTES if mux else 0
    return CCB_SLOTS + num_slots * (SLOT_BYTES + metadata_stride(metadata_bytes)) + table


#: A vchan's line in a mux's CCB: the last ordinal it handed out, and the mask of the
#: subscribers that read it.
VCHAN_NEXT_ORDINAL: Final = 0
VCHAN_SUBSCRIBERS: Final = 8


def vchan_offset(num_slots: int, metadata_bytes: int, vchan_id: int) -> int:
    """The byte offset in a mux's CCB of vchan `vchan_id`'s line (after the metadata);
    BusLayoutError for an id outside 0..MAX_VCHANS-1."""
    if not 0 <= vchan_id < MAX_VCHANS:
        raise BusLayoutError(f"vchan id {vchan_id} outside 0..{MAX_VCHANS - 1}")
    return ccb_bytes(num_slots, metadata_bytes) + vchan_id * LINE_BYTES


def publisher_vchan_offset(publisher_id: int) -> int:
    """The byte offset of a publisher's vchan word."""
    return CCB_PUBLISHER_VCHANS + publisher_id * WORD_BYTES


def pending_vchan_offset(publisher_id: int) -> int:
    """The byte offset of a publisher's pending vchan ordinal."""
    return CCB_PENDING_VCHAN + publisher_id * WORD_BYTES


def pending_offset(publisher_id: int) -> int:
    """The byte offset of a publisher's pending-ordinal word."""
    return CCB_PENDING + publisher_id * WORD_BYTES


def active_limit_offset(subscriber_id: int) -> int:
    """The byte offset of a subscriber's max_active_messages word."""
    return CCB_ACTIVE_LIMITS + subscriber_id * WORD_BYTES


def vchan_filter_offset(subscriber_id: int) -> int:
    """The byte offset of a subscriber's vchan filter word."""
    return CCB_VCHAN_FILTERS + subscriber_id * WORD_BYTES


# -- the Buffer Control Block -------------------------------------------------------------

#: magic u64, version u32, reserved u32.
BCB_HEADER: Final = struct.Struct("<QII")
#: Buffer indexes handed out so far (each resize takes the next with fetch_add).
BCB_NUM_BUFFERS: Final = 16
#: u64 per buffer: its slot size, 0 until its file exists.
BCB_SLOT_SIZES: Final = LINE_BYTES
BCB_BYTES: Final = BCB_SLOT_SIZES + MAX_BUFFERS * WORD_BYTES


def bcb_slot_size_offset(buffer_index: int) -> int:
    """The byte offset in the BCB of buffer `buffer_index`'s slot size."""
    if not 0 <= buffer_index < MAX_BUFFERS:
        raise BusLayoutError(f"buffer index {buffer_index} outside 0..{MAX_BUFFERS - 1}")
    return BCB_SLOT_SIZES + buffer_index * WORD_BYTES


# -- names --------------------------------------------------------------------------------

_SESSION: Final = re.compile(r"[0-9a-f]{16}")
FILE_PREFIX: Final = "po-bus"


def check_session(session: str) -> str:
    """`session` if it is 16 lowercase hex digits; raises BusLayoutError otherwise."""
    if not _SESSION.fullmatch(session):
        raise BusLayoutError(f"session id must be 16 lowercase hex digits, got {session!r}")
    return session


def check_channel_id(channel_id: int) -> int:
    """`channel_id` if it is in 0..MAX_CHANNELS-1; raises BusLayoutError otherwise."""
    if not 0 <= channel_id < MAX_CHANNELS:
        raise BusLayoutError(f"channel id {channel_id} outside 0..{MAX_CHANNELS - 1}")
    return channel_id


def scb_name(session: str) -> str:
    """`po-bus.<session>.scb`."""
    return f"{FILE_PREFIX}.{check_session(session)}.scb"


def ccb_name(session: str, channel_id: int) -> str:
    """`po-bus.<session>.<channel id>.ccb`."""
    return f"{FILE_PREFIX}.{check_session(session)}.{check_channel_id(channel_id)}.ccb"


def bcb_name(session: str, channel_id: int) -> str:
    """`po-bus.<session>.<channel id>.bcb`."""
    return f"{FILE_PREFIX}.{check_session(session)}.{check_channel_id(channel_id)}.bcb"


def buffer_name(session: str, channel_id: int, buffer_index: int) -> str:
    """`po-bus.<session>.<channel id>.<buffer index>.buf`."""
    bcb_slot_size_offset(buffer_index)
    return (
        f"{FILE_PREFIX}.{check_session(session)}.{check_channel_id(channel_id)}.{buffer_index}.buf"
    )


def encode_text(value: str, limit: int, what: str) -> bytes:
    """`value` as UTF-8 for a NUL-padded field of `limit` bytes; BusLayoutError if it
    does not fit or holds a NUL."""
    data = value.encode()
    if len(data) > limit:
        raise BusLayoutError(f"{what} is {len(data)} bytes, the limit is {limit}")
    if b"\0" in data:
        raise BusLayoutError(f"{what} {value!r} holds a NUL byte")
    return data


def decode_text(field: bytes) -> str:
    """A NUL-padded field back to its text."""
    return field.split(b"\0", 1)[0].decode(errors="replace")


@dataclass(frozen=True, slots=True, kw_only=True)
class CcbHeader:
    """The fixed identity of a channel, as its CCB's first lines hold it."""

    channel_id: int
    num_slots: int
    flags: int
    name: str
    type: str
    metadata_bytes: int = 0

    def size(self) -> int:
        """The size of the CCB this header describes."""
        return ccb_bytes(self.num_slots, self.metadata_bytes, mux=bool(self.flags & FLAG_MUX))

    def pack(self) -> bytes:
        """The CCB's first CCB_NEXT_ORDINAL bytes; BusLayoutError on a bad field."""
        check_channel_id(self.channel_id)
        if not 1 <= self.num_slots <= MAX_SLOTS:
            raise BusLayoutError(f"num_slots {self.num_slots} outside 1..{MAX_SLOTS}")
        if not 0 <= self.metadata_bytes <= MAX_METADATA_BYTES:
            raise BusLayoutError(
                f"metadata_bytes {self.metadata_bytes} outside 0..{MAX_METADATA_BYTES}"
            )
        if self.flags & ~KNOWN_FLAGS:
            raise BusLayoutError(f"unknown channel flags {self.flags:#x}")
        name = encode_text(self.name, MAX_NAME_BYTES, "channel name")
        if not name:
            raise BusLayoutError("channel name is empty")
        kind = encode_text(self.type, MAX_TYPE_BYTES, "channel type")
        head = CCB_HEADER.pack(
            CCB_MAGIC, VERSION, self.flags, self.channel_id, self.num_slots, self.size(),
            self.metadata_bytes, 0,
        )  # fmt: skip
        block = bytearray(CCB_NEXT_ORDINAL)
        block[: len(head)] = head
        block[CCB_NAME : CCB_NAME + len(name)] = name
        block[CCB_TYPE : CCB_TYPE + len(kind)] = kind
        return bytes(block)

    @classmethod
    def unpack(cls, block: bytes, size: int) -> CcbHeader:
        """Read a CCB's header from its first bytes, checked against the block's `size`;
        raises BusLayoutError for a block that is not a CCB of this version."""
        if size < CCB_SLOTS or len(block) < CCB_NEXT_ORDINAL:
            raise BusLayoutError(f"a ccb is at least {CCB_SLOTS} bytes, got {size}")
        magic, version, flags, channel_id, num_slots, total, metadata, _ = CCB_HEADER.unpack_from(
            block
        )
        if magic != CCB_MAGIC:
            raise BusLayoutError(f"not a ccb: magic {magic:#018x}")
        if version != VERSION:
            raise BusLayoutError(f"ccb version {version}, expected {VERSION}")
        if metadata > MAX_METADATA_BYTES:
            raise BusLayoutError(f"ccb metadata_bytes {metadata} exceeds {MAX_METADATA_BYTES}")
        if (
            not 1 <= num_slots <= MAX_SLOTS
            or total != ccb_bytes(num_slots, metadata, mux=bool(flags & FLAG_MUX))
            or size < total
        ):
            raise BusLayoutError(
                f"ccb of {num_slots} slots says {total} bytes, the file has {size}"
            )
        return cls(
            channel_id=channel_id,
            num_slots=num_slots,
            flags=flags,
            name=decode_text(block[CCB_NAME:CCB_TYPE]),
            type=decode_text(block[CCB_TYPE:CCB_NEXT_ORDINAL]),
            metadata_bytes=metadata,
        )
