"""In-memory stand-ins for sockets, so protocol shells are tested without a network."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from postoffice.store.engine import Store


class FakeTransport(asyncio.Transport):
    """Records what a protocol writes and how it steers the transport."""

    def __init__(self, protocol: asyncio.Protocol, peer: tuple[str, int] = ("127.0.0.1", 50000)):
        super().__init__()
        self.protocol = protocol
        self.peer = peer
        self.written = bytearray()
        self.closed = False
        self.aborted = False
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.written += data

    def take(self) -> bytes:
        """What was written since the last take."""
        data = bytes(self.written)
        self.written.clear()
        return data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_event_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def can_write_eof(self) -> bool:
        return False  # close at once: tests see `closed` without waiting for a linger

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.peer, "sockname": ("127.0.0.1", 6380)}.get(name, default)


class SyncGate:
    """Holds a store engine's sync calls until `opened` is set, and records their tickets."""

    def __init__(self, store: Store | None) -> None:
        assert store is not None
        self.calls: list[int] = []
        self.opened = threading.Event()
        self._sync = store.sync
        store.sync = self._held  # type: ignore[method-assign]

    def _held(self, ticket: int) -> int:
        self.calls.append(ticket)
        assert self.opened.wait(10), "the gate was never opened"
        return self._sync(ticket)
