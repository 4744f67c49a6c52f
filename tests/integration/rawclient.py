"""The one raw socket client of the integration tests: bytes out, bytes back, every read
bounded by a timeout, for what a real protocol client cannot send or would hide."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from types import TracebackType

#: How long one connect or one read may take unless told otherwise.
DEFAULT_TIMEOUT_S = 10.0
_BLOCK = 1 << 16


class RawClient:
    """A blocking TCP connection to 127.0.0.1 with a read buffer.

    Each `read_*` call returns within its timeout (the client's by default) or raises
    TimeoutError; one that needs more bytes than the peer sends before it closes raises
    EOFError, except `read_up_to` and `read_until_eof`, which return what came.
    """

    def __init__(self, sock: socket.socket, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.sock = sock
        self.timeout_s = timeout_s
        self._buffer = bytearray()
        self.eof = False

    @classmethod
    def connect(
        cls, port: int, *, host: str = "127.0.0.1", timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> RawClient:
        """Connect (bounded by `timeout_s`); raises OSError when refused."""
        return cls(socket.create_connection((host, port), timeout=timeout_s), timeout_s=timeout_s)

    def __enter__(self) -> RawClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Read one block into the buffer; False at EOF."""
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no more bytes within {self.timeout_s} s")
        self.sock.settimeout(left)
        block = self.sock.recv(_BLOCK)
        if not block:
            self.eof = True
            return False
        self._buffer += block
        return True

    def _take(self, n: int) -> bytes:
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    def _deadline(self, timeout_s: float | None) -> float:
        return time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)

    def recv(self, timeout_s: float | None = None) -> bytes:
        """What is buffered, or else the next block read (b"" at EOF)."""
        if not self._buffer:
            self._fill(self._deadline(timeout_s))
        return self._take(len(self._buffer))

    def read_exactly(self, n: int, timeout_s: float | None = None) -> bytes:
        """Exactly `n` bytes."""
        deadline = self._deadline(timeout_s)
        while len(self._buffer) < n:
            if not self._fill(deadline):
                raise EOFError(f"closed after {len(self._buffer)} of {n} bytes")
        return self._take(n)

    def read_up_to(self, n: int, timeout_s: float | None = None) -> bytes:
        """`n` bytes, or fewer if the peer closes first."""
        deadline = self._deadline(timeout_s)
        while len(self._buffer) < n and self._fill(deadline):
            pass
        return self._take(n)

    def read_until(self, delimiter: bytes, timeout_s: float | None = None) -> bytes:
        """Everything up to and including the next `delimiter`."""
        deadline = self._deadline(timeout_s)
        start = 0
        while (end := self._buffer.find(delimiter, start)) < 0:
            start = max(0, len(self._buffer) - len(delimiter) + 1)
            if not self._fill(deadline):
                raise EOFError(f"closed after {len(self._buffer)} bytes without {delimiter!r}")
        return self._take(end + len(delimiter))

    def read_lines(self, count: int, timeout_s: float | None = None) -> list[bytes]:
        """The next `count` CR LF lines, without their CR LF."""
        deadline = self._deadline(timeout_s)
        return [
            self.read_until(b"\r\n", max(0.0, deadline - time.monotonic()))[:-2]
            for _ in range(count)
        ]

    def read_until_done(
        self, done: Callable[[bytes], bool], timeout_s: float | None = None
    ) -> bytes:
        """Everything read until `done(all of it)` holds (a parser says the answer is whole)."""
        deadline = self._deadline(timeout_s)
        while not done(bytes(self._buffer)):
            if not self._fill(deadline):
                raise EOFError(f"closed after {len(self._buffer)} bytes of an unfinished answer")
        return self._take(len(self._buffer))

    def read_until_eof(self, timeout_s: float | None = None) -> bytes:
        """Everything until the peer closes."""
        deadline = self._deadline(timeout_s)
        while self._fill(deadline):
            pass
        return self._take(len(self._buffer))


def exchange(
    port: int, data: bytes, *, expect: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
) -> bytes:
    """Send `data` on a fresh connection and read `expect` bytes (fewer if the peer closes
    first), or with no `expect` everything until the peer closes."""
    with RawClient.connect(port, timeout_s=timeout_s) as client:
        client.send(data)
        if expect is None:
            return client.read_until_eof()
        return client.read_up_to(expect)
