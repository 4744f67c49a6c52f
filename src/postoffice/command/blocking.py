"""BLPOP and BRPOP: a pop that waits for a push, and the server's blocked clients.

Part of the command server. The connection blocks; a list push signals; each blocked
client is served in the order it blocked, through the keyspace's Op like any LPOP.
"""

# Design
# ------
# A blocked client is a Waiter, queued under each key it waits on (FIFO per key). It is
# in one of three states:
#
#   WAITING    nothing to pop when it last looked; a push on one of its keys (`signal`)
#              makes it look again
#   LOOKING    its pop Op is under way (remote: the store has not answered yet); a
#              signal meanwhile is remembered, so the look is repeated if it finds nothing
#   DONE       it popped, failed, timed out or its connection closed; it is off every queue
#
# A look is an Op over the waiter's keys, popping from the first non-empty list; its
# compute pops nothing once the waiter is DONE (its client gone or timed out while the
# store was read), so no item is taken for a client that will not get it. A signal looks
# for every waiter on the key, in the order they blocked: embedded, each look finishes at
# once and the first that finds nothing ends the round; remote, the looks enter the
# keyspace's gate in that order, so the store answers them in that order too. A timeout
# that comes while a look is under way waits for it: the look's item, if any, is sent.

from __future__ import annotations

import collections
import enum
import math
from collections.abc import Callable, Sequence
from typing import Final, Protocol, final

from postoffice.command.errors import CommandError, WrongTypeError
from postoffice.command.keyspace import (
    Answer,
    Deferred,
    Durable,
    Keyspace,
    KeyspaceClient,
    KeyspaceServer,
    keyspace_of,
    settle,
)
from postoffice.command.layout import LIST
from postoffice.command.lists import decode_items, encode_items
from postoffice.command.ops import WRONG_TYPE, Drop, Entry, Op, Outcome, SetValue
from postoffice.core.resp import Array, Bulk, Error, Reply

