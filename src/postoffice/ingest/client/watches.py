"""The ingest client's side of the ack port: AckWatches, which sends wait for which file
ids' final events, their shared SUBSCRIBEs, and subscribing again after a drop.

Ingest layer, I/O shell (a Link, asyncio) around the pure protocol module; client.py uses it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import final

from postoffice.core.errors import BrokenError
from postoffice.ingest.client.links import Connector, Link
from postoffice.ingest.errors import IngestError, IngestProtocolError, error_for
from postoffice.ingest.messages import (
    MAX_SUBSCRIBE_IDS,
    ErrorReply,
    Failed,
    FileId,
    Message,
    Ping,
    Pong,
    Published,
    Subscribe,
    Subscribed,
    file_id_hex,
)
from postoffice.ingest.protocol import encode

__all__ = ["AckWatches", "Watch"]

#: How a send asks to get the ack link back (the client's retrying reconnect).
Reconnect = Callable[[], Awaitable[None]]


@final
class Watch:
    """One send's interest in its file id's final event on the ack port."""

    __slots__ = ("file_id", "final", "wakeup")

    def __init__(self, file_id: FileId) -> None:
        self.file_id = file_id
        self.final: Published | Failed | None = None
        self.wakeup = asyncio.Event()  # set on a final event and when the ack link drops


@final
class _Subscription:
    """File ids that subscribe together, and the outcome they share."""

    __slots__ = ("done", "file_ids")

    def __init__(self, file_id: FileId) -> None:
        self.file_ids = [file_id]
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.done.add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a shared outcome's exception as seen: its waiters may all be gone."""
    if not future.cancelled():
        future.exception()


@final
class AckWatches:
    """The ack link of one client and the watches of its sends.

    A send registers a `watch` before it subscribes and `unwatch`es it when done; final
    events (PUBLISHED, FAILED) for a watched id land in its watches. Raises nothing at
    construction; `connect()` connects: `reach(link)` when given (a client of a cluster
    points the link at a live node's ack port, each of which delivers every upload's
    final event), else the link's own `ensure`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect: Connector,
        timeout_s: float,
        reach: Callable[[Link], Awaitable[None]] | None = None,
    ) -> None:
        self._reach = reach
        self.link = Link(
            host,
            (port,),
            connect=connect,
            timeout_s=timeout_s,
            on_event=self._on_event,
            on_lost=self._on_lost,
        )
        self._watches: dict[FileId, set[Watch]] = {}
        self._subscribing: _Subscription | None = None  # ids gathered for one SUBSCRIBE

    def __repr__(self) -> str:
        return f"<AckWatches {self.link!r} watched={len(self._watches)}>"

    def watch(self, file_id: FileId) -> Watch:
        """Start watching `file_id` for one send."""
        watch = Watch(file_id)
        self._watches.setdefault(file_id, set()).add(watch)
        return watch

    def watching(self, file_id: FileId) -> bool:
        """Whether a send still watches `file_id`."""
        return file_id in self._watches

    def unwatch(self, watch: Watch) -> None:
        """Stop a send's watch."""
        watchers = self._watches.get(watch.file_id, set())
        watchers.discard(watch)
        if not watchers:
            self._watches.pop(watch.file_id, None)

    async def subscribe(self, file_id: FileId) -> None:
        """Subscribe to `file_id`; return once the replayed events are in.

        The sends that subscribe in the same loop iteration share one SUBSCRIBE and one
        PING: the first waits one iteration for the others to join, then sends them.
        Raises BrokenError (the link dropped: retry), the IngestError of an ERROR reply.
        """
        await self.ready()
        joining = self._subscribing
        if joining is not None and len(joining.file_ids) < MAX_SUBSCRIBE_IDS:
            joining.file_ids.append(file_id)
            await asyncio.shield(joining.done)
            return
        batch = _Subscription(file_id)
        self._subscribing = batch
        # The first goes on the way the others do, in the same loop iteration, so their
        # chunks leave together (a first chunk alone would be published in a batch alone).
        together = asyncio.shield(batch.done)
        try:
            await asyncio.sleep(0)
            if self._subscribing is batch:
                self._subscribing = None
            # Both at once (written in this order): replies come in order, so once the
            # PONG is here, every replayed event is too.
            await asyncio.gather(
                self._call(Subscribe(file_ids=tuple(batch.file_ids)), Subscribed),
                self._call(Ping(), Pong),
            )
        except BaseException as exc:
            if self._subscribing is batch:
                self._subscribing = None
            # The others retry a BrokenError; an interrupted leader is one for them.
            shared = exc if isinstance(exc, Exception) else BrokenError("subscribe interrupted")
            batch.done.set_exception(shared)
            together.cancel()
            raise
        batch.done.set_result(None)
        await together

    async def connect(self) -> None:
        """Connect the ack link unless connected. Raises BrokenError, ClosedError after
        close (or what `reach` raises)."""
        if self._reach is None:
            await self.link.ensure()
        elif not self.link.connected:
            await self._reach(self.link)

    async def ready(self) -> None:
        """Connect the ack link if it dropped (to another node's, in a cluster),
        subscribing again to every watched id.

        Raises BrokenError, the IngestError of an ERROR reply.
        """
        if self.link.connected:
            return
        await self.connect()
        watched = tuple(self._watches)
        for start in range(0, len(watched), MAX_SUBSCRIBE_IDS):
            batch = watched[start : start + MAX_SUBSCRIBE_IDS]
            await self._call(Subscribe(file_ids=batch), Subscribed)

    async def wait_published(
        self, watch: Watch, name: str, *, timeout_s: float, reconnect: Reconnect
    ) -> Published:
        """Wait for the watched id's PUBLISHED; `reconnect` gets a dropped link back.

        Raises the IngestError of a FAILED event, IngestError after `timeout_s`, and what
        `reconnect` raises.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            watch.wakeup.clear()
            final = watch.final
            if isinstance(final, Published):
                return final
            if isinstance(final, Failed):
                raise error_for(final.code, f"{name} not published: {final.message}")
            if not self.link.connected:
                await reconnect()
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise IngestError(
                    f"{name} ({file_id_hex(watch.file_id)}) not published within {timeout_s} s"
                )
            try:
                async with asyncio.timeout(remaining):
                    await watch.wakeup.wait()
            except TimeoutError:
                pass

    async def _call(self, message: Subscribe | Ping, expected: type[Message]) -> None:
        request_id = self.link.next_id()
        reply = await self.link.call(encode(message, request_id), request_id)
        if isinstance(reply, ErrorReply):
            raise error_for(
                reply.code, f"ack port refused {type(message).__name__}: {reply.message}"
            )
        if not isinstance(reply, expected):
            raise IngestProtocolError(
                f"expected {expected.__name__} on the ack port, got {reply!r}"
            )

    def _on_event(self, message: Message) -> None:
        if isinstance(message, Published | Failed):
            for watch in self._watches.get(message.file_id, ()):
                watch.final = message
                watch.wakeup.set()

    def _on_lost(self) -> None:
        for watches in self._watches.values():
            for watch in watches:
                watch.wakeup.set()
