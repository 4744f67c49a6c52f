"""Talking to a CommandConnection over the fake transport, for the keyspace tests: the
commands' bytes, and what the connection wrote once the loop has turned."""

from __future__ import annotations

import asyncio

from postoffice.command.server import CommandConnection
from postoffice.core.resp import encode_command
from tests.fakes import FakeTransport


def wire(*commands: list[bytes]) -> bytes:
    return b"".join(encode_command(c) for c in commands)


async def say(conn: CommandConnection, t: FakeTransport, *commands: list[bytes]) -> bytes:
    """Send `commands`; what is written once the loop has turned: a write's reply waits for
    its record's write(2) at the end of the iteration, even with fsync `never`."""
    conn.data_received(wire(*commands))
    return await taken(t)


async def taken(t: FakeTransport) -> bytes:
    """What `t` was written once the loop has turned (a write's reply leaves then)."""
    await asyncio.sleep(0)
    return t.take()