#: Clients blocked at once in one server process: each holds a Waiter and a place in a
#: queue per key; past this BLPOP answers an error instead of blocking.
MAX_BLOCKED_CLIENTS: Final = 10_000
#: The longest timeout accepted, in seconds: Redis's bound (the deadline in unix ms must
#: fit a signed 64-bit integer), taken from the year 2100 on; 0 means no timeout.
MAX_TIMEOUT_S: Final = float((2**63 - 1) // 1000 - 4_102_444_800)
#: A timeout past this (ten years) sets no timer: the client waits as with 0.
LONGEST_TIMER_S: Final = 10 * 365 * 86400.0
#: Under --workers a push through another worker signals nothing here, so each blocked
#: client looks again this often (one Op on its keys each time).
WORKERS_POLL_S: Final = 0.1
#: What a pop that found nothing (BLPOP timing out, or inside MULTI) answers.
NIL_ARRAY: Final = Array(items=None)


class Timer(Protocol):
    """A scheduled callback that can be called off (asyncio.TimerHandle)."""

    def cancel(self) -> None: ...


#: Runs a callback in so many seconds (the loop's call_later).
Schedule = Callable[[float, Callable[[], None]], Timer]
#: Hands a blocked client its answer (the connection goes on with what it read meanwhile).
Deliver = Callable[[Answer], None]


def parse_timeout(raw: bytes) -> float:
    """BLPOP's last argument: seconds (a decimal), 0 for none; CommandError otherwise."""
    try:
        timeout = float(raw)
    except ValueError:
        raise CommandError("timeout is not a float or out of range") from None
    if math.isnan(timeout) or math.isinf(timeout):
        raise CommandError("timeout is not a float or out of range")
    if timeout < 0:
        raise CommandError("timeout is negative")
    if timeout > MAX_TIMEOUT_S:
        raise CommandError("timeout is out of range")
    return timeout


def pop_op(db: int, keys: Sequence[bytes], *, left: bool, live: Callable[[], bool]) -> Op:
    """The Op of one look: pop an item from the first of `keys` holding a non-empty list,
    answering [key, item], or the nil array; WRONGTYPE for a key of another kind met
    first. Pops nothing once `live()` is False."""

    def compute(entries: Sequence[Entry | None], now: int) -> Outcome:
        if not live():
            return Outcome(reply=NIL_ARRAY)
        for key, entry in zip(keys, entries, strict=True):
            if entry is None:
                continue
            if entry.kind != LIST:
                raise WrongTypeError(WRONG_TYPE)
            items = decode_items(entry.value)
            if not items:
                continue
            item, rest = (items[0], items[1:]) if left else (items[-1], items[:-1])
            write = (
                SetValue(
                    db=db, key=key, value=encode_items(rest), expire_at=entry.expire_at, kind=LIST
                )
                if rest
                else Drop(db=db, key=key)
            )
            return Outcome(reply=Array(items=(Bulk(key), Bulk(item))), writes=(write,))
        return Outcome(reply=NIL_ARRAY)

    return Op(reads=tuple((db, key) for key in keys), compute=compute, any_kind=True)


def _pop_now(
    server: KeyspaceServer, client: KeyspaceClient, args: list[bytes], *, left: bool
) -> Answer:
    parse_timeout(args[-1])  # checked as when it blocks
    op = pop_op(client.db, args[1:-1], left=left, live=lambda: True)
    return keyspace_of(server).run(op)


def cmd_blpop(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """BLPOP key [key ...] timeout, where it may not block (inside MULTI): pop from the
    head of the first non-empty list, [key, item], or the nil array at once."""
    return _pop_now(server, client, args, left=True)


def cmd_brpop(server: KeyspaceServer, client: KeyspaceClient, args: list[bytes]) -> Answer:
    """BRPOP key [key ...] timeout, where it may not block: as BLPOP, from the tail."""
    return _pop_now(server, client, args, left=False)


class _State(enum.Enum):
    WAITING = "waiting"
    LOOKING = "looking"
    DONE = "done"


@final
class Waiter:
    """One blocked client: its keys, its side, its state (see the module's design note)."""

    __slots__ = (
        "_again",
        "_blocked",
        "_deliver",
        "_expired",
        "_poll",
        "_timer",
        "db",
        "keys",
        "left",
        "result",
        "state",
    )

    def __init__(self, blocked: BlockedClients, db: int, keys: list[bytes], *, left: bool) -> None:
        self._blocked = blocked
        self.db = db
        self.keys = list(dict.fromkeys(keys))  # a key named twice waits once
        self.left = left
        self.state = _State.WAITING
        self._again = False  # a signal came while looking
        self._expired = False  # the timeout passed while looking
        self._deliver: Deliver | None = None  # None until `start` returned
        self._timer: Timer | None = None
        self._poll: Timer | None = None  # the next look of its own, under --workers
        #: The answer, once DONE before `start` returned (answered at once).
        self.result: Answer | None = None

    def __repr__(self) -> str:
        return f"<Waiter db={self.db} keys={len(self.keys)} {self.state.value}>"

    @property
    def done(self) -> bool:
        """Whether it popped, failed, timed out or was cancelled."""
        return self.state is _State.DONE

    def _live(self) -> bool:
        return self.state is not _State.DONE and not self._expired

    def look(self) -> None:
        """Look for an item now (or once the look under way ends)."""
        if self.state is _State.DONE:
            return
        if self.state is _State.LOOKING:
            self._again = True
            return
        self.state = _State.LOOKING
        self._again = False
        op = pop_op(self.db, self.keys, left=self.left, live=self._live)
        try:
            answer = self._blocked.keyspace().run(op)
        except CommandError as exc:  # WRONGTYPE, found on the spot (embedded)
            self._looked(Error(code=exc.wire_code, message=str(exc)), None)
            return
        if isinstance(answer, Deferred):
            deferred = answer
            deferred.future.add_done_callback(lambda _: self._looked(settle(deferred), None))
        elif isinstance(answer, Durable):
            self._looked(answer.reply, answer)
        else:
            self._looked(answer, None)

    def _looked(self, reply: Reply, durable: Durable | None) -> None:
        """A look ended with `reply` (`durable`: its write still to be synced)."""
        if self.state is not _State.LOOKING:
            return  # cancelled meanwhile: its compute popped nothing
        self.state = _State.WAITING
        if isinstance(reply, Error) or (isinstance(reply, Array) and reply.items is not None):
            self._finish(durable if durable is not None else reply)
        elif self._expired:
            self._finish(NIL_ARRAY)
        elif self._again:
            self.look()

    def expire(self) -> None:
        """Its timeout passed: answer the nil array (after a look under way, if any)."""
        self._timer = None
        if self.state is _State.WAITING:
            self._finish(NIL_ARRAY)
        elif self.state is _State.LOOKING:
            self._expired = True

    def cancel(self) -> None:
        """Its connection closed: leave every queue, answer nothing."""
        if self.state is not _State.DONE:
            self.state = _State.DONE
            self._leave()

    def _finish(self, answer: Answer) -> None:
        self.state = _State.DONE
        self._leave()
        if self._deliver is None:
            self.result = answer
        else:
            self._deliver(answer)

    def _leave(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._poll is not None:
            self._poll.cancel()
            self._poll = None
        self._blocked.remove(self)

    def start(self, timeout_s: float, deliver: Deliver) -> Answer | None:
        """The first look; its answer when it ended at once, else None: `deliver` gets it
        later (an item pushed, the timeout, an error)."""
        self.look()
        if self.state is _State.DONE:
            return self.result
        self._deliver = deliver
        if 0 < timeout_s <= LONGEST_TIMER_S:
            self._timer = self._blocked.schedule(timeout_s, self.expire)
        self._next_poll()
        return None

    def _next_poll(self) -> None:
        poll_s = self._blocked.poll_s
        if poll_s is not None and self.state is not _State.DONE:
            self._poll = self._blocked.schedule(poll_s, self._polled)

    def _polled(self) -> None:
        """Under --workers: look again, whatever was pushed through another worker."""
        self._poll = None
        self.look()
        self._next_poll()


@final
class BlockedClients:
    """The server's blocked clients, queued per (database, key) in the order they blocked."""

    def __init__(
        self, server: KeyspaceServer, schedule: Schedule, *, max_blocked: int = MAX_BLOCKED_CLIENTS
    ) -> None:
        self._server = server
        self.schedule = schedule
        self.max_blocked = max_blocked
        #: Seconds between a blocked client's own looks; None: only pushes here wake it
        #: (a server of one process sees every push).
        self.poll_s: float | None = None
        self._queues: dict[tuple[int, bytes], collections.deque[Waiter]] = {}
        self._waiters: set[Waiter] = set()

    def __repr__(self) -> str:
        return f"<BlockedClients clients={len(self._waiters)} keys={len(self._queues)}>"

    def __len__(self) -> int:
        return len(self._waiters)

    def keyspace(self) -> Keyspace:
        """The keyspace the looks run their Op on; CommandError when there is none."""
        return keyspace_of(self._server)

    def block(self, db: int, keys: list[bytes], *, left: bool) -> Waiter:
        """A new waiter, queued on its keys; CommandError past `max_blocked`."""
        if len(self._waiters) >= self.max_blocked:
            raise CommandError(
                f"blocked clients of {len(self._waiters) + 1} exceed limit {self.max_blocked}"
            )
        waiter = Waiter(self, db, keys, left=left)
        self._waiters.add(waiter)
        for key in waiter.keys:
            self._queues.setdefault((db, key), collections.deque()).append(waiter)
        return waiter

    def remove(self, waiter: Waiter) -> None:
        """Take `waiter` off every queue."""
        self._waiters.discard(waiter)
        for key in waiter.keys:
            queue = self._queues.get((waiter.db, key))
            if queue is None:
                continue
            try:
                queue.remove(waiter)
            except ValueError:
                pass
            if not queue:
                del self._queues[(waiter.db, key)]

    def waiting_on(self, db: int, key: bytes) -> int:
        """How many clients wait on `key` of `db`."""
        queue = self._queues.get((db, key))
        return 0 if queue is None else len(queue)

    def signal(self, db: int, keys: Sequence[bytes]) -> None:
        """`keys` of `db` may hold new items: their waiters look, in the order they blocked."""
        if not self._queues:
            return
        for key in keys:
            queue = self._queues.get((db, key))
            if queue is None:
                continue
            for waiter in list(queue):
                waiter.look()
                if waiter.state is _State.WAITING:
                    break  # it looked at once and found nothing: nor will those behind it

    def release_all(self) -> None:
        """Shutdown: every blocked client answered the nil array, as if it timed out."""
        for waiter in list(self._waiters):
            waiter.expire()


__all__ = [
    "MAX_BLOCKED_CLIENTS",
    "MAX_TIMEOUT_S",
    "NIL_ARRAY",
    "WORKERS_POLL_S",
    "BlockedClients",
    "Schedule",
    "Timer",
    "Waiter",
    "cmd_blpop",
    "cmd_brpop",
    "parse_timeout",
    "pop_op",
]
