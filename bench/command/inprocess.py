"""The command server's own cost per command, in-process, with no socket and no peer.

Feeds one connection the same read N times through `data_received`, as uvloop would,
over a transport that drops what is written, and prints the time per command. Under
callgrind the difference between two runs of different N is the instruction count per
command, which stays the same whatever else the machine is doing:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        .venv/bin/python bench/command/inprocess.py ping 200
    (the same with 3200; (total(3200) - total(200)) / (3000 x commands per read))

It measures our Python only: the parser, the dispatch, the handler and the reply. The
benchmark against redis-server is `run.py`; this is the tool for changing the hot path.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from postoffice.command.config import CommandConfig
from postoffice.command.connection import CommandConnection
from postoffice.command.server import CommandServer

KEY = b"key:000000000001"
VALUE = b"x" * 100
_GET = b"*2\r\n$3\r\nGET\r\n$16\r\n" + KEY + b"\r\n"
_SET = b"*3\r\n$3\r\nSET\r\n$16\r\n" + KEY + b"\r\n$100\r\n" + VALUE + b"\r\n"
#: name -> (the read, commands in it, whether it needs the embedded store)
READS: dict[str, tuple[bytes, int, bool]] = {
    "ping": (b"*1\r\n$4\r\nPING\r\n", 1, False),
    "ping-inline": (b"PING\r\n", 1, False),
    "ping-p16": (b"*1\r\n$4\r\nPING\r\n" * 16, 16, False),
    "get": (_GET, 1, True),
    "get-p16": (_GET * 16, 16, True),
    "set": (_SET, 1, True),
}


class _Sink(asyncio.Transport):
    """A transport that takes every write and forgets it."""

    paused = False  # the connection ended its turn (a pause taken, say, by a GC pass)

    def write(self, data: Any) -> None:
        pass

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name in ("peername", "sockname") else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


async def main(name: str, count: int) -> None:
    data, per_read, store = READS[name]
    with tempfile.TemporaryDirectory() as tmp:
        settings: dict[str, Any] = {"metrics_port": None}
        if store:  # durability never: the fsync is not what this measures
            settings |= {"store_dir": Path(tmp), "store_durability": "never"}
        server = CommandServer(CommandConfig(**settings))
        if server.keyspace is not None:
            await server.keyspace.start()
        conn = CommandConnection(server)
        sink = _Sink()
        conn.connection_made(sink)
        conn.data_received(_SET)  # the key GET reads
        started = time.perf_counter()
        for _ in range(count):
            conn.data_received(data)
            if sink.paused:  # its next turn runs the rest, as the server's loop would
                await asyncio.sleep(0)
        elapsed = time.perf_counter() - started
        if server.keyspace is not None:
            await server.keyspace.close()
    print(f"{name}: {elapsed / (count * per_read) * 1e9:.0f} ns per command ({count} reads)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("read", choices=sorted(READS))
    parser.add_argument("count", type=int, nargs="?", default=100_000)
    args = parser.parse_args()
    asyncio.run(main(args.read, args.count))
