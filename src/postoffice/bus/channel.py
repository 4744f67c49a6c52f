"""A channel mapped into this process: its blocks and buffers, its users, crash cleanup.

The channel library's middle: publisher.py and subscriber.py move messages through a
`Channel`; the bus server registers users and cleans up after dead ones through it.
"""

from __future__ import annotations

import mmap
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, final

from postoffice.bus import memory
from postoffice.bus.blocks import (
    BusLocation,
    ChannelFds,
    SystemControlBlock,
    create_buffer_file,
    map_fd,
)
from postoffice.bus.errors import (
    BusClosedError,
    BusConfigError,
    BusLayoutError,
    BusStorageError,
    CapacityError,
    TooManyUsersError,
)
from postoffice.bus.native import atomics
from postoffice.bus.triggers import Triggers
from postoffice.core.errors import translate_os_error

_load: Final = atomics.load_acquire_u64
_store: Final = atomics.store_release_u64
_cas: Final = atomics.cas_u64
_fetch_add: Final = atomics.fetch_add_u64
_fetch_or: Final = atomics.fetch_or_u64
_fetch_and: Final = atomics.fetch_and_u64


#: A message checksum: (metadata, payload) -> a u32. Publisher and subscribers of a
#: channel must use the same one.
ChecksumFunction = Callable[[memoryview, memoryview], int]


def crc32_checksum(metadata: memoryview, payload: memoryview) -> int:
    """The default checksum: CRC-32 of the metadata followed by the payload."""
    return zlib.crc32(payload, zlib.crc32(metadata))


def slots_needed(publishers: int, subscribers: int, max_active_messages: int) -> int:
    """The admission rule of an unreliable channel: a slot per publisher (the one it
    writes), per subscriber, per message subscribers may hold at once (their
    max_active_messages summed), and one more, so that an unreliable publisher always
    finds a slot nobody holds."""
    return publishers + subscribers + max_active_messages + 1


@final
@dataclass(slots=True)
class MappedBuffer:
    """One buffer file mapped: num_slots payloads of `slot_size` bytes."""

    index: int
    slot_size: int
    block: mmap.mmap
    #: One writable and one read-only view of the whole block; messages are slices.
    view: memoryview
    readonly: memoryview

    def close(self) -> None:
        """Release the views and unmap (BufferError if a slice is still exported)."""
        self.readonly.release()
        self.view.release()
        self.block.close()


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelStats:
    """A channel's statistics, read at one moment."""

    messages: int
    bytes: int
    max_message_bytes: int
    drops: int
    last_ordinal: int
    num_buffers: int
    slot_size: int
    publishers: int
    subscribers: int


def _lowest_clear_bit(mask: int) -> int | None:
    free = ~mask & memory.ALL_BITS
    return (free & -free).bit_length() - 1 if free else None


