"""Group commit: `Committer`, one thread that makes appended writes durable, and
`GroupCommit`, its event-loop half, used by the store server and the embedded keyspace."""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, final

from postoffice.core.errors import PostOfficeError
from postoffice.store.engine.engine import Store

# Design
# ------
# The event loop appends durable writes (write-behind), writes them to the file once per
# loop iteration and asks for the newest ticket with `request`; the thread fsyncs
# (`Store.sync`, which also writes anything the ticket needs that is still in memory)
# and hands the covered ticket back to the loop with `call_soon_threadsafe`. While it
# fsyncs, the loop goes on serving and appending; the thread then starts the next sync
# at once if more was asked for (it takes every ticket queued meanwhile and syncs for
# the newest). So under load there is one thread hop per fsync, not per request, and
# the fsync rate alone paces durable writes. A failed sync hands back its error with the
# ticket it was for: those writes are answered with it. A failed write or fsync rolls
# back every write not yet durable (engine.py), also ones appended after the ticket
# being synced, and also when it failed on the loop's write: so after each sync the
# committer asks the store which tickets were rolled back since the last one and hands
# them back first, each range with its error after the durable tickets before it.
# When tracing is on (`GroupCommit.observer`), the thread also reads the clock around
# each sync and hands the times back with it, so a span can show the fsync itself rather
# than the hops around it; off, it reads no clock.

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Called on the loop with (the newest ticket now durable or failed, the error or None,
#: and when the sync began and ended in time.time_ns(), both 0 unless the sync is timed).
Done = Callable[[int, BaseException | None, int, int], None]

#: What the committer runs to make every write up to a ticket durable: `Store.sync`.
Sync = Callable[[int], int]


@final
class Committer:
    """Runs `store.sync` on its own thread for the tickets the loop asks for."""

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop, done: Done) -> None:
        self._store = store
        self._loop = loop
        self._done = done
        # Tickets asked for, newest last; None asks the thread to end. A SimpleQueue (C
        # code, no Python-level condition) because the loop asks once per iteration.
        self._asks: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._wanted = 0  # the newest ticket asked for (written by the loop only)
        #: Read the clock around each sync (tracing is on); set before `start`.
        self.timed = False
        #: The sync the thread runs: `store.sync`, or a wrapper a test puts here to hold or
        #: fail syncs (replacing a method of the store would miss a compiled build).
        self.sync: Sync = store.sync
        self._thread = threading.Thread(target=self._run, name="store-commit", daemon=True)

    def __repr__(self) -> str:
        return f"<Committer wanted={self._wanted} alive={self._thread.is_alive()}>"

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def request(self, ticket: int) -> None:
        """Make every write up to `ticket` durable soon; `done` says when."""
        if ticket > self._wanted:
            self._wanted = ticket
            self._asks.put(ticket)

    def stop(self) -> None:
        """Finish what was asked for, then end the thread (waits for it)."""
        self._asks.put(None)
        self._thread.join()

    def _run(self) -> None:
        asks = self._asks
        finished = 0
        stopping = False
        while True:
            if stopping and asks.empty():
                return
            ask = asks.get()
            target = finished
            while True:  # everything asked for meanwhile: one sync for the newest
                if ask is None:
                    stopping = True
                elif ask > target:
                    target = ask
                if asks.empty():
                    break
                ask = asks.get()
            if target <= finished:
                continue
            error: BaseException | None = None
            began = time.time_ns() if self.timed else 0
            try:
                covered = self.sync(target)
            except Exception as exc:  # handed to the loop: those writes fail with it
                covered, error = target, exc
            ended = time.time_ns() if began else 0
            results: list[tuple[int, BaseException | None, int, int]] = []
            for lo, hi, failure in self._store.failures(finished, max(covered, target)):
                if lo > finished:
                    results.append((lo, None, began, ended))  # durable: the roll back stopped
                results.append((hi, failure, began, ended))
                finished = max(finished, hi)
            results.append((covered, error, began, ended))
            finished = max(finished, target)
            try:
                for done in results:
                    self._loop.call_soon_threadsafe(self._done, *done)
            except RuntimeError:  # the loop is gone: nobody is waiting any more
                log.debug("sync result dropped: event loop closed")
                return


class SyncObserver(Protocol):
    """Told of every sync on the loop, before the waiters (the store server's tracing)."""

    def fsynced(self, covered: int, error: BaseException | None, began: int, ended: int) -> None:
        """Writes up to ticket `covered` are durable (or failed with `error`); the sync ran
        from `began` to `ended` (time.time_ns())."""
        ...


class SyncWaiter(Protocol):
    """Something that owes replies to durable writes (a server's connection)."""

    def synced(self, covered: int, error: BaseException | None) -> bool:
        """Every write up to ticket `covered` is durable (or failed with `error`): send the
        replies owed up to it; return whether a later write is still owed."""
        ...


