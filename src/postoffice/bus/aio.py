"""asyncio helpers for the bus's users (bus library layer): await a subscriber's message or
a reliable publisher's free slot on the running loop, iterate messages, publish with
backpressure, and `AsyncClient`, the Client's setup calls off the loop."""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, Self, TypeVar, final

from postoffice.bus.client import DEFAULT_TIMEOUT_S, Client
from postoffice.bus.errors import BusUsageError
from postoffice.bus.publisher import Publisher
from postoffice.bus.subscriber import Message, Subscriber

# Design
# ------
# A wait is the user's own `wait_async`: it arms the user's wait bit, looks once more, and
# then sleeps in `loop.add_reader` on the user's eventfd; the reader is removed however the
# wait ends (woken, timed out, cancelled). No thread and no polling: a publish (or a
# release, for a reliable publisher) writes the eventfd only while the bit is armed.
#
# A loop keeps one reader per fd, so a second coroutine waiting on the same user would
# silently replace the first one's callback and strand it. Such a wait is refused instead
# (BusUsageError); waits on different users of one channel are fine (each has its own fd).
# `fileno()` is not called: it would make every empty read of the user arm its wake-up
# from then on, the cost of an outside poll loop, which these helpers are not.
#
# One request does block the loop: a subscriber made before its channel had a publisher
# asks the server for the channel's new files, from the read or wait that first sees them
# (once per such subscriber, a round trip on the Unix socket).

_P = ParamSpec("_P")
_R = TypeVar("_R")

#: The users being waited on (by id), per running loop.
_waiting: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, set[int]] = (
    weakref.WeakKeyDictionary()
)


async def wait(user: Subscriber | Publisher, timeout_s: float | None = None) -> bool:
    """Wait on the running loop until `user` can go on: a subscriber until a message is
    ready to read, a reliable publisher until it claimed a free slot (its next
    `get_buffer`/`publish_bytes` uses it). Returns at once when it can already; False
    when `timeout_s` passed first (None: no limit). Cancelling the wait leaves nothing
    registered on the loop. Raises BusUsageError for an unreliable publisher, a publisher
    made without an eventfd, or a user another coroutine of this loop is waiting on;
    BusClosedError for a closed user."""
    if timeout_s is not None and not timeout_s >= 0:
        raise BusUsageError(f"a wait's timeout is at least 0 seconds, got {timeout_s}")
    if isinstance(user, Subscriber):
        # ready() looks at the slots whether or not the subscriber is closed; a closed
        # one goes on to wait_async, which refuses it.
        if not (user.closed or user.channel.closed) and user.ready():
            return True
    elif user.wait(0):  # claims a free slot if there is one; refuses an unreliable one
        return True
    loop = asyncio.get_running_loop()
    busy = _waiting.setdefault(loop, set())
    if id(user) in busy:
        raise BusUsageError(f"{_name(user)} is already waited on by another task of this loop")
    busy.add(id(user))  # the caller holds `user` until this returns: its id stays its own
    try:
        async with asyncio.timeout(timeout_s):
            await user.wait_async()
    except TimeoutError:
        return False
    finally:
        busy.discard(id(user))
    return True


async def messages(
    subscriber: Subscriber, *, newest: bool = False, timeout_s: float | None = None
) -> AsyncIterator[Message]:
    """Each message of `subscriber` as it comes (with `newest`, the newest one each time,
    skipping the others), waiting on the running loop in between; the iteration ends
    when none came for `timeout_s` (None: never). A message is held until released (or
    until the subscriber, at its max_active_messages, releases its oldest): release it,
    or use it as a context manager. Raises as `Subscriber.read` and `wait` do."""
    while True:
        message = subscriber.read(newest=newest)
        if message is not None:
            yield message
        elif not await wait(subscriber, timeout_s):
            return


async def publish(
    publisher: Publisher,
    data: bytes | bytearray | memoryview,
    *,
    metadata: bytes | bytearray | memoryview = b"",
    timeout_s: float | None = None,
) -> int | None:
    """Publish `data` as one message (see `Publisher.publish_bytes`); a reliable
    publisher that finds every slot taken waits on the running loop for one. Returns the
    message's ordinal, or None when no slot freed up within `timeout_s`. Raises as
    `Publisher.publish_bytes` and `wait` do."""
    while True:
        ordinal = publisher.publish_bytes(data, metadata=metadata)
        if ordinal is not None:
            return ordinal
        if not await wait(publisher, timeout_s):
            return None


def _name(user: Subscriber | Publisher) -> str:
    if isinstance(user, Subscriber):
        return f"subscriber {user.subscriber_id} of {user.channel.name!r}"
    return f"publisher {user.publisher_id} of {user.channel.name!r}"


def _in_thread(
    method: Callable[Concatenate[Client, _P], _R],
) -> Callable[Concatenate[AsyncClient, _P], Coroutine[Any, Any, _R]]:
    async def call(self: AsyncClient, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        async with self._lock:
            return await asyncio.to_thread(method, self.client, *args, **kwargs)

    call.__name__ = method.__name__
    call.__doc__ = f"`Client.{method.__name__}` in a worker thread (see there)."
    return call


@final
class AsyncClient:
    """A `Client` for asyncio code. Its setup calls (connect, create, remove, the channel
    reports) are requests that block on the server's socket for a moment, so they run in
    a worker thread (asyncio.to_thread), one at a time; the Publishers and Subscribers
    they return are the ordinary ones, used on the loop with `wait`, `messages` and
    `publish` (no thread on that path). Make one with `await AsyncClient.connect(...)`.
    """

    __slots__ = ("_lock", "client")

    def __init__(self, client: Client) -> None:
        self.client = client
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(
        cls,
        socket_path: str | os.PathLike[str] | None = None,
        *,
        name: str = "",
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> Self:
        """Connect as `Client(socket_path, name=name, timeout_s=timeout_s)` does, in a
        worker thread. Raises BusConnectionError if the server cannot be reached."""
        client = await asyncio.to_thread(Client, socket_path, name=name, timeout_s=timeout_s)
        return cls(client)

    create_publisher = _in_thread(Client.create_publisher)
    create_subscriber = _in_thread(Client.create_subscriber)
    remove_publisher = _in_thread(Client.remove_publisher)
    remove_subscriber = _in_thread(Client.remove_subscriber)
    channel_info = _in_thread(Client.channel_info)
    channel_stats = _in_thread(Client.channel_stats)

    async def close(self) -> None:
        """Close the client (see `Client.close`); safe to call twice."""
        async with self._lock:
            await asyncio.to_thread(self.client.close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<bus.AsyncClient {self.client!r}>"
