"""A channel's subscriber: read messages in ordinal order, zero-copy, and count drops.

Part of the bus's channel library. A `Message`'s payload is a read-only view of the
shared buffer, valid until the message is released (or dropped); holding it keeps any
publisher from reusing its slot. The ordering argument is in docs/design/bus-memory.md.
"""

from __future__ import annotations

import operator
import time
import weakref
from collections.abc import Callable
from itertools import repeat
from typing import Final, final

from postoffice.bus import memory
from postoffice.bus.channel import Channel, ChecksumFunction, MappedBuffer, crc32_checksum
from postoffice.bus.errors import BusClosedError, ChecksumError
from postoffice.bus.native import atomics
from postoffice.bus.triggers import (
    FdWaiter,
    Triggers,
    WaitBit,
    drain,
    readable,
    remaining,
)

_fetch_add: Final = atomics.fetch_add_u64
_next: Final = atomics.next_message
_take: Final = atomics.take
_release_slots: Final = atomics.release_slots
_unpack_fields: Final = memory.SLOT_FIELDS.unpack_from
_FOUND: Final = atomics.SCAN_FOUND
_SLOTS: Final = memory.CCB_SLOTS
_CHECKSUM: Final = memory.SLOT_FLAG_CHECKSUM
_ACTIVATION: Final = memory.SLOT_FLAG_ACTIVATION
_SPECIAL: Final = _CHECKSUM | _ACTIVATION
_slot_of: Final = operator.itemgetter(0)

#: A held message's slot fields, as `atomics.take` gives them: slot, ordinal, size,
#: metadata size, timestamp, buffer index, vchan id, vchan ordinal, flags, checksum.
_Fields = tuple[int, int, int, int, int, int, int, int, int, int]

#: Told how many messages were dropped before the one being read.
DropCallback = Callable[[int], None]


def _released_view() -> memoryview:
    view = memoryview(b"")
    view.release()
    return view


@final
class Message:
    """One message held by a subscriber. `data` is a read-only view of the payload in
    shared memory and `metadata` one of its metadata (empty when it has none), both
    valid until `release()` (or until the Message is garbage): keep no slice of them
    past that, since the slot is then reused. Both views are made on first use (a
    message whose payload is never looked at costs no view)."""

    # The fields stay the tuple the read got from C: making a Message costs five stores,
    # and each field is read through a property only when asked for.
    __slots__ = (
        "__weakref__",
        "_data",
        "_fields",
        "_mapped",
        "_metadata",
        "_subscriber",
        "released",
    )

    def __init__(self, subscriber: Subscriber, mapped: MappedBuffer, fields: _Fields) -> None:
        self._subscriber = subscriber
        self._mapped = mapped
        self._fields = fields
        self._data: memoryview | None = None
        self._metadata: memoryview | None = None
        self.released = False

    @property
    def slot(self) -> int:
        """The slot holding the message."""
        return self._fields[0]

    @property
    def ordinal(self) -> int:
        """The message's ordinal (its vchan ordinal for a subscriber of one vchan)."""
        return self._fields[1]

    @property
    def size(self) -> int:
        """The payload's length in bytes."""
        return self._fields[2]

    @property
    def timestamp_ns(self) -> int:
        """When it was published: CLOCK_MONOTONIC, in ns (what `find` looks for)."""
        return self._fields[4]

    @property
    def buffer_index(self) -> int:
        """The channel buffer holding the payload."""
        return self._fields[5]

    @property
    def vchan_id(self) -> int:
        """The message's virtual channel (NO_VCHAN: none)."""
        return self._fields[6]

    @property
    def vchan_ordinal(self) -> int:
        """The message's ordinal on its virtual channel (0: none)."""
        return self._fields[7]

    @property
    def activation(self) -> bool:
        """Whether it is an activation message: a publisher joined (no payload)."""
        return bool(self._fields[8] & _ACTIVATION)

    @property
    def data(self) -> memoryview:
        """The payload, read-only (a released view once the message is released)."""
        view = self._data
        if view is None:
            if self.released:
                view = _released_view()
            else:
                fields = self._fields
                start = fields[0] * self._mapped.slot_size
                view = self._mapped.readonly[start : start + fields[2]]
            self._data = view
        return view

    @property
    def metadata(self) -> memoryview:
        """The metadata, read-only (a released view once the message is released)."""
        view = self._metadata
        if view is None:
            if self.released:
                view = _released_view()
            else:
                channel = self._subscriber.channel
                size = min(self._fields[3], channel.metadata_bytes)
                view = channel.metadata(self._fields[0], size)
            self._metadata = view
        return view

    def _forget(self) -> None:
        """Mark released and release the views; the caller lets the slot go."""
        self.released = True
        if self._data is not None:
            self._data.release()
        if self._metadata is not None:
            self._metadata.release()

    def release(self) -> None:
        """Let the slot go (once): the views are released, and a reliable publisher that
        waits for a slot is woken."""
        if self.released:
            return
        self._forget()
        self._subscriber._let_go(self.slot)

    def __enter__(self) -> Message:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"<Message ordinal={self.ordinal} size={self.size} slot={self.slot} {state}>"


