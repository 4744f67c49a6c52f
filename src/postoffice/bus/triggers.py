"""Wake-ups between a channel's users: eventfds, and the waiting masks that say who sleeps.

A user about to sleep sets its bit in the channel's waiting mask, looks once more for
what it waits for, and only then blocks on its eventfd; whoever makes progress for it
(a publish, a release) takes the bits it can serve out of the mask and writes those
eventfds. docs/design/bus-memory.md gives the ordering that makes a lost wake-up
impossible.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import select
import time
from collections.abc import Callable
from typing import Final, final

from postoffice.bus import memory, retirement
from postoffice.bus.errors import BusConfigError, BusStorageError
from postoffice.bus.native import atomics
from postoffice.core.errors import translate_os_error

_load: Final = atomics.load_acquire_u64
_fetch_and: Final = atomics.fetch_and_u64
_fetch_or: Final = atomics.fetch_or_u64


def new_eventfd() -> int:
    """A non-blocking, close-on-exec eventfd (pass it to a child with pass_fds)."""
    try:
        return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    except OSError as exc:
        raise translate_os_error(exc, BusStorageError, "create an eventfd") from exc


def drain(fd: int) -> bool:
    """Reset an eventfd's counter; whether it had been written."""
    try:
        os.eventfd_read(fd)
    except BlockingIOError:
        return False
    return True


def poll_readable(fd: int, timeout_s: float | None) -> bool:
    """Block until `fd` is readable or `timeout_s` passes (None: forever)."""
    return FdWaiter(fd).wait(timeout_s)


