"""A channel's publisher: claim a slot, write its payload in place, publish it.

Part of the bus's channel library; it moves only shared memory and eventfds, never the
server's socket. The protocol's ordering argument is in docs/design/bus-memory.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Final, final

from typing_extensions import Buffer

from postoffice.bus import memory, retirement
from postoffice.bus.channel import Channel, ChecksumFunction, MappedBuffer, crc32_checksum
from postoffice.bus.errors import (
    BusClosedError,
    BusConfigError,
    BusUsageError,
    CapacityError,
    MessageSizeError,
)
from postoffice.bus.native import atomics
from postoffice.bus.triggers import (
    FdWaiter,
    Triggers,
    WaitBit,
    drain,
    readable,
    remaining,
)

_load: Final = atomics.load_acquire_u64
_store: Final = atomics.store_release_u64
_claim: Final = atomics.claim_slot
_commit: Final = atomics.commit
_publish_many: Final = atomics.publish_many


def _nbytes(data: Buffer) -> int:
    return len(data) if type(data) is bytes else memoryview(data).nbytes


@final
class Publisher:
    """Publishes into one channel as user `publisher_id` (registered with
    `Channel.add_publisher`, which says whether it is reliable).

    `get_buffer(size)` claims a slot and returns a writable view of its payload;
    `publish(length)` makes the first `length` bytes a message. A reliable publisher
    never reuses a slot that a reliable subscriber has still to read or that anyone
    holds: it gets None from `get_buffer` instead, and may `wait()` for a slot (its
    `eventfd` is written when one frees up). An unreliable one reuses the oldest slot
    nobody holds.

    On a checksum channel each message carries `checksum(metadata, payload)` (CRC-32 by
    default; its subscribers must use the same function).

    A publisher on a virtual channel (`vchan_id`, registered so) shares its mux's slots:
    each message also takes the vchan's next ordinal, which `publish` returns, and only
    the subscribers of that vchan or of the whole mux must read it.

    Given `retirement` (the read end of its retirement pipe, whose write end every
    user's Triggers knows), each message asks to be reported once no subscriber holds
    it and no reliable subscriber must still read it: `retired()` then returns its
    (slot, ordinal). A vchan publisher cannot ask (its ordinals are the vchan's).

    `publish_bytes` and `publish_many` copy payloads in; a publisher on a plain channel
    (no vchan, no checksum, no retirement) does the claim, the copy and the commit of
    each in one C call, and `publish_many` does a whole batch so.
    """

    def __init__(
        self,
        channel: Channel,
        publisher_id: int,
        *,
        triggers: Triggers,
        eventfd: int | None = None,
        checksum: ChecksumFunction = crc32_checksum,
        retirement: int | None = None,
    ) -> None:
        channel.check_publisher(publisher_id)
        if retirement is not None and channel.publisher_vchan(publisher_id) != memory.NO_VCHAN:
            raise BusConfigError(
                f"publisher {publisher_id} of channel {channel.name!r} is on a virtual "
                "channel: retirement notifications are for plain channels and muxes only"
            )
        self._retirement = retirement
        self.channel = channel
        self.publisher_id = publisher_id
        self.reliable = channel.is_reliable_publisher(publisher_id)
        self._triggers = triggers
        self._eventfd = eventfd
        self._waiter: FdWaiter | None = None  # made by the first wait()
        self._checksum = checksum
        self._owner = memory.BUSY_BIT | publisher_id
        self._pending = memory.pending_offset(publisher_id)
        self._pending_vchan = memory.pending_vchan_offset(publisher_id)
        #: The vchan this publisher publishes on (NO_VCHAN: none).
        self.vchan_id = channel.publisher_vchan(publisher_id)
        self._vchan_line = (
            channel.vchan_line(self.vchan_id) if self.vchan_id != memory.NO_VCHAN else -1
        )
        self._waiting = WaitBit(channel.ccb, memory.CCB_PUBLISHERS_WAITING, publisher_id)
        self._ccb = channel.ccb
        self._num_slots = channel.num_slots
        newest = channel.newest_buffer()
        if newest is None:
            raise BusConfigError(f"channel {channel.name!r} has no buffer")
        self._buffer: MappedBuffer = newest
        self._buffer_vchan = newest.index | (self.vchan_id & 0xFFFF_FFFF) << 32
        self._retire_id = -1 if retirement is None else publisher_id
        #: Whether a message needs nothing but a claim, a copy and a commit (C does all).
        self._plain = self._vchan_line < 0 and retirement is None and not channel.checksum
        self._slot: int | None = None
        self._view: memoryview | None = None
        self._polled = False
        self.closed = False
        self.published = 0

    def get_buffer(self, size: int | None = None) -> memoryview | None:
        """A writable view of the payload of a claimed slot: `size` bytes, or the whole
        slot for None. A size over the slot size grows the channel (a new buffer with
        larger slots). Returns None for a reliable publisher while every slot is unread
        or held (then `wait()`). Raises MessageSizeError for a size under 1 or over the
        limits, CapacityError for an unreliable publisher that finds every slot held
        (the admission rule was broken) or a channel that cannot grow."""
        self._check_open()
        if size is not None and not 1 <= size <= memory.MAX_SLOT_BYTES:
            raise MessageSizeError(
                f"a message is 1..{memory.MAX_SLOT_BYTES} bytes, asked for {size}"
            )
        if self._slot is None and not self._claim():
            return None
        if self._view is not None:
            self._view.release()
            self._view = None
        if size is not None and size > self._buffer.slot_size:
            self._use_buffer_of(size)
        length = self._buffer.slot_size if size is None else size
        start = self._slot_index() * self._buffer.slot_size
        self._view = self._buffer.view[start : start + length]
        return self._view

    def _slot_index(self) -> int:
        assert self._slot is not None
        return self._slot

    def _unread_mask(self) -> int:
        """The subscribers whose unread bits keep this publisher off a slot."""
        if not self.reliable:
            return 0
        return _load(self._ccb, memory.CCB_RELIABLE_SUBSCRIBERS)

    def _claim(self) -> bool:
        slot = _claim(
            self._ccb, memory.CCB_SLOTS, self._num_slots, self._owner, self._unread_mask()
        )
        if slot < 0 and self.reliable and self._polled:
            # Polled from outside (fileno()): ask to be woken, then look once more, so a
            # slot freed between the look and the ask is not missed.
            if self._eventfd is not None:
                drain(self._eventfd)
            self._waiting.arm()
            slot = _claim(
                self._ccb, memory.CCB_SLOTS, self._num_slots, self._owner, self._unread_mask()
            )
        if slot < 0:
            if self.reliable:
                return False
            raise CapacityError(
                f"no slot of channel {self.channel.name!r} is free: all "
                f"{self._num_slots} are held or being written (too many active messages "
                "for the admission rule)"
            )
        self._slot = slot
        # The message this slot held may have retired unreported (its last releaser saw
        # the slot claimed already, or an unreliable publisher took a slot still unread).
        self._triggers.retire_replaced(slot)
        return True

    def _use_buffer_of(self, size: int) -> None:
        if self.channel.fixed_size:
            raise MessageSizeError(
                f"message of {size} bytes exceeds the fixed slot size "
                f"{self._buffer.slot_size} of channel {self.channel.name!r}"
            )
        newer = self.channel.newest_buffer(size)
        self._buffer = newer if newer is not None else self.channel.grow(size)
        self._buffer_vchan = self._buffer.index | (self.vchan_id & 0xFFFF_FFFF) << 32

    def check_metadata(self, metadata: bytes | bytearray | memoryview) -> None:
        """Raise MessageSizeError if `metadata` does not fit the channel's per-message
        metadata area."""
        size = _nbytes(metadata)
        if size > self.channel.metadata_bytes:
            raise MessageSizeError(
                f"metadata of {size} bytes exceeds the {self.channel.metadata_bytes} bytes "
                f"per message of channel {self.channel.name!r}"
            )

    def publish(
        self, length: int | None = None, *, metadata: bytes | bytearray | memoryview = b""
    ) -> int:
        """Publish the first `length` bytes of the view `get_buffer` gave (all of it for
        None), with `metadata` copied into the slot's metadata area, and return the
        message's ordinal (its vchan ordinal, for a publisher on a vchan); the view is
        released. Raises BusUsageError without a buffer, MessageSizeError for 0 bytes or
        more than the view holds, or for metadata past the channel's metadata size (the
        slot stays claimed: publish again)."""
        self._check_open()
        view = self._view
        if view is None or self._slot is None:
            raise BusUsageError("publish without a buffer: call get_buffer first")
        if length is None:
            length = len(view)
        if length < 1:
            raise MessageSizeError("cannot publish an empty message: a message has 1 byte or more")
        if length > len(view):
            raise MessageSizeError(f"cannot publish {length} bytes from a buffer of {len(view)}")
        self.check_metadata(metadata)
        return self._commit(view, length, metadata, 0)

    def activate(self) -> int | None:
        """Publish an activation message (no payload, no metadata): it tells subscribers
        that this publisher has joined, and they skip it unless they asked to see
        activations. Its ordinal, or None when a reliable publisher has no slot now.
        Raises as get_buffer does."""
        if self.get_buffer(1) is None:
            return None
        assert self._view is not None
        return self._commit(self._view, 0, b"", memory.SLOT_FLAG_ACTIVATION)

    def _commit(
        self,
        view: memoryview,
        length: int,
        metadata: bytes | bytearray | memoryview,
        flags: int,
    ) -> int:
        """Fill the claimed slot's metadata and checksum, and publish it (one C call
        stamps the fields, takes the ordinals, stores seq and counts): the ordinal."""
        assert self._slot is not None
        slot = self._slot
        meta_size = _nbytes(metadata)
        if meta_size:
            with self.channel.metadata(slot, meta_size, writable=True) as area:
                area[:] = memoryview(metadata).cast("B")
        checksum = 0
        if self.channel.checksum:
            with (
                self.channel.metadata(slot, meta_size) as area,
                view[:length] as payload,
            ):
                checksum = self._checksum(area, payload) & 0xFFFF_FFFF
            flags |= memory.SLOT_FLAG_CHECKSUM
        view.release()
        self._view = None
        ordinal, vchan_ordinal, waiting = _commit(
            self._ccb, memory.slot_offset(slot), length, meta_size, flags, checksum,
            self._buffer_vchan, self._vchan_line, self._pending, self._pending_vchan,
            self._retire_id,
        )  # fmt: skip
        self._slot = None
        self.published += 1
        if waiting:
            self._triggers.wake_subscribers()
        if self._retirement is not None:
            # With no subscriber that must read it and none holding it yet, it retires now.
            self._triggers.retire(slot)
        return vchan_ordinal if self._vchan_line >= 0 else ordinal

    def _publish_plain(self, payloads: Sequence[Buffer], start: int) -> tuple[int, int]:
        """Publish payloads[start:] in C while it can (see `atomics.publish_many`): the
        index of the first one not published and the last ordinal published (0: none).
        A slot it claimed but left to Python (its old message's retirement is unreported)
        is reported here and stays claimed for the next get_buffer."""
        buffer = self._buffer
        done, claimed, waiting, ordinal = _publish_many(
            self._ccb, self._num_slots, self._owner, self.reliable, buffer.view,
            buffer.slot_size, buffer.index, payloads, start,
        )  # fmt: skip
        self.published += done - start
        if waiting:
            self._triggers.wake_subscribers()
        if claimed >= 0:
            self._slot = claimed
            self._triggers.retire_replaced(claimed)
        return done, ordinal

    def publish_bytes(
        self,
        data: bytes | bytearray | memoryview,
        *,
        metadata: bytes | bytearray | memoryview = b"",
    ) -> int | None:
        """Copy `data` into a slot and publish it with `metadata`: its ordinal, or None
        when a reliable publisher has no slot. Raises as get_buffer and publish do."""
        self._check_open()
        if self._plain and self._slot is None and not _nbytes(metadata):
            done, ordinal = self._publish_plain((data,), 0)
            if done:
                return ordinal
        self.check_metadata(metadata)
        view = self.get_buffer(len(data))
        if view is None:
            return None
        view[:] = data
        return self.publish(len(data), metadata=metadata)

    def publish_many(self, payloads: Iterable[bytes | bytearray | memoryview]) -> int:
        """Publish each payload in turn, as `publish_bytes` without metadata would: how
        many were published from the start. Fewer than all only when a reliable
        publisher runs out of slots: `wait()`, then publish the rest. Subscribers that
        wait are woken once the batch is published (or stops), not once per message, so
        that a reader faster than the publisher does not sleep and wake for each.
        Raises as publish_bytes does, for the first payload it cannot publish (those
        before it are published)."""
        items = payloads if isinstance(payloads, list | tuple) else list(payloads)
        self._check_open()
        done = 0
        while done < len(items):
            if self._plain and self._slot is None:
                after, _ = self._publish_plain(items, done)
                if after > done:
                    done = after
                    continue
            # The C path stopped before this payload (no free slot, a size that needs a
            # larger buffer or is refused, a slot to report first): the general path.
            if self.publish_bytes(items[done]) is None:
                break
            done += 1
        return done

    def retirement_fileno(self) -> int:
        """The read end of the retirement pipe, to poll (readable: `retired()` has more)."""
        if self._retirement is None:
            raise BusConfigError(f"publisher {self.publisher_id} did not ask for retirement")
        return self._retirement

    def retired(self) -> list[tuple[int, int]]:
        """The (slot, ordinal) of each message retired since the last call, in the order
        they retired."""
        if self._retirement is None:
            raise BusConfigError(f"publisher {self.publisher_id} did not ask for retirement")
        return retirement.read_records(self._retirement)

    def fileno(self) -> int:
        """The eventfd to poll for a free slot (reliable publishers). From the first call
        on, a `get_buffer` that returns None also asks to be woken through it."""
        self._require_waitable()
        assert self._eventfd is not None
        self._polled = True
        return self._eventfd

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until a slot can be claimed (and claim it) or `timeout_s` passes;
        whether one was. Raises BusUsageError for an unreliable publisher."""
        self._require_waitable()
        assert self._eventfd is not None
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        waiter = self._waiter
        if waiter is None or waiter.fd != self._eventfd:
            waiter = self._waiter = FdWaiter(self._eventfd)
        try:
            while True:
                if self._slot is not None or self._try_claim():
                    return True
                left = remaining(deadline)
                if left == 0.0:
                    return False
                waiter.wait(left)
        finally:
            self._waiting.disarm()

    async def wait_async(self) -> None:
        """Wait on the running loop until a slot is claimed (wrap in asyncio.timeout for
        a deadline). Raises BusUsageError for an unreliable publisher."""
        self._require_waitable()
        assert self._eventfd is not None
        try:
            while not (self._slot is not None or self._try_claim()):
                await readable(self._eventfd)
        finally:
            self._waiting.disarm()

    def _try_claim(self) -> bool:
        assert self._eventfd is not None
        drain(self._eventfd)
        self._waiting.arm()
        self._check_open()
        slot = _claim(
            self._ccb, memory.CCB_SLOTS, self._num_slots, self._owner, self._unread_mask()
        )
        if slot < 0:
            return False
        self._slot = slot
        # The message this slot held may have retired unreported (its last releaser saw
        # the slot claimed already, or an unreliable publisher took a slot still unread).
        self._triggers.retire_replaced(slot)
        return True

    def _require_waitable(self) -> None:
        if not self.reliable:
            raise BusUsageError(
                "only a reliable publisher waits: an unreliable one always gets a slot"
            )
        if self._eventfd is None:
            raise BusUsageError("this publisher was made without an eventfd to wait on")

    def _check_open(self) -> None:
        if self.closed:
            raise BusClosedError(f"publisher {self.publisher_id} is closed")

    def close(self) -> None:
        """Give back a slot claimed but not published (as never published) and stop."""
        if self.closed:
            return
        if self._view is not None:
            self._view.release()
            self._view = None
        if self._slot is not None:
            line = memory.slot_offset(self._slot)
            _store(self._ccb, line + memory.SLOT_UNREAD, 0)
            _store(self._ccb, line + memory.SLOT_SEQ, 0)
            self._slot = None
        self._waiting.disarm()
        self.closed = True

    def __repr__(self) -> str:
        kind = "reliable" if self.reliable else "unreliable"
        state = "closed" if self.closed else f"slot={self._slot}"
        return (
            f"<Publisher {self.publisher_id} {kind} channel={self.channel.name!r} {state} "
            f"published={self.published}>"
        )
