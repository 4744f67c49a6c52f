"""StorePool: the command server's N pipelined connections to one store server.

The remote keyspace sends through it as through one `store.AsyncClient`; each slot is
kept open by its own reconnect loop with backoff.
"""

# Design
#
# Order. A store connection answers in request order, so two requests for one key keep
# their order when they share a connection: a request naming one key goes to the slot of
# the key's hash, always the same one. There is no failover to another slot: while a
# slot reconnects its keys fail at once (BrokenError, -TRYAGAIN for the client), because
# sending them elsewhere would let a later request for a key overtake an earlier one
# still in flight on the other slot once the first heals.
#
# A request that spans slots (a BATCH whose keys hash apart) or names no key (SCAN,
# STATS) is a barrier: it waits until every slot has answered what was sent before it,
# goes alone, and the requests after it wait (queued, in order) until it is answered.
# That keeps a pipelined `MSET a 1 b 2` then `GET b` ordered, at the price of a stall
# of all the connections for one round trip; with one slot there is never a barrier.
#
# Each slot remembers its last request's future: the store answers in order, so when
# that one is done every earlier one on the slot is done too (the drain a barrier waits
# for, without a callback per request on the hot path).

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, Protocol, final

from postoffice.core.errors import BrokenError
from postoffice.core.runtime import Backoff
from postoffice.store import (
    AsyncClient,
    BatchRequest,
    DeleteRequest,
    GetRequest,
    PutRequest,
    Request,
    Response,
)

log = logging.getLogger(__name__)

#: The most store connections one command server (or worker) keeps: each costs the store
#: server a connection slot and this process a socket.
MAX_STORE_CONNECTIONS: Final = 64

#: The keys of `StorePool.stats` that only grow (the others are gauges).
STORE_COUNTERS: Final = frozenset({"store_reconnects", "store_barriers"})


class StoreLink(Protocol):
    """What the pool needs of one store connection (`store.AsyncClient` has it)."""

    closed: asyncio.Future[None]

    @property
    def is_open(self) -> bool: ...

    def submit(self, request: Request) -> asyncio.Future[Response]: ...

    def submit_get(self, key: bytes) -> asyncio.Future[Response]: ...

    def submit_put(self, key: bytes, value: bytes) -> asyncio.Future[Response]: ...

    async def close(self) -> None: ...


#: Opens one connection to (host, port); raises BrokenError when it cannot.
Connect = Callable[[str, int], Awaitable[StoreLink]]


async def _connect(host: str, port: int) -> StoreLink:
    return await AsyncClient.connect(host, port)


@dataclass(slots=True, kw_only=True)
class _Held:
    """A request waiting behind a barrier, and the future its caller already holds."""

    send: Callable[[StoreLink], asyncio.Future[Response]]
    slot: int | None  # None: a barrier (spans slots or names no key)
    future: asyncio.Future[Response] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@final
