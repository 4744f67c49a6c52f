"""bus.aio across processes: an asyncio reader and writer (AsyncClient, messages, publish)
against a real server, the other side a forked process with the blocking Client."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
import uvloop

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from postoffice.bus import AsyncClient, Client, aio
from tests.integration.test_bus_server import WAIT_S, Bus, expect, fork, served_bus, until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

COUNT = 500
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    yield from served_bus(tmp_path)


def run(loop: str, main: Coroutine[Any, Any, Any]) -> Any:
    """Run `main` on a fresh loop of that kind (made after any fork, never inherited)."""
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        return runner.run(main)


def payload(n: int) -> bytes:
    return b"message %06d;" % n * (1 + n % 7)


def _publish(conn: Connection, socket_path: Path, count: int, *, hold: bool = False) -> int:
    """Publish `count` messages reliably once told "go" (with `hold`, also register only
    when told "register")."""
    if hold:
        assert conn.recv() == "register"
    with Client(socket_path, name="blocking writer") as client:
        publisher = client.create_publisher("aio", slot_size=128, num_slots=8, reliable=True)
        conn.send(("registered", None))
        assert conn.recv() == "go"
        for n in range(count):
            while publisher.publish_bytes(payload(n)) is None:
                assert publisher.wait(WAIT_S), f"no slot for message {n}"
        return publisher.published


def _read(conn: Connection, socket_path: Path, count: int) -> list[bytes]:
    with Client(socket_path, name="blocking reader") as client:
        subscriber = client.create_subscriber("aio", reliable=True, num_slots=8)
        conn.send(("registered", None))
        got: list[bytes] = []
        while len(got) < count:
            message = subscriber.read()
            if message is None:
                assert subscriber.wait(WAIT_S), f"message {len(got)} did not come"
                continue
            with message:
                got.append(bytes(message.data))
        return got


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_an_asyncio_reader_receives_every_message_of_another_process(bus: Bus, loop: str) -> None:
    writer, writer_conn = fork(_publish, bus.socket, COUNT)
    expect(writer_conn, "registered")

    async def main() -> list[bytes]:
        async with await AsyncClient.connect(bus.socket, name="asyncio reader") as client:
            subscriber = await client.create_subscriber("aio", reliable=True)
            writer_conn.send("go")
            got: list[bytes] = []
            async with asyncio.timeout(WAIT_S * 3):
                async for message in aio.messages(subscriber, timeout_s=WAIT_S):
                    with message:
                        got.append(bytes(message.data))
                    if len(got) == COUNT:
                        break
            assert subscriber.drops == 0
            [info] = await client.channel_info("aio")
            assert info.subscribers == 1  # the writer may be gone already
            await client.remove_subscriber(subscriber)
            return got

    assert run(loop, main()) == [payload(n) for n in range(COUNT)]
    assert expect(writer_conn) == COUNT
    writer.join(WAIT_S)
    assert writer.exitcode == 0
    until(lambda: len(bus.files()) == 8, "the channel removed with its last user")


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_an_asyncio_reliable_writer_waits_for_a_reader_in_another_process(
    bus: Bus, loop: str
) -> None:
    """Eight slots, 500 messages: the writer must wait on the loop for the reader's
    releases hundreds of times, and loses nothing."""
    reader, reader_conn = fork(_read, bus.socket, COUNT)
    expect(reader_conn, "registered")

    async def main() -> tuple[int, int]:
        async with await AsyncClient.connect(bus.socket, name="asyncio writer") as client:
            publisher = await client.create_publisher(
                "aio", slot_size=128, num_slots=8, reliable=True
            )
            waited = 0
            async with asyncio.timeout(WAIT_S * 3):
                for n in range(COUNT):
                    if publisher.publish_bytes(payload(n)) is not None:
                        continue
                    waited += 1
                    assert await aio.publish(publisher, payload(n), timeout_s=WAIT_S) is not None
            return publisher.published, waited

    published, waited = run(loop, main())
    assert published == COUNT
    assert waited > 0, "the writer never had to wait: the test proved nothing"
    assert expect(reader_conn) == [payload(n) for n in range(COUNT)]
    reader.join(WAIT_S)
    assert reader.exitcode == 0


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_an_asyncio_reader_that_came_first_follows_its_channel_to_the_publisher(
    bus: Bus, loop: str
) -> None:
    """Subscribed before any publisher (a placeholder channel), the reader sleeps in
    aio.messages while a writer process creates the channel for real and publishes."""

    # Forked now, before the loop and its worker threads exist; it waits to be told.
    writer, writer_conn = fork(functools.partial(_publish, hold=True), bus.socket, COUNT)

    async def main() -> list[bytes]:
        async with await AsyncClient.connect(bus.socket, name="early reader") as client:
            subscriber = await client.create_subscriber("aio", reliable=True)
            [info] = await client.channel_info("aio")
            assert info.publishers == 0
            writer_conn.send("register")
            expect(writer_conn, "registered")
            writer_conn.send("go")
            got: list[bytes] = []
            async with asyncio.timeout(WAIT_S * 3):
                async for message in aio.messages(subscriber, timeout_s=WAIT_S):
                    with message:
                        got.append(bytes(message.data))
                    if len(got) == COUNT:
                        break
            assert expect(writer_conn) == COUNT
            writer.join(WAIT_S)
            assert writer.exitcode == 0
            return got

    assert run(loop, main()) == [payload(n) for n in range(COUNT)]