@final
class Subscriber:
    """Reads one channel as user `subscriber_id` (registered with
    `Channel.add_subscriber`, which fixes whether it is reliable and how many messages it
    may hold). Messages come in ordinal order; an ordinal skipped because its slot was
    reused is a drop, counted in `drops` and the channel's statistics, and told to
    `on_drop`. `eventfd` is written by publishers when this subscriber waits.

    A message that fails its checksum (`checksum`, CRC-32 by default, as its publisher
    computed it) is passed over: the read raises ChecksumError, or with
    `drop_bad_checksums` it is counted as a drop (and in `bad_checksums`) and the read
    goes on to the next message. Activation messages (a publisher saying it joined) are
    passed over too, without counting, unless `pass_activations`.

    A subscriber of a virtual channel (registered so; `vchan_id`) reads only that
    vchan's messages of its mux, in the vchan's own ordinals (`last_ordinal`, drops and
    `Message.ordinal` are in those); a subscriber of the mux itself reads them all.
    """

    def __init__(
        self,
        channel: Channel,
        subscriber_id: int,
        *,
        triggers: Triggers,
        eventfd: int,
        on_drop: DropCallback | None = None,
        checksum: ChecksumFunction = crc32_checksum,
        drop_bad_checksums: bool = False,
        pass_activations: bool = False,
        on_replaced: Callable[[], None] | None = None,
    ) -> None:
        channel.check_subscriber(subscriber_id)
        self.channel = channel
        self.subscriber_id = subscriber_id
        #: Called when this subscriber's placeholder channel got new files (the client
        #: asks the server for them and calls `rebind`).
        self.on_replaced = on_replaced
        self.reliable = channel.is_reliable_subscriber(subscriber_id)
        self.max_active_messages = channel.max_active_messages(subscriber_id)
        self._triggers = triggers
        self._eventfd = eventfd
        self._waiter: FdWaiter | None = None  # made by the first wait()
        self._on_drop = on_drop
        self._checksum = checksum
        self.drop_bad_checksums = drop_bad_checksums
        self.pass_activations = pass_activations
        self._ccb = channel.ccb
        self._num_slots = channel.num_slots
        self._placeholder = channel.placeholder
        #: The vchan this subscriber reads (NO_VCHAN: every message of the channel).
        self.vchan_id = channel.subscriber_vchan(subscriber_id)
        self._vchan = self.vchan_id
        self._pending = (
            memory.CCB_PENDING if self._vchan == memory.NO_VCHAN else memory.CCB_PENDING_VCHAN
        )
        self._waiting = WaitBit(channel.ccb, memory.CCB_SUBSCRIBERS_WAITING, subscriber_id)
        #: The ordinal last read (0: none yet; the first read takes the oldest there is).
        self.last_ordinal = 0
        self._started = False
        #: Where the next message probably is: the slot after the last one read.
        self._hint = -1
        self._held: dict[int, weakref.ref[Message]] = {}
        #: The slots of `_held` by their weak references' ids, made when a held Message
        #: first becomes garbage (a dropped batch makes one callback per message) and
        #: dropped whenever `_held` gains an entry.
        self._slots_by_ref: dict[int, int] | None = None
        self._polled = False
        self.closed = False
        self.drops = 0
        self.bad_checksums = 0
        self.received = 0

    def rebind(self, channel: Channel, triggers: Triggers) -> None:
        """Move to `channel`, the new files of this subscriber's placeholder channel, where
        the server registered it again under the same id. A placeholder never carried a
        message, so nothing is held and the read position starts afresh. Raises
        BusConfigError if the subscriber is not registered there."""
        channel.check_subscriber(self.subscriber_id)
        self.release_all()
        self._waiting.disarm()
        self.channel = channel
        self._triggers = triggers
        self._ccb = channel.ccb
        self._num_slots = channel.num_slots
        self._placeholder = channel.placeholder
        self._waiting = WaitBit(channel.ccb, memory.CCB_SUBSCRIBERS_WAITING, self.subscriber_id)
        self.last_ordinal = 0
        self._started = False
        self._hint = -1

    def _moved(self) -> bool:
        """While on a placeholder: whether it got new files, and then rebind (through
        on_replaced); whether this subscriber moved."""
        if not self._placeholder or self.on_replaced is None or not self.channel.replaced():
            return False
        old = self.channel
        self.on_replaced()
        return self.channel is not old

    # -- reading ---------------------------------------------------------------------------

    def read(self, *, newest: bool = False) -> Message | None:
        """The next message after the last one read, or with `newest` the newest one
        (skipping the others on purpose: no drop is counted); None when there is none
        yet. At its max_active_messages, the subscriber first releases the oldest message
        it holds. Raises ChecksumError for a payload that fails its checksum."""
        self._check_open()
        if len(self._held) >= self.max_active_messages:
            self._release_oldest()
        # Each pass either returns or passes over one message (a bad checksum, an
        # activation), and the slots hold at most num_slots of those: bounded.
        for _ in range(self._num_slots + 1):
            if newest:
                slot, ordinal = self._newest()
                if slot < 0 and self._ask_to_be_woken():
                    slot, ordinal = self._newest()
                if slot < 0:
                    return None
                message = self._wrap(self._fields(slot, ordinal), skipping=True)
            else:
                batch = self._take(1)[0]
                if not batch and self._moved():
                    batch = self._take(1)[0]
                if not batch and self._ask_to_be_woken():
                    batch = self._take(1)[0]
                if not batch:
                    return None
                message = self._wrap(batch[0])
            if message is not None:
                return message
            newest = False
        return None

    def _ask_to_be_woken(self) -> bool:
        """Polled from outside (fileno()), a read that finds nothing sets the waiting bit
        before the caller's last look, so a publish after that look wakes the poller."""
        if not self._polled:
            return False
        drain(self._eventfd)
        self._waiting.arm()
        return True

    def _newest(self) -> tuple[int, int]:
        found = atomics.newest_message(
            self._ccb, _SLOTS, self._num_slots, self.last_ordinal,
            self.subscriber_id, self.reliable, self._vchan,
        )  # fmt: skip
        if self.reliable:
            # The skipped messages were marked read: their slots may be free for a
            # reliable publisher now, and their messages retired.
            self._triggers.retire_all(self._num_slots)
            self._triggers.wake_publishers()
        return found

    def _fields(self, slot: int, ordinal: int) -> _Fields:
        """The fields of a slot this subscriber holds (stable under the hold)."""
        return (
            slot,
            ordinal,
            *_unpack_fields(self._ccb, memory.slot_offset(slot) + memory.SLOT_SIZE),
        )

    def _take(self, count: int) -> tuple[list[_Fields], int]:
        """Up to `count` messages after the last one read, held, with their fields, and
        their buffer if they are alike (`atomics.take`'s `uniform`)."""
        _, batch, uniform = _take(
            self._ccb, _SLOTS, self._num_slots, self._pending, self.last_ordinal,
            self.subscriber_id, self.reliable, count, self._vchan,
            memory.CCB_PUBLISHER_VCHANS, self._hint,
        )  # fmt: skip
        return batch, uniform

    def _scan(self) -> int:
        """Whether a message is ready (a look, no hold): the scan's status."""
        return _next(
            self._ccb, _SLOTS, self._num_slots, self._pending, self.last_ordinal, -1,
            self.reliable, self._vchan, memory.CCB_PUBLISHER_VCHANS, self._hint,
        )[0]  # fmt: skip

    def read_all(self) -> list[Message]:
        """Release every message held, then return the messages ready after the last one
        read, in order, up to max_active_messages of them (one call into C)."""
        self._check_open()
        self.release_all()
        batch, uniform = self._take(self.max_active_messages)
        if uniform >= 0 and self._started and batch[0][1] == self.last_ordinal + 1:
            return self._wrap_alike(batch, uniform)
        messages: list[Message] = []
        try:
            for position, fields in enumerate(batch):
                try:
                    message = self._wrap(fields)
                except BaseException:
                    self._let_go_all([later[0] for later in batch[position + 1 :]])
                    raise
                if message is not None:
                    messages.append(message)
        except BaseException:
            for message in messages:
                message.release()
            raise
        return messages

    def _wrap_alike(self, batch: list[_Fields], index: int) -> list[Message]:
        """Wrap the common batch: the next ordinals, all in buffer `index`, with no
        checksum or activation to look at and no drop to count. Wrapped in C's loops
        (map): a Python loop per message cost as much as the rest of the read."""
        try:
            mapped = self.channel.buffer(index)
        except BaseException:
            self._let_go_all([fields[0] for fields in batch])
            raise
        messages = list(map(Message, repeat(self), repeat(mapped), batch))
        refs = map(weakref.ref, messages, repeat(self._collected))
        self._held.update(zip(map(_slot_of, batch), refs, strict=True))
        self._slots_by_ref = None
        self.received += len(messages)
        self.last_ordinal = batch[-1][1]
        self._hint = (batch[-1][0] + 1) % self._num_slots
        return messages

    def find(self, timestamp_ns: int) -> Message | None:
        """The message stamped exactly `timestamp_ns` (a Message's `timestamp_ns`), if it
        is still in the channel; the read position does not move."""
        self._check_open()
        if len(self._held) >= self.max_active_messages:
            self._release_oldest()
        slot, ordinal = atomics.find_timestamp(
            self._ccb, _SLOTS, self._num_slots, timestamp_ns, self.subscriber_id,
            self._vchan,
        )  # fmt: skip
        if slot < 0:
            return None
        return self._wrap(self._fields(slot, ordinal), advance=False)

    def _wrap(
        self, fields: _Fields, *, advance: bool = True, skipping: bool = False
    ) -> Message | None:
        """Wrap a slot this subscriber holds; its fields are stable under the hold. A
        message that fails its checksum is let go and passed over: ChecksumError, or
        None when such messages are counted as drops. An activation message the
        subscriber does not want is let go and passed over: None."""
        slot, ordinal, _, _, _, index, _, _, flags, checksum = fields
        message = None
        try:
            message = Message(self, self.channel.buffer(index), fields)
            intact = not flags & _CHECKSUM or (
                self._checksum(message.metadata, message.data) & 0xFFFF_FFFF == checksum
            )
        except BaseException:
            if message is not None:
                message._forget()
            self._let_go(slot)
            raise
        if advance:
            if self._started and not skipping and ordinal > self.last_ordinal + 1:
                self._dropped(ordinal - self.last_ordinal - 1)
            self._started = True
            self.last_ordinal = ordinal
            self._hint = (slot + 1) % self._num_slots
        if flags & _SPECIAL and not (intact and (self.pass_activations or not message.activation)):
            message._forget()
            self._let_go(slot)
            if intact:
                return None  # an activation nobody asked to see
            if not self.drop_bad_checksums:
                raise ChecksumError(
                    f"message {ordinal} of channel {self.channel.name!r} fails its checksum"
                )
            if advance:
                self.bad_checksums += 1
                self._dropped(1)
            return None
        self._held[slot] = weakref.ref(message, self._collected)
        self._slots_by_ref = None
        self.received += 1
        return message

    def _collected(self, ref: weakref.ref[Message]) -> None:
        """A Message still held became garbage: let its slot go. The slot is found
        through `_slots_by_ref`, so a dropped batch costs one pass, not one per message."""
        index = self._slots_by_ref
        if index is None:
            index = self._slots_by_ref = {id(held): slot for slot, held in self._held.items()}
        slot = index.pop(id(ref), None)
        if slot is None or self._held.get(slot) is not ref:
            return  # let go already (the id may be a reference made since: not ours)
        del self._held[slot]
        self._let_go_all((slot,))

    def _dropped(self, count: int) -> None:
        self.drops += count
        _fetch_add(self._ccb, memory.CCB_DROPS, count)
        if self._on_drop is not None:
            self._on_drop(count)

    # -- holding ---------------------------------------------------------------------------

    @property
    def held(self) -> int:
        """How many messages this subscriber holds."""
        return len(self._held)

    def _let_go(self, slot: int) -> None:
        self._held.pop(slot, None)
        self._let_go_all((slot,))

    def _let_go_all(self, slots: list[int] | tuple[int, ...]) -> None:
        """Let slots go in one C call, then report their messages that retired and wake
        the reliable publishers that wait (the caller took them out of `_held`)."""
        if self.channel.closed or not slots:
            return
        waiting, retiring = _release_slots(
            self._ccb, _SLOTS, self._num_slots, self.subscriber_id, slots
        )
        for slot in retiring:
            self._triggers.retire(slot)
        if waiting:
            self._triggers.wake_publishers()

    def _release_oldest(self) -> None:
        slot, ref = next(iter(self._held.items()))
        message = ref()
        if message is not None:
            message.release()
        else:
            self._let_go(slot)

    def release_all(self) -> None:
        """Release every message this subscriber holds (the slots in one C call)."""
        held = self._held
        if not held:
            return
        self._held = {}
        self._slots_by_ref = None
        try:
            for ref in held.values():
                message = ref()
                if message is not None and not message.released:
                    message.released = True
                    if message._data is not None or message._metadata is not None:
                        message._forget()
        finally:
            self._let_go_all(list(held))

    # -- waiting ---------------------------------------------------------------------------

    def ready(self) -> bool:
        """Whether a message is ready to read (a look, no hold)."""
        if self._scan() == _FOUND:
            return True
        return self._moved() and self._scan() == _FOUND

    def fileno(self) -> int:
        """The eventfd to poll for messages. From the first call on, a `read()` that
        finds nothing also asks to be woken through it, so a loop that polls it and
        then reads until None never misses a message."""
        self._polled = True
        return self._eventfd

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until a message is ready or `timeout_s` passes; whether one is."""
        self._check_open()
        if self.ready():  # the common case of a busy channel: no wake-up to arrange
            return True
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        waiter = self._waiter
        if waiter is None or waiter.fd != self._eventfd:
            waiter = self._waiter = FdWaiter(self._eventfd)
        try:
            while True:
                armed = self._waiting
                armed.arm()
                if self.ready():
                    return True
                if armed is not self._waiting:
                    continue  # moved to a placeholder's new files: arm there
                left = remaining(deadline)
                if left == 0.0:
                    return False
                # A wake-up is written only while the bit is armed; a count left from an
                # earlier one just makes this poll return at once and the loop look again.
                if waiter.wait(left):
                    drain(self._eventfd)
        finally:
            if not self._polled:
                self._waiting.disarm()

    async def wait_async(self) -> None:
        """Wait on the running loop until a message is ready (wrap in asyncio.timeout
        for a deadline)."""
        self._check_open()
        try:
            while True:
                drain(self._eventfd)
                armed = self._waiting
                armed.arm()
                if self.ready():
                    return
                if armed is not self._waiting:
                    continue  # moved to a placeholder's new files: arm there
                await readable(self._eventfd)
        finally:
            if not self._polled:
                self._waiting.disarm()

    # -- lifecycle -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise BusClosedError(f"subscriber {self.subscriber_id} is closed")
        if self.channel.closed:
            raise BusClosedError(f"channel {self.channel.name!r} is closed")

    def close(self) -> None:
        """Release every message held and stop waking (the registration stays: the
        server removes it)."""
        if self.closed:
            return
        self.release_all()
        self._waiting.disarm()
        self.closed = True

    def __repr__(self) -> str:
        kind = "reliable" if self.reliable else "unreliable"
        state = "closed" if self.closed else f"last={self.last_ordinal} held={self.held}"
        return (
            f"<Subscriber {self.subscriber_id} {kind} channel={self.channel.name!r} {state} "
            f"drops={self.drops}>"
        )