class StorePool:
    """N pipelined connections to the store at host:port; requests routed by key.

    `submit`, `submit_get` and `submit_put` behave as `AsyncClient`'s: they return the
    future of the raw Response, and raise BrokenError (nothing sent) when the key's
    connection is down. They never send on a connection that is not open.
    """

    def __init__(
        self,
        host: str,
        port: int,
        size: int = 1,
        *,
        connect: Connect = _connect,
        backoff: Callable[[], Backoff] | None = None,
        on_open: Callable[[], None] = lambda: None,
        on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        if not 1 <= size <= MAX_STORE_CONNECTIONS:
            raise ValueError(f"store connections {size} outside 1..{MAX_STORE_CONNECTIONS}")
        self.host = host
        self.port = port
        self.size = size
        self.reconnects = 0
        self.barriers = 0
        self._connect = connect
        self._links: list[StoreLink | None] = [None] * size
        self._last: list[asyncio.Future[Response] | None] = [None] * size
        self._errors = ["not connected yet"] * size
        self._backoff = backoff or (lambda: Backoff(initial_s=0.05, max_s=2.0))
        self._tasks: list[asyncio.Task[None]] = []
        self._held: deque[_Held] = deque()
        self._barrier: asyncio.Future[Response] | None = None
        self._next = 0  # round robin start for keyless requests
        self._changed = asyncio.Event()
        self._on_open = on_open  # called when the last closed connection opens
        self._on_lost = on_lost  # called when an open connection is lost

    def __repr__(self) -> str:
        return f"<StorePool store={self.address} open={self.open_count}/{self.size}>"

    @property
    def address(self) -> str:
        """HOST:PORT of the store."""
        return f"{self.host}:{self.port}"

    @property
    def open_count(self) -> int:
        """How many of the connections are open now."""
        return sum(link is not None and link.is_open for link in self._links)

    @property
    def is_open(self) -> bool:
        """Whether every connection is open (each key can be served)."""
        return self.open_count == self.size

    @property
    def last_error(self) -> str:
        """Why the first closed connection is closed ('' when all are open)."""
        for index, link in enumerate(self._links):
            if link is None or not link.is_open:
                return self._errors[index]
        return ""

    def slot_of(self, key: bytes) -> int:
        """The connection a request for `key` goes to."""
        return hash(key) % self.size if self.size > 1 else 0

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every connection's connect/reconnect loop; does not wait for them."""
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._maintain(i)) for i in range(self.size)]

    async def wait_open(self, timeout_s: float) -> bool:
        """Wait until every connection is open, at most `timeout_s`; whether they are."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while not self.is_open:
                    self._changed.clear()
                    await self._changed.wait()
        return self.is_open

    async def close(self) -> None:
        """Stop reconnecting and close every connection (requests in flight fail)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        links, self._links = self._links, [None] * self.size
        for link in links:
            if link is not None:
                await link.close()
        self._fail_held(BrokenError("store pool closed"))

    def stats(self) -> dict[str, int]:
        """Gauges and counters for INFO and /metrics."""
        return {
            "store_connections": self.size,
            "store_connections_open": self.open_count,
            "store_reconnects": self.reconnects,
            "store_barriers": self.barriers,
        }

    async def _maintain(self, index: int) -> None:
        backoff = self._backoff()
        while True:
            try:
                link = await self._connect(self.host, self.port)
            except BrokenError as exc:
                self._errors[index] = str(exc)
                await asyncio.sleep(backoff.next_delay())
                continue
            self._links[index] = link
            self._changed.set()
            backoff.reset()
            log.info("store connected store=%s slot=%d", self.address, index)
            if self.is_open:
                self._on_open()
            await asyncio.shield(link.closed)
            self._links[index] = None  # never send on it again
            self._errors[index] = "connection lost"
            self._changed.set()
            self.reconnects += 1
            self._on_lost()
            log.warning("store connection lost store=%s slot=%d; reconnecting", self.address, index)
            self._pump()  # a barrier waiting on this slot's drain can go on
            await asyncio.sleep(backoff.next_delay())

    # -- sending --------------------------------------------------------------------------

    def _link(self, index: int) -> StoreLink:
        link = self._links[index]
        if link is None or not link.is_open:
            raise BrokenError(
                f"store connection {index + 1} of {self.size} down: {self._errors[index]}"
            )
        return link

    def submit_get(self, key: bytes) -> asyncio.Future[Response]:
        """A GET of `key` on its connection (the hot path: no request object)."""
        if self._held or self._barrier is not None:
            return self._hold(lambda link: link.submit_get(key), self.slot_of(key))
        index = hash(key) % self.size if self.size > 1 else 0
        future = self._link(index).submit_get(key)
        self._last[index] = future
        return future

    def submit_put(self, key: bytes, value: bytes) -> asyncio.Future[Response]:
        """A PUT of `key` on its connection."""
        if self._held or self._barrier is not None:
            return self._hold(lambda link: link.submit_put(key, value), self.slot_of(key))
        index = hash(key) % self.size if self.size > 1 else 0
        future = self._link(index).submit_put(key, value)
        self._last[index] = future
        return future

    def submit(self, request: Request) -> asyncio.Future[Response]:
        """Any request: on its key's connection, or as a barrier when it spans slots or
        names no key (module notes). Raises what `AsyncClient.submit` raises."""
        index = self._route(request)
        if index is None or self._held or self._barrier is not None:
            return self._hold(lambda link: link.submit(request), index)
        future = self._link(index).submit(request)
        self._last[index] = future
        return future

    def _route(self, request: Request) -> int | None:
        if self.size == 1:
            return 0
        if isinstance(request, GetRequest | PutRequest | DeleteRequest):
            return self.slot_of(request.key)
        if isinstance(request, BatchRequest) and request.ops:
            slots = {self.slot_of(op.key) for op in request.ops}
            return slots.pop() if len(slots) == 1 else None
        return None

    def _hold(
        self, send: Callable[[StoreLink], asyncio.Future[Response]], slot: int | None
    ) -> asyncio.Future[Response]:
        if slot is not None:  # fail now, as an unheld request would, if its link is down
            self._link(slot)
        else:
            self.barriers += 1
        held = _Held(send=send, slot=slot)
        self._held.append(held)
        self._pump()
        return held.future

    def _pump(self) -> None:
        """Send the held requests that may go now, in order."""
        held = self._held
        if self._barrier is not None:
            if not self._barrier.done():
                return
            self._barrier = None
        while held:
            head = held[0]
            if head.slot is None:
                pending = [f for f in self._last if f is not None and not f.done()]
                if pending:  # wait for what was sent before the barrier
                    pending[-1].add_done_callback(lambda _: self._pump())
                    return
                held.popleft()
                index = self._open_slot()
                if index is None:
                    head.future.set_exception(BrokenError("no store connection open"))
                    continue
                if self._send(head, index):
                    self._barrier = head.future
                    head.future.add_done_callback(lambda _: self._pump())
                    return
            else:
                held.popleft()
                self._send(head, head.slot)

    def _open_slot(self) -> int | None:
        for step in range(self.size):
            index = (self._next + step) % self.size
            link = self._links[index]
            if link is not None and link.is_open:
                self._next = index + 1
                return index
        return None

    def _send(self, held: _Held, index: int) -> bool:
        """Send a held request on connection `index`, chained to its caller's future."""
        outer = held.future
        try:
            inner = held.send(self._link(index))
        except Exception as exc:  # its caller sees it on the future it holds
            if not outer.done():
                outer.set_exception(exc)
            return False
        self._last[index] = inner
        inner.add_done_callback(lambda done: _chain(done, outer))
        return True

    def _fail_held(self, exc: BrokenError) -> None:
        held, self._held = list(self._held), deque()
        for item in held:
            if not item.future.done():
                item.future.set_exception(exc)


def _chain(inner: asyncio.Future[Response], outer: asyncio.Future[Response]) -> None:
    if outer.done():
        return
    if inner.cancelled():
        outer.cancel()
    elif (exc := inner.exception()) is not None:
        outer.set_exception(exc)
    else:
        outer.set_result(inner.result())


__all__ = ["MAX_STORE_CONNECTIONS", "STORE_COUNTERS", "Connect", "StoreLink", "StorePool"]
