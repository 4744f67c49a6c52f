"""In-memory stand-ins for the network and the clock, so shells are tested without sockets.

`FakeTransport` is the one fake transport, `FakeClock` (the core's) the fake clock, and
`SyncGate` holds a group commit's fsyncs until a test lets them through.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from postoffice.core.clock import FakeClock
from postoffice.store.engine.commit import Committer, GroupCommit

__all__ = ["FakeClock", "FakeTransport", "SyncGate", "committer_of"]


class FakeTransport(asyncio.Transport):
    """An in-memory transport that records every call a protocol makes on it.

    What is written collects in `written` (`take()` empties it), or goes to `on_write` when
    given, as a fake peer reads it. `calls` lists the calls that steer the transport in
    order; `closed`, `aborted`, `reading`, `eof_written` and `limits` are their effect.
    `wrote` is set on every write and `resumed` on every resume_reading, so a test awaits
    what the code under test does instead of polling for it.

    Options: `peer` and `sockname` are the addresses `get_extra_info` reports. With
    `auto_lost` (the default), `close` and `abort` deliver `connection_lost` to `protocol`
    one loop turn later, as the event loop does; without it they only record, and the test
    delivers it. With `eof` the transport can half-close (`write_eof`). A write after
    close raises RuntimeError, so a protocol that writes to a closed peer fails its test;
    with `drop_after_close` it is dropped silently instead, as asyncio's own transports
    drop it (for clients, which may race their own close).
    """

    def __init__(
        self,
        protocol: asyncio.BaseProtocol | None = None,
        *,
        peer: object = ("127.0.0.1", 50000),
        sockname: object = ("127.0.0.1", 6380),
        auto_lost: bool = True,
        eof: bool = False,
        on_write: Callable[[bytes], None] | None = None,
        drop_after_close: bool = False,
    ) -> None:
        super().__init__()
        self.protocol = protocol
        self.calls: list[str] = []
        self.written = bytearray()
        self.reading = True
        self.closed = False
        self.aborted = False
        self.eof_written = False
        self.limits: tuple[int | None, int | None] | None = None
        self.wrote = asyncio.Event()
        self.resumed = asyncio.Event()
        self._extra = {"peername": peer, "sockname": sockname}
        self._auto_lost = auto_lost
        self._eof = eof
        self._on_write = on_write
        self._drop_after_close = drop_after_close

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed or self.eof_written:
            if self._drop_after_close:
                return
            raise RuntimeError("write after close or write_eof")
        self.calls.append("write")
        if self._on_write is not None:
            self._on_write(bytes(data))
        else:
            self.written += data
        self.wrote.set()

    def take(self) -> bytes:
        """What was written since the last take."""
        data = bytes(self.written)
        self.written.clear()
        self.wrote.clear()
        return data

    async def next_write(self, timeout_s: float = 10.0) -> bytes:
        """What is written next (or was written since the last take), once it is."""
        async with asyncio.timeout(timeout_s):
            await self.wrote.wait()
        return self.take()

    def _lose(self) -> None:
        if not self.closed and self._auto_lost and self.protocol is not None:
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)
        self.closed = True

    def close(self) -> None:
        self.calls.append("close")
        self._lose()

    def abort(self) -> None:
        self.calls.append("abort")
        self.aborted = True
        self._lose()

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return self._eof

    def write_eof(self) -> None:
        self.calls.append("write_eof")
        self.eof_written = True

    def pause_reading(self) -> None:
        self.calls.append("pause_reading")
        self.reading = False

    def resume_reading(self) -> None:
        self.calls.append("resume_reading")
        self.reading = True
        self.resumed.set()

    def is_reading(self) -> bool:
        return self.reading

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.limits = (high, low)

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)


class SyncGate:
    """Holds a group commit's syncs until `opened` is set, and records their tickets.

    It wraps the committer's `sync` (its seam) rather than the store's method, so it holds
    on the compiled build too, where the store's methods cannot be replaced.
    """

    def __init__(self, commit: GroupCommit | None) -> None:
        committer = committer_of(commit)
        self.calls: list[int] = []
        self.opened = threading.Event()
        self._sync = committer.sync
        committer.sync = self._held

    def _held(self, ticket: int) -> int:
        self.calls.append(ticket)
        assert self.opened.wait(10), "the gate was never opened"
        return self._sync(ticket)


def committer_of(commit: GroupCommit | None) -> Committer:
    """The running committer of a durable server's group commit."""
    assert commit is not None, "no group commit: the store is not durable"
    committer = commit.committer
    assert committer is not None, "group commit is stopped"
    return committer