@final
class FdWaiter:
    """Blocks until one fd is readable, with one `select.poll` object made once: a new one
    per sleep costs more than half a microsecond, on the path of every blocking read."""

    __slots__ = ("_poll", "fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    def wait(self, timeout_s: float | None) -> bool:
        """Whether `fd` became readable before `timeout_s` passed (None: wait forever)."""
        timeout_ms = None if timeout_s is None else max(0, int(timeout_s * 1000 + 0.999))
        return bool(self._poll.poll(timeout_ms))

    def __repr__(self) -> str:
        return f"<FdWaiter fd={self.fd}>"


def remaining(deadline: float | None) -> float | None:
    """Seconds left until `deadline` (time.monotonic), None for none."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


async def readable(fd: int) -> None:
    """Wait, on the running loop, until `fd` is readable."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def _bits(mask: int) -> list[int]:
    """The set bits' positions, lowest first: one step per set bit (a wake-up usually
    serves one), where a look at all 64 cost microseconds on every wake-up."""
    bits = []
    while mask:
        low = mask & -mask
        bits.append(low.bit_length() - 1)
        mask ^= low
    return bits


@final
class Triggers:
    """The eventfds of one channel's users that this process can wake, by user id.

    The server hands them out (a subscriber's to every publisher, a reliable publisher's
    to every subscriber) and updates them as users come and go. A waiting bit whose
    eventfd is not known here is left in the mask for a process that knows it. If
    `on_waiters` is set, it is called before any waiting bit is served (a client asks
    the server for the users now if they changed since it last asked: users that came,
    and ids that went and were given to others, whose old eventfds would wake nobody),
    and the bits it made known are served.
    """

    def __init__(self, ccb: mmap.mmap, on_waiters: Callable[[], None] | None = None) -> None:
        self._ccb = ccb
        self.on_waiters = on_waiters
        self._subscribers: dict[int, int] = {}
        self._publishers: dict[int, int] = {}
        self._subscriber_mask = 0
        self._publisher_mask = 0
        self._retirers: dict[int, int] = {}
        #: Retirements that could not be told (the publisher's pipe full or unknown here).
        self.retirements_lost = 0

    def set_subscriber(self, subscriber_id: int, fd: int) -> None:
        """Wake subscriber `subscriber_id` through `fd` from now on."""
        _check_id(subscriber_id)
        self._subscribers[subscriber_id] = fd
        self._subscriber_mask |= 1 << subscriber_id

    def remove_subscriber(self, subscriber_id: int) -> None:
        """Forget a subscriber's eventfd (the caller still owns and closes it)."""
        self._subscribers.pop(subscriber_id, None)
        self._subscriber_mask &= ~(1 << subscriber_id)

    def set_publisher(self, publisher_id: int, fd: int) -> None:
        """Wake reliable publisher `publisher_id` through `fd` from now on."""
        _check_id(publisher_id)
        self._publishers[publisher_id] = fd
        self._publisher_mask |= 1 << publisher_id

    def remove_publisher(self, publisher_id: int) -> None:
        """Forget a publisher's eventfd (the caller still owns and closes it)."""
        self._publishers.pop(publisher_id, None)
        self._publisher_mask &= ~(1 << publisher_id)

    def set_retirer(self, publisher_id: int, fd: int) -> None:
        """Tell publisher `publisher_id` of its retired messages through the write end
        `fd` of its retirement pipe from now on."""
        _check_id(publisher_id)
        self._retirers[publisher_id] = fd

    def remove_retirer(self, publisher_id: int) -> None:
        """Forget a publisher's retirement pipe (the caller still owns and closes it)."""
        self._retirers.pop(publisher_id, None)

    def retire(self, slot: int) -> bool:
        """After slot `slot` was let go: report its message if it just retired."""
        return self._report(slot, retirement.check(self._ccb, slot))

    def retire_all(self, num_slots: int) -> int:
        """After a cleanup or a skip that let many slots go: report every retired message."""
        return sum(self.retire(slot) for slot in range(num_slots))

    def retire_replaced(self, slot: int) -> bool:
        """After claiming slot `slot`: report the message it replaces if still unreported."""
        return self._report(slot, retirement.on_claim(self._ccb, slot))

    def _report(self, slot: int, found: tuple[int, int] | None) -> bool:
        if found is None:
            return False
        publisher, ordinal = found
        fd = self._retirers.get(publisher)
        if fd is None and self.on_waiters is not None:
            self.on_waiters()  # a publisher that came since this process last asked
            fd = self._retirers.get(publisher)
        if fd is None or not retirement.write(fd, slot, ordinal):
            self.retirements_lost += 1
            return False
        return True

    def wake_subscribers(self) -> int:
        """After a publish: wake every waiting subscriber known here; how many."""
        return self._wake(memory.CCB_SUBSCRIBERS_WAITING, subscribers=True)

    def wake_publishers(self) -> int:
        """After a release: wake every waiting reliable publisher known here; how many."""
        return self._wake(memory.CCB_PUBLISHERS_WAITING, subscribers=False)

    def _wake(self, offset: int, *, subscribers: bool) -> int:
        # A load first: the mask is almost always empty, and a load does not take the
        # cache line away from the sleepers the way an atomic write would.
        waiting = _load(self._ccb, offset)
        if not waiting:
            return 0
        if self.on_waiters is not None:
            # Not only for unknown bits: a known bit may be a reused id, whose eventfd
            # here is its previous owner's. The hook costs one load while nothing changed.
            self.on_waiters()
        known = self._subscriber_mask if subscribers else self._publisher_mask
        fds = self._subscribers if subscribers else self._publishers
        waiting &= known
        if not waiting:
            return 0
        taken = _fetch_and(self._ccb, offset, ~waiting & memory.ALL_BITS) & waiting
        users = _bits(taken)
        for user in users:
            try:
                os.eventfd_write(fds[user], 1)
            except BlockingIOError:
                pass  # the counter is at its maximum: a wake-up is pending anyway
            except OSError as exc:
                raise translate_os_error(exc, BusStorageError, f"wake user {user}") from exc
        return len(users)

    def __repr__(self) -> str:
        return (
            f"<Triggers subscribers={sorted(self._subscribers)} "
            f"publishers={sorted(self._publishers)}>"
        )


def _check_id(user_id: int) -> None:
    if not 0 <= user_id < memory.MAX_SUBSCRIBERS:
        raise BusConfigError(f"user id {user_id} outside 0..{memory.MAX_SUBSCRIBERS - 1}")


@final
class WaitBit:
    """One user's bit in a waiting mask: set before the last look, cleared after."""

    def __init__(self, ccb: mmap.mmap, offset: int, user_id: int) -> None:
        self._ccb = ccb
        self._offset = offset
        self._bit = 1 << user_id

    def arm(self) -> None:
        """Say that this user is about to sleep (a waker now writes its eventfd)."""
        _fetch_or(self._ccb, self._offset, self._bit)

    def disarm(self) -> None:
        """Say that this user no longer sleeps."""
        _fetch_and(self._ccb, self._offset, ~self._bit & memory.ALL_BITS)

    def armed(self) -> bool:
        """Whether the bit is set (a waker has not taken it yet)."""
        return bool(_load(self._ccb, self._offset) & self._bit)
