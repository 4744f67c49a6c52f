"""Both ports speaking the command protocol refuse AUTH and HELLO alike, byte for byte."""

from __future__ import annotations

from tests.command.test_server import Harness as CommandHarness
from tests.command.test_server import send as command_send
from tests.ingest.test_control import Harness as ControlHarness
from tests.ingest.test_control import send as control_send

SCRIPT: list[tuple[tuple[bytes, ...], bytes]] = [
    ((b"PING",), b"-NOAUTH Authentication required.\r\n"),
    (
        (b"HELLO", b"3"),
        b"-NOAUTH HELLO must be called with the client already authenticated, "
        b"or with HELLO <proto> AUTH <user> <password>\r\n",
    ),
    ((b"HELLO", b"4"), b"-NOPROTO unsupported protocol version '4', expected 2 or 3\r\n"),
    (
        (b"AUTH", b"wrong"),
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    ),
    ((b"AUTH", b"default", b"s3cret"), b"+OK\r\n"),
    ((b"PING",), b"+PONG\r\n"),
]


async def test_command_server_and_ingest_control_refuse_with_the_same_bytes() -> None:
    command = CommandHarness(requirepass="s3cret")
    try:
        conn, t = command.connect()
        command_replies = [command_send(conn, t, *args) for args, _ in SCRIPT]
    finally:
        command.server.pool.close()
    control_conn, control_t = ControlHarness(token="s3cret").connect()
    control_replies = [control_send(control_conn, control_t, *args) for args, _ in SCRIPT]
    expected = [reply for _, reply in SCRIPT]
    assert command_replies == expected
    assert control_replies == expected


async def test_an_unknown_user_is_refused_alike() -> None:
    """A first failure is answered at once on both ports (later ones in a row are
    throttled: tests/command and tests/ingest check that)."""
    wrongpass = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    command = CommandHarness(requirepass="s3cret")
    try:
        conn, t = command.connect()
        assert command_send(conn, t, b"AUTH", b"admin", b"s3cret") == wrongpass
    finally:
        command.server.pool.close()
    control_conn, control_t = ControlHarness(token="s3cret").connect()
    assert control_send(control_conn, control_t, b"AUTH", b"admin", b"s3cret") == wrongpass