@final
class GroupCommit:
    """The loop's side of group commit: who waits for which ticket, and when to sync.

    A server that appends durable writes with write-behind calls `wait(waiter, ticket)` for
    each reply it holds back. At the end of the loop iteration (a `call_soon` from the
    first such call) everything appended so far goes to the file in one write(2) and the
    committer is asked to fsync up to the newest ticket; when it has, every waiter hears
    `synced(covered, error)` once. Writes appended meanwhile go to the next sync, which the
    committer starts at once. So one fsync answers every connection's writes of an
    iteration, and no reply claims more than the disk holds.

    With `fsync=False` (durability `interval` or `never`, where no reply waits for the
    disk) there is no committer: the waiters hear `synced` right after that one write, so
    an iteration's writes cost one write(2) instead of one each, and still no reply leaves
    before its record is in the file (a kill -9 then loses none of them).
    """

    def __init__(
        self, store: Store, loop: asyncio.AbstractEventLoop, *, fsync: bool = True
    ) -> None:
        self._store = store
        self._loop = loop
        self._waiters: dict[SyncWaiter, None] = {}
        self._last_ticket = 0
        self._due = False
        self._fsync = fsync
        self._committer: Committer | None = Committer(store, loop, self._synced) if fsync else None
        #: Told of each sync with its times (set before `start`; None: nobody, no clock).
        self.observer: SyncObserver | None = None

    def __repr__(self) -> str:
        return f"<GroupCommit waiters={len(self._waiters)} last={self._last_ticket}>"

    @property
    def committer(self) -> Committer | None:
        """The thread's half (its `sync` is the seam to hold syncs); None once stopped."""
        return self._committer

    def start(self) -> None:
        """Start the committer thread (none without fsync)."""
        if self._committer is not None:
            self._committer.timed = self.observer is not None
            self._committer.start()

    async def stop(self) -> None:
        """Finish the syncs asked for, then end the committer (off the loop)."""
        committer, self._committer = self._committer, None
        if committer is not None:
            await asyncio.to_thread(committer.stop)

    def wait(self, waiter: SyncWaiter, ticket: int) -> None:
        """`waiter` holds the reply of a durable write with `ticket`: sync it soon."""
        self._last_ticket = ticket
        self._waiters[waiter] = None
        if not self._due:
            self._due = True
            self._loop.call_soon(self._request)

    def _request(self) -> None:
        self._due = False
        if not self._fsync:
            self._write_only()
            return
        if self._committer is None:
            return
        # The iteration's appends go to the file in one write from here, and the committer
        # only fsyncs: it then never holds the log's lock through a write while this loop
        # waits for it to append. Should the write fail, the committer's sync writes again
        # and reports the error to the writes it covers.
        try:
            self._store.write_pending()
        except PostOfficeError as exc:
            log.warning("write of appended records failed error=%r", str(exc))
        self._committer.request(self._last_ticket)

    def _write_only(self) -> None:
        """Without fsync: write what was appended, then answer every waiter."""
        error: PostOfficeError | None = None
        try:
            self._store.write_pending()
        except PostOfficeError as exc:  # rolled back: these writes fail with it
            log.warning("write of appended records failed error=%r", str(exc))
            error = exc
        self._synced(self._last_ticket, error, 0, 0)

    def _synced(self, covered: int, error: BaseException | None, began: int, ended: int) -> None:
        if error is not None and not isinstance(error, PostOfficeError):
            log.error("fsync crashed", exc_info=error)
        if self.observer is not None:
            self.observer.fsynced(covered, error, began, ended)
        waiting, self._waiters = self._waiters, {}
        for waiter in waiting:
            if waiter.synced(covered, error):
                self._waiters[waiter] = None


#: One owed reply: the ticket of the write it acknowledges (0: none), the future it waits
#: for (None: none), and the item the connection makes its reply from.
Owed = tuple[int, "asyncio.Future[Any] | None", T]


@final
class OwedReplies(collections.deque[Owed[T]]):
    """The replies one connection still owes, in request order.

    A reply is owed for one of three reasons: it acknowledges a durable write whose fsync
    (its `ticket`) group commit has not covered yet; it waits for a `future` (a store
    server's answer); or it is ready, but a reply before it is not. `pop_ready` hands back
    the ready ones at the head, in order, and stops at the first that is not: replies
    never overtake one another. What an item is (wire bytes, a reply to encode) is the
    connection's business; this class only knows when each may leave. It is a deque, so
    `len` and truth, asked on every request, cost no Python call.
    """

    def __init__(self) -> None:
        super().__init__()
        self.covered = 0  # the newest ticket group commit reported (durable or failed)
        self.newest_ticket = 0  # the newest ticket owed

    def __repr__(self) -> str:
        return f"<OwedReplies owed={len(self)} covered={self.covered}>"

    def owe(self, item: T, *, ticket: int = 0, future: asyncio.Future[Any] | None = None) -> None:
        """Owe `item`, ready once `ticket` is covered (0: no write) and `future` is done."""
        if ticket:
            self.newest_ticket = ticket
        self.append((ticket, future, item))

    def synced(self, covered: int) -> None:
        """Group commit covered every ticket up to `covered`."""
        if covered > self.covered:
            self.covered = covered

    @property
    def waiting_for_sync(self) -> bool:
        """Whether a write owed here is not covered yet."""
        return self.newest_ticket > self.covered

    def head_future(self) -> asyncio.Future[Any] | None:
        """The future the oldest reply waits for, if that is what holds the queue up."""
        if self:
            _, future, _ = self[0]
            if future is not None and not future.done():
                return future
        return None

    def pop_ready(self, out: list[T]) -> None:
        """Move every ready reply at the head to `out`, in request order."""
        covered = self.covered
        while self:
            ticket, future, item = self[0]
            if ticket > covered or (future is not None and not future.done()):
                return
            self.popleft()
            out.append(item)