@final
class Channel:
    """A channel's CCB, BCB and buffers, mapped. Create one with `Channel.open`.

    Registration (`add_publisher`, `add_subscriber`, `remove_*`) is the server's job: the
    user masks are moved atomically, but the admission rule's check and the masks are
    not one atomic step, so registrations must come from one process at a time.
    """

    def __init__(
        self,
        *,
        location: BusLocation,
        header: memory.CcbHeader,
        ccb: mmap.mmap,
        bcb: mmap.mmap,
        scb: SystemControlBlock | None,
    ) -> None:
        self.location = location
        self.channel_id = header.channel_id
        self.name = header.name
        self.type = header.type
        self.num_slots = header.num_slots
        self.flags = header.flags
        self.metadata_bytes = header.metadata_bytes
        self.ccb = ccb
        self.bcb = bcb
        self.scb = scb
        self._ccb_view = memoryview(ccb)
        self._ccb_readonly = self._ccb_view.toreadonly()
        self._buffers: dict[int, MappedBuffer] = {}
        self.closed = False

    @classmethod
    def open(
        cls, location: BusLocation, fds: ChannelFds, *, scb: SystemControlBlock | None = None
    ) -> Channel:
        """Map a channel from its descriptors (the caller keeps and closes them). Raises
        BusLayoutError if they are not a channel's blocks, BusStorageError if they cannot
        be mapped."""
        ccb = map_fd(fds.ccb, "ccb", memory.CCB_SLOTS)
        try:
            header = memory.CcbHeader.unpack(ccb[: memory.CCB_NEXT_ORDINAL], len(ccb))
            bcb = map_fd(fds.bcb, "bcb", memory.BCB_BYTES)
        except BaseException:
            ccb.close()
            raise
        magic, version, _ = memory.BCB_HEADER.unpack_from(bcb)
        if magic != memory.BCB_MAGIC or version != memory.VERSION:
            ccb.close()
            bcb.close()
            raise BusLayoutError(f"not a bcb of version {memory.VERSION}")
        channel = cls(location=location, header=header, ccb=ccb, bcb=bcb, scb=scb)
        try:
            for index, fd in enumerate(fds.buffers):
                channel._map_buffer(index, fd)
        except BaseException:
            channel.close()
            raise
        return channel

    # -- buffers ---------------------------------------------------------------------------

    @property
    def fixed_size(self) -> bool:
        """Whether the channel refuses to grow."""
        return bool(self.flags & memory.FLAG_FIXED_SIZE)

    @property
    def checksum(self) -> bool:
        """Whether messages carry a CRC-32 of their payload."""
        return bool(self.flags & memory.FLAG_CHECKSUM)

    @property
    def mux(self) -> bool:
        """Whether the channel is a multiplexer (its CCB ends with the vchan table)."""
        return bool(self.flags & memory.FLAG_MUX)

    def vchan_line(self, vchan_id: int) -> int:
        """The byte offset of vchan `vchan_id`'s line; BusConfigError on a channel that
        is no mux, BusLayoutError for an id out of range."""
        if not self.mux:
            raise BusConfigError(f"channel {self.name!r} is not a multiplexer")
        return memory.vchan_offset(self.num_slots, self.metadata_bytes, vchan_id)

    def vchan_last_ordinal(self, vchan_id: int) -> int:
        """The last ordinal vchan `vchan_id` handed out (0: none yet)."""
        return _load(self.ccb, self.vchan_line(vchan_id) + memory.VCHAN_NEXT_ORDINAL)

    def subscriber_vchan(self, subscriber_id: int) -> int:
        """The vchan subscriber `subscriber_id` reads, or NO_VCHAN for the whole channel."""
        value = _load(self.ccb, memory.vchan_filter_offset(subscriber_id))
        return memory.NO_VCHAN if value == memory.ALL_BITS else value

    def publisher_vchan(self, publisher_id: int) -> int:
        """The vchan publisher `publisher_id` publishes on, or NO_VCHAN."""
        value = _load(self.ccb, memory.publisher_vchan_offset(publisher_id))
        return memory.NO_VCHAN if value == memory.ALL_BITS else value

    def _check_vchan(self, vchan: int) -> None:
        if vchan != memory.NO_VCHAN:
            self.vchan_line(vchan)

    def metadata(self, slot: int, size: int, *, writable: bool = False) -> memoryview:
        """A view of the first `size` bytes of slot `slot`'s metadata area (read-only
        unless `writable`); the caller releases it."""
        start = memory.metadata_offset(self.num_slots, self.metadata_bytes, slot)
        view = self._ccb_view if writable else self._ccb_readonly
        return view[start : start + size]

    def num_buffers(self) -> int:
        """Buffer indexes handed out so far (the newest may still be being created)."""
        return min(_load(self.bcb, memory.BCB_NUM_BUFFERS), memory.MAX_BUFFERS)

    def slot_size_of(self, index: int) -> int:
        """Buffer `index`'s slot size, 0 while its file is being created."""
        return _load(self.bcb, memory.bcb_slot_size_offset(index))

    def buffer(self, index: int) -> MappedBuffer:
        """Buffer `index`, mapped on first use (by name: a resize made it after this
        process got its descriptors). Raises BusLayoutError for a buffer not made yet."""
        mapped = self._buffers.get(index)
        if mapped is not None:
            return mapped
        self._check_open()
        path = self.location.buffer_path(self.channel_id, index)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise translate_os_error(exc, BusStorageError, f"open {path}") from exc
        try:
            return self._map_buffer(index, fd)
        finally:
            os.close(fd)

    def _map_buffer(self, index: int, fd: int) -> MappedBuffer:
        slot_size = self.slot_size_of(index)
        if slot_size == 0:
            raise BusLayoutError(f"buffer {index} of channel {self.name!r} is not ready")
        block = map_fd(fd, f"buffer {index}", self.num_slots * slot_size)
        view = memoryview(block)
        mapped = MappedBuffer(
            index=index, slot_size=slot_size, block=block, view=view, readonly=view.toreadonly()
        )
        self._buffers[index] = mapped
        return mapped

    def newest_buffer(self, at_least: int = 0) -> MappedBuffer | None:
        """The newest ready buffer, if its slot size is at least `at_least` bytes."""
        for index in range(self.num_buffers() - 1, -1, -1):
            size = self.slot_size_of(index)
            if size:
                return self.buffer(index) if size >= at_least else None
        return None

    def grow(self, at_least: int) -> MappedBuffer:
        """Add a buffer whose slots hold `at_least` bytes (twice the newest slot size if
        that is more), and record it in the BCB. Raises CapacityError when the channel
        has MAX_BUFFERS buffers or the buffer would pass MAX_BUFFER_BYTES."""
        self._check_open()
        newest = self.newest_buffer()
        current = newest.slot_size if newest is not None else 0
        size = max(at_least, 2 * current)
        size = min(-(-size // memory.LINE_BYTES) * memory.LINE_BYTES, memory.MAX_SLOT_BYTES)
        size = max(size, at_least)
        if size * self.num_slots > memory.MAX_BUFFER_BYTES:
            raise CapacityError(
                f"channel {self.name!r} cannot grow to slots of {size} bytes: "
                f"{self.num_slots} slots would pass {memory.MAX_BUFFER_BYTES} bytes"
            )
        # The index is taken first, atomically, so two publishers growing at once make
        # two buffers rather than one file each believes is its own.
        index = _fetch_add(self.bcb, memory.BCB_NUM_BUFFERS, 1)
        if index >= memory.MAX_BUFFERS:
            raise CapacityError(
                f"channel {self.name!r} has {memory.MAX_BUFFERS} buffers, the limit"
            )
        fd = create_buffer_file(self.location, self.channel_id, index, self.num_slots * size)
        try:
            block = map_fd(fd, f"buffer {index}", self.num_slots * size)
        finally:
            os.close(fd)
        view = memoryview(block)
        mapped = MappedBuffer(
            index=index, slot_size=size, block=block, view=view, readonly=view.toreadonly()
        )
        self._buffers[index] = mapped
        # The file exists and is sized before its slot size is published, and the slot
        # size before any message that names the buffer.
        _store(self.bcb, memory.bcb_slot_size_offset(index), size)
        if self.scb is not None:
            self.scb.add(self.channel_id, "resizes", 1)
        return mapped

    def redefine(self, *, type: str, flags: int) -> None:
        """Rewrite the channel's type and flags in its CCB header: the server does so for
        a channel a subscriber created, when its first publisher says what it is. Safe
        then: no publisher has the channel yet, and subscribers read neither field after
        they open it (a message says itself whether it carries a checksum). Raises
        BusLayoutError for a type that does not fit or an unknown flag."""
        self._check_open()
        header = memory.CcbHeader(
            channel_id=self.channel_id, num_slots=self.num_slots, flags=flags,
            name=self.name, type=type, metadata_bytes=self.metadata_bytes,
        ).pack()  # fmt: skip
        self.ccb[memory.CCB_HEADER.size : len(header)] = header[memory.CCB_HEADER.size :]
        atomics.store_release_u64(self.ccb, 8, memory.VERSION | flags << 32)
        self.type = type
        self.flags = flags

    # -- users -----------------------------------------------------------------------------

    def add_publisher(self, *, reliable: bool = False, vchan: int = memory.NO_VCHAN) -> int:
        """Register a publisher (on vchan `vchan` of a mux, or on the channel itself);
        its id. Raises TooManyUsersError past 64 publishers, CapacityError when an
        unreliable publisher breaks the admission rule, BusConfigError for a vchan on a
        channel that is no mux, BusLayoutError for a vchan id out of range."""
        self._check_open()
        self._check_vchan(vchan)
        mask = _load(self.ccb, memory.CCB_PUBLISHERS)
        free = _lowest_clear_bit(mask)
        if free is None:
            raise TooManyUsersError(
                f"channel {self.name!r} has {memory.MAX_PUBLISHERS} publishers, the limit "
                "(each is one bit of a 64-bit mask)"
            )
        unreliable = mask & ~_load(self.ccb, memory.CCB_RELIABLE_PUBLISHERS)
        if not reliable or unreliable:
            self._admit(publishers=1, subscribers=0, active=0)
        _store(self.ccb, memory.pending_offset(free), 0)
        _store(self.ccb, memory.pending_vchan_offset(free), 0)
        _store(
            self.ccb,
            memory.publisher_vchan_offset(free),
            memory.ALL_BITS if vchan == memory.NO_VCHAN else vchan,
        )
        if reliable:
            _fetch_or(self.ccb, memory.CCB_RELIABLE_PUBLISHERS, 1 << free)
        _fetch_or(self.ccb, memory.CCB_PUBLISHERS, 1 << free)
        if self.scb is not None:
            self.scb.add(self.channel_id, "publishers", 1)
            if reliable:
                self.scb.add(self.channel_id, "reliable_publishers", 1)
        return free

    def add_subscriber(
        self,
        *,
        reliable: bool = False,
        max_active_messages: int = 1,
        vchan: int = memory.NO_VCHAN,
    ) -> int:
        """Register a subscriber that may hold up to `max_active_messages` at once, and
        reads vchan `vchan` of a mux (or the whole channel); its id. Raises
        TooManyUsersError past 64 subscribers, CapacityError when the channel has an
        unreliable publisher and too few slots for one more subscriber, BusConfigError
        and BusLayoutError as add_publisher does."""
        self._check_open()
        self._check_vchan(vchan)
        if not 1 <= max_active_messages <= memory.MAX_ACTIVE_MESSAGES:
            raise BusConfigError(
                f"max_active_messages must be 1..{memory.MAX_ACTIVE_MESSAGES}, "
                f"got {max_active_messages}"
            )
        mask = _load(self.ccb, memory.CCB_SUBSCRIBERS)
        free = _lowest_clear_bit(mask)
        if free is None:
            raise TooManyUsersError(
                f"channel {self.name!r} has {memory.MAX_SUBSCRIBERS} subscribers, the limit "
                "(each is one bit of a 64-bit mask)"
            )
        publishers = _load(self.ccb, memory.CCB_PUBLISHERS)
        if publishers & ~_load(self.ccb, memory.CCB_RELIABLE_PUBLISHERS):
            self._admit(publishers=0, subscribers=1, active=max_active_messages)
        self._register_subscriber(free, reliable, max_active_messages, vchan)
        if self.scb is not None:
            self.scb.add(self.channel_id, "subscribers", 1)
            if reliable:
                self.scb.add(self.channel_id, "reliable_subscribers", 1)
        return free

    def _register_subscriber(
        self, user: int, reliable: bool, max_active_messages: int, vchan: int
    ) -> None:
        # The per-user words before the mask bits: a publisher that sees a bit sees them.
        bit = 1 << user
        _store(self.ccb, memory.active_limit_offset(user), max_active_messages)
        whole = vchan == memory.NO_VCHAN
        _store(self.ccb, memory.vchan_filter_offset(user), memory.ALL_BITS if whole else vchan)
        _fetch_add(self.ccb, memory.CCB_ACTIVE_LIMIT, max_active_messages)
        if whole:
            _fetch_or(self.ccb, memory.CCB_WHOLE_SUBSCRIBERS, bit)
        else:
            _fetch_or(self.ccb, self.vchan_line(vchan) + memory.VCHAN_SUBSCRIBERS, bit)
        if reliable:
            _fetch_or(self.ccb, memory.CCB_RELIABLE_SUBSCRIBERS, bit)
        _fetch_or(self.ccb, memory.CCB_SUBSCRIBERS, bit)

    def restore_subscriber(
        self,
        subscriber_id: int,
        *,
        reliable: bool,
        max_active_messages: int,
        vchan: int = memory.NO_VCHAN,
    ) -> None:
        """Register subscriber `subscriber_id` again under the id it had: the server does so
        in a placeholder's new files for the subscribers of its old ones. No admission
        check and no SCB counting (they were counted when they came). Raises
        BusConfigError for an id in use or out of range."""
        self._check_open()
        if not 0 <= subscriber_id < memory.MAX_SUBSCRIBERS or (
            _load(self.ccb, memory.CCB_SUBSCRIBERS) >> subscriber_id & 1
        ):
            raise BusConfigError(f"subscriber id {subscriber_id} is in use or out of range")
        self._register_subscriber(subscriber_id, reliable, max_active_messages, vchan)

    def mark_replaced(self) -> None:
        """Say in this (placeholder's) CCB that the channel has new files now."""
        _fetch_or(self.ccb, memory.CCB_VERSION_FLAGS, memory.FLAG_REPLACED << 32)

    def replaced(self) -> bool:
        """Whether the server gave this placeholder channel new files (one load)."""
        return bool(_load(self.ccb, memory.CCB_VERSION_FLAGS) >> 32 & memory.FLAG_REPLACED)

    @property
    def placeholder(self) -> bool:
        """Whether the channel was made by a subscriber and had no publisher when mapped."""
        return bool(self.flags & memory.FLAG_PLACEHOLDER)

    def _admit(self, *, publishers: int, subscribers: int, active: int) -> None:
        pubs = _load(self.ccb, memory.CCB_PUBLISHERS).bit_count() + publishers
        subs = _load(self.ccb, memory.CCB_SUBSCRIBERS).bit_count() + subscribers
        held = _load(self.ccb, memory.CCB_ACTIVE_LIMIT) + active
        needed = slots_needed(pubs, subs, held)
        if needed > self.num_slots:
            raise CapacityError(
                f"unreliable channel {self.name!r} has {self.num_slots} slots and needs "
                f"{needed}: publishers {pubs} + subscribers {subs} + max active messages "
                f"{held} + 1"
            )

    def is_reliable_publisher(self, publisher_id: int) -> bool:
        """Whether publisher `publisher_id` registered as reliable."""
        return bool(_load(self.ccb, memory.CCB_RELIABLE_PUBLISHERS) >> publisher_id & 1)

    def is_reliable_subscriber(self, subscriber_id: int) -> bool:
        """Whether subscriber `subscriber_id` registered as reliable."""
        return bool(_load(self.ccb, memory.CCB_RELIABLE_SUBSCRIBERS) >> subscriber_id & 1)

    def max_active_messages(self, subscriber_id: int) -> int:
        """How many messages subscriber `subscriber_id` may hold (0: not registered)."""
        return _load(self.ccb, memory.active_limit_offset(subscriber_id))

    def check_publisher(self, publisher_id: int) -> None:
        """Raise BusConfigError unless `publisher_id` is a registered publisher."""
        if not 0 <= publisher_id < memory.MAX_PUBLISHERS or not (
            _load(self.ccb, memory.CCB_PUBLISHERS) >> publisher_id & 1
        ):
            raise BusConfigError(f"no publisher {publisher_id} on channel {self.name!r}")

    def check_subscriber(self, subscriber_id: int) -> None:
        """Raise BusConfigError unless `subscriber_id` is a registered subscriber."""
        if not 0 <= subscriber_id < memory.MAX_SUBSCRIBERS or not (
            _load(self.ccb, memory.CCB_SUBSCRIBERS) >> subscriber_id & 1
        ):
            raise BusConfigError(f"no subscriber {subscriber_id} on channel {self.name!r}")

    def release_subscriber(self, subscriber_id: int, triggers: Triggers | None = None) -> int:
        """Crash cleanup: take subscriber `subscriber_id`'s bit out of every slot's
        holders and unread, then report the messages that retired by it and wake the
        reliable publishers that wait for a slot; how many slots it held or still had
        to read."""
        self._check_open()
        if not 0 <= subscriber_id < memory.MAX_SUBSCRIBERS:
            raise BusConfigError(f"no subscriber {subscriber_id} on channel {self.name!r}")
        count = atomics.release_subscriber(
            self.ccb, memory.CCB_SLOTS, self.num_slots, subscriber_id
        )
        if triggers is not None:
            triggers.retire_all(self.num_slots)
            triggers.wake_publishers()
        return count

    def remove_subscriber(self, subscriber_id: int, triggers: Triggers | None = None) -> int:
        """Unregister a subscriber, live or dead: out of the masks first (so no publish
        marks it unread any more), then out of every slot (`release_subscriber`)."""
        self.check_subscriber(subscriber_id)
        bit = 1 << subscriber_id
        keep = ~bit & memory.ALL_BITS
        reliable = _fetch_and(self.ccb, memory.CCB_RELIABLE_SUBSCRIBERS, keep) & bit
        _fetch_and(self.ccb, memory.CCB_SUBSCRIBERS, keep)
        _fetch_and(self.ccb, memory.CCB_SUBSCRIBERS_WAITING, keep)
        vchan = self.subscriber_vchan(subscriber_id)
        if vchan == memory.NO_VCHAN:
            _fetch_and(self.ccb, memory.CCB_WHOLE_SUBSCRIBERS, keep)
        else:
            _fetch_and(self.ccb, self.vchan_line(vchan) + memory.VCHAN_SUBSCRIBERS, keep)
        limit = _load(self.ccb, memory.active_limit_offset(subscriber_id))
        _fetch_add(self.ccb, memory.CCB_ACTIVE_LIMIT, -limit % (1 << 64))
        _store(self.ccb, memory.active_limit_offset(subscriber_id), 0)
        count = self.release_subscriber(subscriber_id, triggers)
        if self.scb is not None:
            self.scb.add(self.channel_id, "subscribers", -1)
            if reliable:
                self.scb.add(self.channel_id, "reliable_subscribers", -1)
        return count

    def free_publisher(self, publisher_id: int, triggers: Triggers | None = None) -> int:
        """Crash cleanup: every slot publisher `publisher_id` left being written becomes
        never-published again, its pending ordinal is withdrawn (subscribers waiting for
        it count it dropped), and waiting subscribers are woken; how many slots."""
        self._check_open()
        if not 0 <= publisher_id < memory.MAX_PUBLISHERS:
            raise BusConfigError(f"no publisher {publisher_id} on channel {self.name!r}")
        count = atomics.free_publisher(
            self.ccb, memory.CCB_SLOTS, self.num_slots, memory.BUSY_BIT | publisher_id
        )
        _store(self.ccb, memory.pending_offset(publisher_id), 0)
        _store(self.ccb, memory.pending_vchan_offset(publisher_id), 0)
        if triggers is not None:
            triggers.wake_subscribers()
        return count

    def remove_publisher(self, publisher_id: int, triggers: Triggers | None = None) -> int:
        """Unregister a publisher, live or dead, freeing what it left (`free_publisher`)."""
        self.check_publisher(publisher_id)
        bit = 1 << publisher_id
        keep = ~bit & memory.ALL_BITS
        reliable = _fetch_and(self.ccb, memory.CCB_RELIABLE_PUBLISHERS, keep) & bit
        _fetch_and(self.ccb, memory.CCB_PUBLISHERS, keep)
        _fetch_and(self.ccb, memory.CCB_PUBLISHERS_WAITING, keep)
        count = self.free_publisher(publisher_id, triggers)
        if self.scb is not None:
            self.scb.add(self.channel_id, "publishers", -1)
            if reliable:
                self.scb.add(self.channel_id, "reliable_publishers", -1)
        return count

    # -- state -----------------------------------------------------------------------------

    def stats(self) -> ChannelStats:
        """The channel's statistics now."""
        self._check_open()
        newest = self.newest_buffer()
        return ChannelStats(
            messages=_load(self.ccb, memory.CCB_MESSAGES),
            bytes=_load(self.ccb, memory.CCB_BYTES_PUBLISHED),
            max_message_bytes=_load(self.ccb, memory.CCB_MAX_MESSAGE),
            drops=_load(self.ccb, memory.CCB_DROPS),
            last_ordinal=_load(self.ccb, memory.CCB_NEXT_ORDINAL),
            num_buffers=self.num_buffers(),
            slot_size=newest.slot_size if newest is not None else 0,
            publishers=_load(self.ccb, memory.CCB_PUBLISHERS).bit_count(),
            subscribers=_load(self.ccb, memory.CCB_SUBSCRIBERS).bit_count(),
        )

    def slot_words(self, index: int) -> tuple[int, int, int]:
        """Slot `index`'s (seq, holders, unread), for tests and the server's inspection."""
        if not 0 <= index < self.num_slots:
            raise BusConfigError(f"slot {index} outside 0..{self.num_slots - 1}")
        line = memory.slot_offset(index)
        return (
            _load(self.ccb, line + memory.SLOT_SEQ),
            _load(self.ccb, line + memory.SLOT_HOLDERS),
            _load(self.ccb, line + memory.SLOT_UNREAD),
        )

    def _check_open(self) -> None:
        if self.closed:
            raise BusClosedError(f"channel {self.name!r} is closed")

    def close(self) -> None:
        """Unmap everything. Raises BusStorageError if a view of the memory (a message's
        data, a publisher's buffer, or a slice of one) is still exported; what it
        covers stays mapped."""
        if self.closed:
            return
        self.closed = True
        busy: list[int] = []
        for index, mapped in sorted(self._buffers.items()):
            try:
                mapped.close()
            except BufferError:
                busy.append(index)
        self._buffers = {i: b for i, b in self._buffers.items() if i in busy}
        self._ccb_readonly.release()
        self._ccb_view.release()
        for block in (self.ccb, self.bcb):
            try:
                block.close()
            except BufferError:
                busy.append(-1)
        if busy:
            raise BusStorageError(
                f"channel {self.name!r} closed with views of its memory still exported "
                "(release every message and buffer first); those stay mapped"
            )

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"slots={self.num_slots}"
        return f"<Channel {self.channel_id} {self.name!r} {state}>"
