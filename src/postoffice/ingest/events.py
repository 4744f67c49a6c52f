"""The ingest server's two fan-outs of events: EventHub (telemetry, the NDJSON /events
streams) and AckHub (the ack port's subscribers, by file id)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Final, Protocol, final

from postoffice.ingest.messages import FileId, Message

log = logging.getLogger(__name__)

STREAM_QUEUE: Final = 10_000  # events a slow telemetry reader may fall behind before losing some


@final
class EventHub:
    """Telemetry events: `emit` never blocks; each stream has its own bounded queue.

    A stream more than STREAM_QUEUE events behind misses the newer ones (counted in
    `dropped`) rather than slowing the server down.
    """

    def __init__(self) -> None:
        self._streams: set[asyncio.Queue[dict[str, object]]] = set()
        self.emitted = 0
        self.dropped = 0
        self.listeners: list[Callable[[dict[str, object]], None]] = []

    def emit(self, event: str, **fields: object) -> None:
        """Record an event and hand it to every open stream."""
        record: dict[str, object] = {"ts": round(time.time(), 6), "event": event, **fields}
        self.emitted += 1
        for listener in self.listeners:
            listener(record)
        for queue in self._streams:
            if queue.full():
                self.dropped += 1
            else:
                queue.put_nowait(record)

    @property
    def streams(self) -> int:
        """Open telemetry streams."""
        return len(self._streams)

    async def stream(self) -> AsyncIterator[bytes]:
        """One JSON line per event, from now until the consumer stops iterating."""
        queue: asyncio.Queue[dict[str, object]] = asyncio.Queue(STREAM_QUEUE)
        self._streams.add(queue)
        try:
            yield (json.dumps({"ts": round(time.time(), 6), "event": "hello"}) + "\n").encode()
            while True:
                record = await queue.get()
                yield (json.dumps(record, default=str) + "\n").encode()
        finally:
            self._streams.discard(queue)


class Subscriber(Protocol):
    """An ack-port connection as AckHub sees it."""

    #: The file ids it subscribed to.
    watching: set[FileId]

    def push(self, message: Message) -> None:
        """Send an event (request id 0), or drop the subscriber if it stopped reading."""
        ...

    def abort(self, reason: str) -> None:
        """Close at once (the hub dropped its subscriptions to make room for others)."""
        ...


@final
class AckHub:
    """Which ack-port subscribers watch which file ids, at most `limit` (subscriber, file
    id) pairs in all (0: no limit)."""

    def __init__(self, limit: int = 0) -> None:
        self._by_file: dict[FileId, set[Subscriber]] = {}
        self._subscribers: set[Subscriber] = set()
        self.limit = limit
        #: (subscriber, file id) pairs watched now, all subscribers together.
        self.watched = 0

    def make_room(self, subscriber: Subscriber, added: int) -> bool:
        """Make room for `added` more pairs of `subscriber`: while the hub would pass its
        limit, drop the subscriber watching the most file ids (its connection is closed),
        as Redis drops the client with the largest buffer. False, dropping nobody, when
        `subscriber` watches the most itself: its SUBSCRIBE is the one to refuse."""
        while self.limit and self.watched + added > self.limit:
            largest = max(self._subscribers, key=lambda s: len(s.watching), default=None)
            if largest is None or len(largest.watching) <= len(subscriber.watching):
                return False
            log.warning(
                "ack subscriber dropped to make room watching=%d limit=%d",
                len(largest.watching),
                self.limit,
            )
            self.unsubscribe(largest)
            largest.abort("the server watches too many file ids; this connection the most")
        return True

    def subscribe(self, subscriber: Subscriber, file_ids: tuple[FileId, ...]) -> None:
        """Send `subscriber` the events of `file_ids` from now on."""
        before = len(subscriber.watching)
        subscriber.watching.update(file_ids)
        self.watched += len(subscriber.watching) - before
        self._subscribers.add(subscriber)
        for file_id in file_ids:
            self._by_file.setdefault(file_id, set()).add(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Forget every subscription of `subscriber` (its connection closed); idempotent."""
        self._subscribers.discard(subscriber)
        self.watched -= len(subscriber.watching)
        for file_id in subscriber.watching:
            watchers = self._by_file.get(file_id)
            if watchers is not None:
                watchers.discard(subscriber)
                if not watchers:
                    del self._by_file[file_id]
        subscriber.watching.clear()

    def publish(self, file_id: FileId, message: Message) -> None:
        """Send `message` to every subscriber watching `file_id`."""
        watchers = self._by_file.get(file_id)
        if watchers:
            for subscriber in list(watchers):
                subscriber.push(message)

    @property
    def subscriptions(self) -> int:
        """File ids watched by at least one subscriber."""
        return len(self._by_file)
