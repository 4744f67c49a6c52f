"""The least a Python server on uvloop can do per request: the benchmark's floor.

Not a server anyone should run. It answers every request in a read with `+PONG` without
parsing anything: it counts the `*` of RESP arrays (or, for inline commands, the line
ends) and writes that many replies in one `write`. What it costs per request is uvloop's
callback, the read and the write, and nothing of ours: `run.py --floor` measures it beside
redis-server and `postoffice command serve` to show how much of the gap to redis any
Python server on this event loop pays before it does any work.

Usage: python floor.py PORT
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

import uvloop

_PONG = b"+PONG\r\n"


class _Pong(asyncio.Protocol):
    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return
        count = data.count(b"*") or data.count(b"\n")
        self._transport.write(_PONG if count <= 1 else _PONG * count)


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Pong, "127.0.0.1", port, backlog=4096)
    await server.serve_forever()


def main() -> None:
    """Serve on 127.0.0.1:PORT until SIGTERM or SIGINT."""
    port = int(sys.argv[1])
    try:
        uvloop.run(_serve(port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
