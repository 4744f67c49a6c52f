"""Types of the bus's C extension (_atomics.c): u64 atomics and the slot scans."""

from collections.abc import Sequence
from typing import Final

from typing_extensions import Buffer

SLOT_BYTES: Final[int]
SLOT_SEQ: Final[int]
SLOT_HOLDERS: Final[int]
SLOT_UNREAD: Final[int]
SLOT_TIMESTAMP: Final[int]
SLOT_SIZE: Final[int]
SLOT_FLAGS: Final[int]
SLOT_FLAG_RETIRE: Final[int]
RETIRE_PUBLISHER_SHIFT: Final[int]
RETIRE_TAG_SHIFT: Final[int]
MAX_SLOTS: Final[int]
CCB_NEXT_ORDINAL: Final[int]
CCB_MESSAGES: Final[int]
CCB_BYTES_PUBLISHED: Final[int]
CCB_MAX_MESSAGE: Final[int]
CCB_RELIABLE_SUBSCRIBERS: Final[int]
CCB_WHOLE_SUBSCRIBERS: Final[int]
CCB_SUBSCRIBERS_WAITING: Final[int]
CCB_PUBLISHERS_WAITING: Final[int]
CCB_PENDING: Final[int]
CCB_SLOTS: Final[int]
VCHAN_SUBSCRIBERS: Final[int]
SLOT_BUFFER_VCHAN: Final[int]
SLOT_VCHAN_ORDINAL: Final[int]
MAX_USERS: Final[int]
SCAN_NONE: Final[int]
SCAN_FOUND: Final[int]
SCAN_IN_FLIGHT: Final[int]
BUSY_BIT: Final[int]

def load_acquire_u64(buffer: Buffer, offset: int, /) -> int: ...
def store_release_u64(buffer: Buffer, offset: int, value: int, /) -> None: ...
def cas_u64(buffer: Buffer, offset: int, expected: int, desired: int, /) -> tuple[bool, int]: ...
def fetch_add_u64(buffer: Buffer, offset: int, delta: int, /) -> int: ...
def fetch_or_u64(buffer: Buffer, offset: int, bits: int, /) -> int: ...
def fetch_and_u64(buffer: Buffer, offset: int, bits: int, /) -> int: ...
def claim_slot(
    buffer: Buffer, slots: int, num_slots: int, owner: int, unread_mask: int, /
) -> int: ...
def next_message(
    buffer: Buffer,
    slots: int,
    num_slots: int,
    pending: int,
    last: int,
    subscriber: int,
    reliable: bool,
    vchan: int = -1,
    vchan_of: int = 0,
    hint: int = -1,
    /,
) -> tuple[int, int, int]: ...
def collect(
    buffer: Buffer,
    slots: int,
    num_slots: int,
    pending: int,
    last: int,
    subscriber: int,
    reliable: bool,
    max_count: int,
    vchan: int = -1,
    vchan_of: int = 0,
    /,
) -> tuple[int, list[tuple[int, int]]]: ...
def newest_message(
    buffer: Buffer,
    slots: int,
    num_slots: int,
    last: int,
    subscriber: int,
    reliable: bool,
    vchan: int = -1,
    /,
) -> tuple[int, int]: ...
def find_timestamp(
    buffer: Buffer, slots: int, num_slots: int, timestamp: int, subscriber: int, vchan: int = -1, /
) -> tuple[int, int]: ...
def release_subscriber(buffer: Buffer, slots: int, num_slots: int, subscriber: int, /) -> int: ...
def free_publisher(buffer: Buffer, slots: int, num_slots: int, owner: int, /) -> int: ...
def commit(
    buffer: Buffer,
    line: int,
    size: int,
    meta_size: int,
    flags: int,
    checksum: int,
    buffer_vchan: int,
    vchan_line: int,
    pending: int,
    pending_vchan: int,
    retire_publisher: int,
    /,
) -> tuple[int, int, int]: ...
def publish_many(
    buffer: Buffer,
    num_slots: int,
    owner: int,
    reliable: bool,
    payload_buffer: Buffer,
    slot_size: int,
    buffer_index: int,
    payloads: Sequence[Buffer],
    start: int,
    /,
) -> tuple[int, int, int, int]: ...
def take(
    buffer: Buffer,
    slots: int,
    num_slots: int,
    pending: int,
    last: int,
    subscriber: int,
    reliable: bool,
    max_count: int,
    vchan: int,
    vchan_of: int,
    hint: int,
    /,
) -> tuple[int, list[tuple[int, int, int, int, int, int, int, int, int, int]], int]: ...
def release_slots(
    buffer: Buffer, slots: int, num_slots: int, subscriber: int, indexes: Sequence[int], /
) -> tuple[int, list[int]]: ...
