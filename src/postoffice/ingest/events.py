"""EventHub: the ingest server's telemetry events, fanned out to its live /events streams
(NDJSON). The ack port's per-file subscribers are connections.AckHub's."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Final, final

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
