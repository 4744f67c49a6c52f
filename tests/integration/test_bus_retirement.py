"""Retirement notifications through a real server: readers in their own processes, one
of them killed while it holds the message."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from postoffice.bus import BusError, Client
from postoffice.bus.triggers import poll_readable
from tests.integration.test_bus_server import WAIT_S, Bus, expect, fork, served_bus

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    yield from served_bus(tmp_path)


def _reader(conn: Connection, socket_path: Path, hang: bool) -> int:
    """Read one message; release it, or with `hang` hold it until killed."""
    with Client(socket_path, name="reader") as client:
        subscriber = client.create_subscriber("retire", reliable=True)
        conn.send(("registered", None))
        deadline = time.monotonic() + WAIT_S
        message = subscriber.read()
        while message is None:
            assert subscriber.wait(max(0.0, deadline - time.monotonic())), "nothing came"
            message = subscriber.read()
        conn.send(("read", message.ordinal))
        if hang:
            time.sleep(WAIT_S * 6)  # killed long before
        message.release()
        return message.ordinal


def test_a_message_retires_once_one_reader_released_and_the_other_was_killed(
    bus: Bus,
) -> None:
    with bus.client("writer") as client:
        publisher = client.create_publisher("retire", num_slots=8, reliable=True, retirement=True)
        releasing, releasing_conn = fork(_reader, bus.socket, False)
        expect(releasing_conn, "registered")
        hanging, hanging_conn = fork(_reader, bus.socket, True)
        expect(hanging_conn, "registered")
        assert publisher.publish_bytes(b"for two readers") == 1
        assert expect(releasing_conn, "read") == 1
        assert expect(hanging_conn, "read") == 1
        assert expect(releasing_conn) == 1
        releasing.join(WAIT_S)
        assert releasing.exitcode == 0
        # One reader still holds it: nothing retired yet.
        assert not poll_readable(publisher.retirement_fileno(), 0.2)
        assert publisher.retired() == []
        assert hanging.pid is not None
        os.kill(hanging.pid, signal.SIGKILL)
        hanging.join(WAIT_S)
        # The server cleans the dead reader's hold out and reports the retirement.
        assert poll_readable(publisher.retirement_fileno(), WAIT_S)
        assert [ordinal for _, ordinal in publisher.retired()] == [1]
        # With no reader left, the next message retires as it is published.
        assert publisher.publish_bytes(b"alone") == 2
        assert [ordinal for _, ordinal in publisher.retired()] == [2]


def test_a_virtual_channel_publisher_is_refused_retirement(bus: Bus) -> None:
    with bus.client("writer") as client:
        with pytest.raises(BusError, match="retirement"):
            client.create_publisher("vchan", mux="mux", num_slots=8, retirement=True)
        publisher = client.create_publisher("vchan", mux="mux", num_slots=8)
        assert publisher.publish_bytes(b"x") == 1
