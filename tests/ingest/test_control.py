"""The ingest control port over an in-memory transport, with a fake IngestControl."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import pytest

from postoffice.core.clock import FakeClock
from postoffice.core.connections import ConnectionLimits, ConnectionManager
from postoffice.core.resp import (
    NIL,
    Array,
    Integer,
    Map,
    Reply,
    bulk,
    encode_command,
    encode_resp,
    encode_resp3,
)
from postoffice.core.transport import ConnState
from postoffice.ingest.commands import TABLE, IngestControl, config_items, to_reply, upload_line
from postoffice.ingest.config import IngestConfig
from postoffice.ingest.control import ControlConnection
from postoffice.ingest.errors import UnknownFileError
from postoffice.ingest.messages import MAX_STATUS_RANGES, FileId, file_id_hex
from postoffice.ingest.patches import PayloadInfo
from postoffice.ingest.ttl import CleanupReport
from tests.fakes import FakeTransport

ID1 = FileId(bytes(range(16)))
ID2 = FileId(b"\xff" * 16)
HEX1 = file_id_hex(ID1)
HEX2 = file_id_hex(ID2)
UNKNOWN_HEX = "ab" * 16


def payload(
    file_id: FileId, name: str, committed: set[int], total: int, created: float
) -> PayloadInfo:
    return PayloadInfo(
        file_id=file_id,
        name=name,
        total=total,
        size=1000,
        committed=frozenset(committed),
        created=created,
        updated=created,
    )


class FakeControl:
    """An IngestControl in memory; `gate`, while not set, holds every async call."""

    def __init__(self) -> None:
        self.config = IngestConfig(data_dir=Path("/srv/po"))
        self.gate = asyncio.Event()
        self.gate.set()
        self.calls: list[str] = []
        self.payloads = [
            payload(ID2, "later.bin", {0}, 3, created=20.0),
            payload(ID1, "big file.zst", {0, 3, 4, 9}, 10, created=10.0),
        ]
        self.report = CleanupReport(expired_uploads=("a",), expired_files=("f", "g"))
        self.fail_with: Exception | None = None

    async def _enter(self, call: str) -> None:
        self.calls.append(call)
        await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with

    async def set_x(self, x: int) -> None:
        await self._enter(f"set_x {x}")
        self.config = dataclasses.replace(self.config, x=x)

    def set_ttl(self, ttl_s: float) -> None:
        self.calls.append(f"set_ttl {ttl_s}")
        self.config = dataclasses.replace(self.config, ttl_s=ttl_s)

    def set_max_uploads(self, max_uploads: int) -> None:
        self.calls.append(f"set_max_uploads {max_uploads}")
        self.config = dataclasses.replace(self.config, max_uploads=max_uploads)

    def set_output_limits(
        self, *, max_output_bytes: int | None = None, max_output_ratio: int | None = None
    ) -> None:
        self.calls.append(f"set_output_limits {max_output_bytes} {max_output_ratio}")
        config = self.config
        self.config = dataclasses.replace(
            config,
            max_output_bytes=config.max_output_bytes
            if max_output_bytes is None
            else max_output_bytes,
            max_output_ratio=config.max_output_ratio
            if max_output_ratio is None
            else max_output_ratio,
        )

    def status(self) -> dict[str, object]:
        if self.fail_with is not None:
            raise self.fail_with
        return {
            "x": self.config.x,
            "ttl_s": self.config.ttl_s,
            "data_ports": [7100, 7101],
            "uploads_in_progress": len(self.payloads),
        }

    def uploads(self) -> list[PayloadInfo]:
        return list(self.payloads)

    def missing(self, file_id: bytes) -> tuple[tuple[int, int], ...]:
        for info in self.payloads:
            if info.file_id == file_id:
                return info.missing
        raise UnknownFileError(f"no upload {file_id.hex()}")

    async def abort(self, file_id: bytes) -> bool:
        await self._enter(f"abort {file_id.hex()}")
        before = len(self.payloads)
        self.payloads = [p for p in self.payloads if p.file_id != file_id]
        return len(self.payloads) < before

    async def cleanup_now(self) -> CleanupReport:
        await self._enter("cleanup")
        return self.report


class Harness:
    def __init__(self, token: str | None = None, max_connections: int = 100) -> None:
        self.manager = ConnectionManager(
            ConnectionLimits(max_connections=max_connections), clock=FakeClock()
        )
        self.control = FakeControl()
        self.token = token

    def connect(self) -> tuple[ControlConnection, FakeTransport]:
        seam: IngestControl = self.control  # the fake satisfies the seam
        conn = ControlConnection(self.manager, seam, self.token)
        transport = FakeTransport(conn)
        conn.connection_made(transport)
        return conn, transport


@pytest.fixture
def harness() -> Harness:
    return Harness()


def cmd(*args: str | bytes) -> bytes:
    return encode_command([a.encode() if isinstance(a, str) else a for a in args])


def send(conn: ControlConnection, t: FakeTransport, *args: str | bytes) -> bytes:
    conn.data_received(cmd(*args))
    return t.take()


def state(conn: ControlConnection) -> ConnState:
    """Read afresh (mypy would otherwise keep an earlier narrowing)."""
    return conn.state


async def settle(conn: ControlConnection) -> None:
    """Let deferred commands run until none is left (bounded: never hangs)."""
    for _ in range(100):
        await asyncio.sleep(0)
        if conn.running is None:
            return
    raise AssertionError(f"deferred command still running: {conn!r}")


async def call(conn: ControlConnection, t: FakeTransport, *args: str | bytes) -> bytes:
    conn.data_received(cmd(*args))
    await settle(conn)
    return t.take()


def err(message: str, code: str = "ERR") -> bytes:
    return f"-{code} {message}\r\n".encode()


# -- connection commands --------------------------------------------------------------------


async def test_ping_echo_in_resp(harness: Harness) -> None:
    conn, t = harness.connect()
    assert send(conn, t, "PING") == b"+PONG\r\n"
    assert send(conn, t, "ping", "hi there") == b"$8\r\nhi there\r\n"
    assert send(conn, t, "ECHO", "a\r\nb") == b"$4\r\na\r\nb\r\n"
    assert state(conn) is ConnState.READING_HEADER


async def test_text_dialect_speaks_plain_lines(harness: Harness) -> None:
    conn, t = harness.connect()
    conn.data_received(b"PING\nnope a b\nMISSING " + HEX1.encode() + b"\nCONFIG GET x\n")
    assert t.take() == b"PONG\nERR unknown command 'nope'\n1-2\n5-8\nx\n4\n"
    assert not t.closed


async def test_text_dialect_waits_for_async_replies(harness: Harness) -> None:
    conn, t = harness.connect()
    conn.data_received(b"CLEANUP\nPING\n")
    await settle(conn)
    assert t.take() == b"3\nPONG\n"


async def test_inline_with_crlf_answers_in_resp(harness: Harness) -> None:
    conn, t = harness.connect()
    conn.data_received(b"PING\r\nECHO x\r\n")
    assert t.take() == b"+PONG\r\n$1\r\nx\r\n"


async def test_quit_replies_then_closes_and_ignores_the_rest(harness: Harness) -> None:
    conn, t = harness.connect()
    conn.data_received(cmd("PING") + cmd("QUIT") + cmd("PING"))
    assert t.take() == b"+PONG\r\n+OK\r\n"
    assert t.closed
    assert conn.close_reason == "client quit"


async def test_help_lists_every_command(harness: Harness) -> None:
    conn, t = harness.connect()
    conn.data_received(b"HELP\n")
    lines = t.take().decode().splitlines()
    assert len(lines) == len(TABLE)
    assert lines[0] == "PING [message] -- PONG, or the message"
    assert any(line.startswith("ABORT file_id -- ") for line in lines)


async def test_hello_3_switches_to_resp3_and_back(harness: Harness) -> None:
    conn, t = harness.connect()
    reply = send(conn, t, "HELLO", "3")
    assert reply.startswith(b"%7\r\n$6\r\nserver\r\n$17\r\npostoffice-ingest\r\n")
    assert b"$5\r\nproto\r\n:3\r\n" in reply
    assert send(conn, t, "CONFIG", "GET", "x") == b"%1\r\n$1\r\nx\r\n$1\r\n4\r\n"
    assert send(conn, t, "HELLO", "2").startswith(b"*14\r\n")
    assert send(conn, t, "CONFIG", "GET", "x") == b"*2\r\n$1\r\nx\r\n$1\r\n4\r\n"


async def test_hello_without_version_keeps_the_protocol(harness: Harness) -> None:
    conn, t = harness.connect()
    assert b"$5\r\nproto\r\n:2\r\n" in send(conn, t, "HELLO")
    assert conn.protocol == 2


@pytest.mark.parametrize(
    ("args", "reply"),
    [
        (("HELLO", "4"), err("unsupported protocol version '4', expected 2 or 3", "NOPROTO")),
        (("HELLO", "x"), err("unsupported protocol version 'x', expected 2 or 3", "NOPROTO")),
        (("HELLO", "3", "BOGUS"), err("syntax error in HELLO option 'BOGUS'")),
        (("HELLO", "3", "AUTH", "u"), err("syntax error in HELLO option 'AUTH'")),
        (("HELLO", "3", "SETNAME", "n" * 257), err("client name of 257 bytes exceeds limit 256")),
    ],
)
async def test_hello_errors(harness: Harness, args: tuple[str, ...], reply: bytes) -> None:
    conn, t = harness.connect()
    assert send(conn, t, *args) == reply
    assert conn.protocol == 2


async def test_hello_setname(harness: Harness) -> None:
    conn, t = harness.connect()
    send(conn, t, "HELLO", "3", "SETNAME", "ops")
    assert conn.name == "ops"


# -- authentication -------------------------------------------------------------------------


@pytest.fixture
def secured() -> Harness:
    return Harness(token="s3cret")


@pytest.mark.parametrize(
    "args",
    [("PING",), ("STATUS",), ("CONFIG", "GET", "*"), ("CLEANUP",), ("NOPE",), ("ABORT",)],
)
async def test_commands_before_auth_get_noauth(secured: Harness, args: tuple[str, ...]) -> None:
    conn, t = secured.connect()
    assert send(conn, t, *args) == err("Authentication required.", "NOAUTH")
    assert secured.control.calls == []
    assert not t.closed


async def test_help_and_quit_need_no_auth(secured: Harness) -> None:
    conn, t = secured.connect()
    assert send(conn, t, "HELP").startswith(b"*%d\r\n" % len(TABLE))
    assert send(conn, t, "QUIT") == b"+OK\r\n"


async def test_auth_with_the_token_unlocks(secured: Harness) -> None:
    conn, t = secured.connect()
    assert send(conn, t, "AUTH", "wrong") == err(
        "invalid username-password pair or user is disabled.", "WRONGPASS"
    )
    assert send(conn, t, "PING") == err("Authentication required.", "NOAUTH")
    assert send(conn, t, "AUTH", "s3cret") == b"+OK\r\n"
    assert send(conn, t, "PING") == b"+PONG\r\n"


async def test_auth_with_user_default_only(secured: Harness) -> None:
    conn, t = secured.connect()
    assert send(conn, t, "AUTH", "admin", "s3cret") == err(
        "invalid username-password pair or user is disabled.", "WRONGPASS"
    )
    assert send(conn, t, "AUTH", "default", "s3cret") == b"+OK\r\n"
    assert conn.authenticated


async def test_failed_auth_keeps_an_earlier_success(secured: Harness) -> None:
    conn, t = secured.connect()
    send(conn, t, "AUTH", "s3cret")
    send(conn, t, "AUTH", "wrong")
    assert send(conn, t, "PING") == b"+PONG\r\n"


async def test_hello_with_auth_option(secured: Harness) -> None:
    conn, t = secured.connect()
    reply = send(conn, t, "HELLO", "3", "AUTH", "default", "s3cret")
    assert reply.startswith(b"%7\r\n")
    assert send(conn, t, "PING") == b"+PONG\r\n"


async def test_hello_before_auth_is_refused(secured: Harness) -> None:
    conn, t = secured.connect()
    assert send(conn, t, "HELLO", "3") == err(
        "HELLO must be called with the client already authenticated, "
        "or with HELLO <proto> AUTH <user> <password>",
        "NOAUTH",
    )
    assert conn.protocol == 2


async def test_auth_without_a_token_configured(harness: Harness) -> None:
    conn, t = harness.connect()
    assert send(conn, t, "AUTH", "x") == err("AUTH called but no control token is configured")


async def test_text_dialect_auth(secured: Harness) -> None:
    conn, t = secured.connect()
    conn.data_received(b"STATUS\nAUTH s3cret\nPING\n")
    assert t.take() == b"NOAUTH Authentication required.\nOK\nPONG\n"


# -- ingest commands ------------------------------------------------------------------------


async def test_status_is_a_map(harness: Harness) -> None:
    conn, t = harness.connect()
    expected = Map(
        pairs=[
            (bulk("x"), Integer(value=4)),
            (bulk("ttl_s"), bulk("86400")),
            (bulk("data_ports"), Array(items=[Integer(value=7100), Integer(value=7101)])),
            (bulk("uploads_in_progress"), Integer(value=2)),
        ]
    )
    assert send(conn, t, "STATUS") == encode_resp(expected)
    send(conn, t, "HELLO", "3")
    assert send(conn, t, "STATUS") == encode_resp3(expected)


@pytest.mark.parametrize(
    ("value", "reply"),
    [
        (True, Integer(value=1)),
        (False, Integer(value=0)),
        (7, Integer(value=7)),
        (86400.0, bulk("86400")),
        (0.25, bulk("0.25")),
        ("text", bulk("text")),
        (b"raw", bulk(b"raw")),
        (None, NIL),
        ([1, "a"], Array(items=[Integer(value=1), bulk("a")])),
        ((), Array(items=[])),
        ({"k": {"n": None}}, Map(pairs=[(bulk("k"), Map(pairs=[(bulk("n"), NIL)]))])),
        (Path("/x"), bulk("/x")),
    ],
)
def test_to_reply(value: object, reply: Reply) -> None:
    assert to_reply(value) == reply


async def test_uploads_lists_oldest_first(harness: Harness) -> None:
    conn, t = harness.connect()
    assert send(conn, t, "UPLOADS") == encode_resp(
        Array(
            items=[
                bulk(f"{HEX1} big file.zst 4/10 missing=1-2,5-8"),
                bulk(f"{HEX2} later.bin 1/3 missing=1-2"),
            ]
        )
    )


async def test_uploads_empty(harness: Harness) -> None:
    harness.control.payloads = []
    conn, t = harness.connect()
    assert send(conn, t, "UPLOADS") == b"*0\r\n"


def test_upload_line_of_a_complete_upload() -> None:
    info = payload(ID1, "a.zst", {0, 1}, 2, created=0.0)
    assert upload_line(info) == f"{HEX1} a.zst 2/2 missing=none"


def test_upload_line_shows_the_first_ranges_only() -> None:
    info = payload(ID1, "holes.zst", set(range(0, 100, 2)), 100, created=0.0)
    shown = ",".join(f"{i}-{i}" for i in range(1, 33, 2))
    assert upload_line(info) == f"{HEX1} holes.zst 50/100 missing={shown},...(+34)"


async def test_missing_lists_at_most_max_status_ranges(harness: Harness) -> None:
    total = 2 * MAX_STATUS_RANGES + 10
    harness.control.payloads = [payload(ID1, "x", set(range(0, total, 2)), total, created=0.0)]
    conn, t = harness.connect()
    conn.data_received(cmd("MISSING", HEX1))
    reply = t.take()
    assert reply.startswith(b"*%d\r\n$3\r\n1-1\r\n" % MAX_STATUS_RANGES)


async def test_missing(harness: Harness) -> None:
    conn, t = harness.connect()
    assert send(conn, t, "MISSING", HEX1) == b"*2\r\n$3\r\n1-2\r\n$3\r\n5-8\r\n"
    assert send(conn, t, "MISSING", HEX1.upper()) == b"*2\r\n$3\r\n1-2\r\n$3\r\n5-8\r\n"


@pytest.mark.parametrize(
    ("arg", "reply"),
    [
        (UNKNOWN_HEX, err(f"unknown upload {UNKNOWN_HEX}")),
        ("zz", err("invalid file id 'zz': expected 32 hex digits")),
        ("0" * 33, err(f"invalid file id '{'0' * 33}': expected 32 hex digits")),
        (b"\xff" * 32, err("invalid file id '" + "\ufffd" * 32 + "': expected 32 hex digits")),
    ],
)
async def test_missing_errors(harness: Harness, arg: str | bytes, reply: bytes) -> None:
    conn, t = harness.connect()
    assert send(conn, t, "MISSING", arg) == reply


async def test_abort(harness: Harness) -> None:
    conn, t = harness.connect()
    assert await call(conn, t, "ABORT", HEX1) == b"+OK\r\n"
    assert [p.file_id for p in harness.control.payloads] == [ID2]
    assert await call(conn, t, "ABORT", HEX1) == err(f"unknown upload {HEX1}")
    assert await call(conn, t, "ABORT", "nothex") == err(
        "invalid file id 'nothex': expected 32 hex digits"
    )
    assert harness.control.calls == [f"abort {HEX1}", f"abort {HEX1}"]


async def test_cleanup_counts_what_was_removed(harness: Harness) -> None:
    conn, t = harness.connect()
    assert await call(conn, t, "CLEANUP") == b":3\r\n"
    assert harness.control.calls == ["cleanup"]


# -- CONFIG -------------------------------------------------------------------------------


async def test_config_get_all(harness: Harness) -> None:
    conn, t = harness.connect()
    reply = send(conn, t, "CONFIG", "GET", "*")
    assert reply == encode_resp(
        Map(
            pairs=[
                (bulk("x"), bulk("4")),
                (bulk("ttl"), bulk("86400")),
                (bulk("max-output-bytes"), bulk("4294967296")),
                (bulk("max-output-ratio"), bulk("100")),
                (bulk("max-uploads"), bulk("10000")),
                (bulk("sys-base"), bulk("7000")),
                (bulk("data-base"), bulk("7100")),
                (bulk("files-dir"), bulk("/srv/po/files")),
            ]
        )
    )


async def test_config_get_patterns(harness: Harness) -> None:
    conn, t = harness.connect()
    assert send(conn, t, "config", "get", "*-BASE", "TTL") == encode_resp(
        Map(
            pairs=[
                (bulk("sys-base"), bulk("7000")),
                (bulk("data-base"), bulk("7100")),
                (bulk("ttl"), bulk("86400")),
            ]
        )
    )
    assert send(conn, t, "CONFIG", "GET", "nothing") == b"*0\r\n"


async def test_config_get_matches_redis_globs_not_shell_ones(harness: Harness) -> None:
    """`[^...]` negates, as in Redis's globs (a shell glob would read `^` as a byte)."""
    conn, t = harness.connect()
    assert send(conn, t, "CONFIG", "GET", "t[^x]l") == encode_resp(
        Map(pairs=[(bulk("ttl"), bulk("86400"))])
    )


async def test_config_get_refuses_a_pattern_over_the_length_limit(harness: Harness) -> None:
    conn, t = harness.connect()
    assert send(conn, t, "CONFIG", "GET", "*" * 257) == err(
        "pattern of 257 bytes exceeds limit 256"
    )
    assert send(conn, t, "CONFIG", "GET", "*" * 255 + "x") == encode_resp(
        Map(pairs=[(bulk("x"), bulk("4"))])
    )


def test_config_items_show_fractional_ttl() -> None:
    assert config_items(IngestConfig(ttl_s=1.5))["ttl"] == "1.5"


async def test_config_set_x_scales_then_replies(harness: Harness) -> None:
    conn, t = harness.connect()
    assert await call(conn, t, "CONFIG", "SET", "x", "8") == b"+OK\r\n"
    assert harness.control.config.x == 8
    assert send(conn, t, "CONFIG", "GET", "x") == b"*2\r\n$1\r\nx\r\n$1\r\n8\r\n"


async def test_config_set_ttl(harness: Harness) -> None:
    conn, t = harness.connect()
    assert send(conn, t, "CONFIG", "SET", "TTL", "90.5") == b"+OK\r\n"
    assert harness.control.config.ttl_s == 90.5
    assert harness.control.calls == ["set_ttl 90.5"]


async def test_config_set_output_limits(harness: Harness) -> None:
    conn, t = harness.connect()
    assert send(conn, t, "CONFIG", "SET", "max-output-bytes", "1048576") == b"+OK\r\n"
    assert send(conn, t, "CONFIG", "SET", "MAX-OUTPUT-RATIO", "0") == b"+OK\r\n"
    assert (harness.control.config.max_output_bytes, harness.control.config.max_output_ratio) == (
        1048576,
        0,
    )
    assert harness.control.calls == [
        "set_output_limits 1048576 None",
        "set_output_limits None 0",
    ]
    assert send(conn, t, "CONFIG", "GET", "max-output-*") == encode_resp(
        Map(
            pairs=[
                (bulk("max-output-bytes"), bulk("1048576")),
                (bulk("max-output-ratio"), bulk("0")),
            ]
        )
    )


async def test_config_set_max_uploads(harness: Harness) -> None:
    conn, t = harness.connect()
    assert send(conn, t, "CONFIG", "SET", "Max-Uploads", "250") == b"+OK\r\n"
    assert harness.control.calls == ["set_max_uploads 250"]
    assert send(conn, t, "CONFIG", "GET", "max-uploads") == encode_resp(
        Map(pairs=[(bulk("max-uploads"), bulk("250"))])
    )


@pytest.mark.parametrize(
    ("args", "reply"),
    [
        (("SET", "x", "0"), err("setting 'x' must be between 1 and 64, got 0")),
        (("SET", "x", "65"), err("setting 'x' must be between 1 and 64, got 65")),
        (("SET", "x", "abc"), err("setting 'x' must be an integer, got 'abc'")),
        (("SET", "x", "4.0"), err("setting 'x' must be an integer, got '4.0'")),
        (("SET", "x", "9" * 30), err(f"setting 'x' must be an integer, got '{'9' * 30}'")),
        (("SET", "ttl", "0"), err("setting 'ttl_s' must be between 1 and 315360000, got 0.0")),
        (("SET", "ttl", "nan"), err("setting 'ttl_s' must be between 1 and 315360000, got nan")),
        (("SET", "ttl", "soon"), err("setting 'ttl' must be a number of seconds, got 'soon'")),
        (("SET", "sys-base", "1"), err("setting 'sys-base' is read-only")),
        (("SET", "files-dir", "/tmp"), err("setting 'files-dir' is read-only")),
        (
            ("SET", "max-output-bytes", "0"),
            err("setting 'max_output_bytes' must be between 1 and 1125899906842624, got 0"),
        ),
        (
            ("SET", "max-output-ratio", "-1"),
            err("setting 'max_output_ratio' must be between 0 and 1000000, got -1"),
        ),
        (
            ("SET", "max-output-ratio", "1e3"),
            err("setting 'max-output-ratio' must be an integer, got '1e3'"),
        ),
        (
            ("SET", "max-uploads", "0"),
            err("setting 'max_uploads' must be between 1 and 10000000, got 0"),
        ),
        (
            ("SET", "max-uploads", "many"),
            err("setting 'max-uploads' must be an integer, got 'many'"),
        ),
        (
            ("SET", "colour", "red"),
            err(
                "unknown setting 'colour', expected one of: x, ttl, max-output-bytes,"
                " max-output-ratio, max-uploads"
            ),
        ),
        (("SET", "x"), err("wrong number of arguments for 'config|set' command")),
        (("SET", "x", "1", "ttl", "2"), err("wrong number of arguments for 'config|set' command")),
        (("GET",), err("wrong number of arguments for 'config|get' command")),
        (
            ("BOGUS",),
            err("unknown subcommand or wrong number of arguments for 'BOGUS'. Try CONFIG HELP."),
        ),
        (
            ("HELP", "x"),
            err("unknown subcommand or wrong number of arguments for 'HELP'. Try CONFIG HELP."),
        ),
    ],
)
async def test_config_errors(harness: Harness, args: tuple[str, ...], reply: bytes) -> None:
    conn, t = harness.connect()
    assert await call(conn, t, "CONFIG", *args) == reply
    assert harness.control.config.x == 4
    assert harness.control.config.ttl_s == 86400.0
    assert harness.control.config.max_output_bytes == 4 * 1024**3
    assert harness.control.config.max_output_ratio == 100
    assert harness.control.config.max_uploads == 10_000
    assert not t.closed


async def test_config_help(harness: Harness) -> None:
    conn, t = harness.connect()
    conn.data_received(b"CONFIG HELP\n")
    lines = t.take().decode().splitlines()
    assert lines[0] == "CONFIG <subcommand> [<arg> ...]. Subcommands are:"
    assert len(lines) == 7


# -- dispatch errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "reply"),
    [
        (("FLUSHALL",), err("unknown command 'FLUSHALL'")),
        (("x" * 100,), err(f"unknown command '{'x' * 64}'")),
        (("ABORT",), err("wrong number of arguments for 'abort' command")),
        (("ABORT", HEX1, HEX2), err("wrong number of arguments for 'abort' command")),
        (("PING", "a", "b"), err("wrong number of arguments for 'ping' command")),
        (("ECHO",), err("wrong number of arguments for 'echo' command")),
        (("STATUS", "x"), err("wrong number of arguments for 'status' command")),
        (("MISSING",), err("wrong number of arguments for 'missing' command")),
        (("CLEANUP", "now"), err("wrong number of arguments for 'cleanup' command")),
        (("AUTH",), err("wrong number of arguments for 'auth' command")),
        (("AUTH", "a", "b", "c"), err("wrong number of arguments for 'auth' command")),
        (("CONFIG",), err("wrong number of arguments for 'config' command")),
    ],
)
async def test_dispatch_errors(harness: Harness, args: tuple[str, ...], reply: bytes) -> None:
    conn, t = harness.connect()
    assert send(conn, t, *args) == reply
    assert harness.control.calls == []
    assert send(conn, t, "PING") == b"+PONG\r\n"


async def test_bug_behind_the_seam_is_answered(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    harness.control.fail_with = RuntimeError("boom")
    conn, t = harness.connect()
    with caplog.at_level(logging.ERROR, logger="postoffice.ingest.control"):
        assert send(conn, t, "STATUS") == err("internal error: RuntimeError('boom')")
        assert await call(conn, t, "CLEANUP") == err("internal error: RuntimeError('boom')")
    assert caplog.text.count("control command failed") == 2
    assert send(conn, t, "PING") == b"+PONG\r\n"


async def test_protocol_error_replies_then_closes(harness: Harness) -> None:
    conn, t = harness.connect()
    conn.data_received(cmd("PING") + b"*1\r\n$x\r\n" + cmd("PING"))
    assert t.take() == b"+PONG\r\n-ERR Protocol error: invalid bulk length b'x'\r\n"
    assert t.closed
    assert conn.close_reason == "protocol error"


async def test_oversized_inline_line_is_refused(harness: Harness) -> None:
    conn, t = harness.connect()
    conn.data_received(b"ECHO " + b"x" * 5000)
    assert t.take() == err("Protocol error: inline request of 5005 bytes exceeds limit 4096")
    assert t.closed


async def test_partial_command_waits_for_the_rest(harness: Harness) -> None:
    conn, t = harness.connect()
    whole = cmd("ECHO", "split")
    conn.data_received(whole[:7])
    assert t.take() == b""
    assert state(conn) is ConnState.READING_PAYLOAD
    conn.data_received(whole[7:])
    assert t.take() == b"$5\r\nsplit\r\n"
    assert state(conn) is ConnState.READING_HEADER


async def test_over_max_connections_is_refused_with_an_error() -> None:
    h = Harness(max_connections=1)
    h.connect()
    _, t = h.connect()
    assert t.take() == b"-ERR max number of clients reached\r\n"
    assert t.closed


# -- async commands keep replies in order ----------------------------------------------------


async def test_pipeline_with_an_async_command_keeps_order(harness: Harness) -> None:
    harness.control.gate.clear()
    conn, t = harness.connect()
    conn.data_received(cmd("PING") + cmd("CONFIG", "SET", "x", "8") + cmd("ECHO", "after"))
    assert t.take() == b"+PONG\r\n"
    await asyncio.sleep(0)
    assert harness.control.calls == ["set_x 8"]
    assert conn.running == "config set x"
    assert not t.reading  # paused: the next commands wait in the kernel, not in our buffer
    assert state(conn) is ConnState.PROCESSING
    assert not conn.can_idle_close()
    assert "running='config set x'" in repr(conn)
    conn.data_received(cmd("CONFIG", "GET", "x"))  # bytes already in flight when paused
    await asyncio.sleep(0)
    assert t.take() == b""
    harness.control.gate.set()
    await settle(conn)
    assert t.take() == b"+OK\r\n$5\r\nafter\r\n*2\r\n$1\r\nx\r\n$1\r\n8\r\n"
    assert t.reading
    assert state(conn) is ConnState.READING_HEADER
    assert conn.can_idle_close()


async def test_consecutive_async_commands_run_one_at_a_time(harness: Harness) -> None:
    conn, t = harness.connect()
    conn.data_received(
        cmd("ABORT", HEX2) + cmd("CLEANUP") + cmd("ABORT", UNKNOWN_HEX) + cmd("PING")
    )
    await settle(conn)
    assert t.take() == b"+OK\r\n:3\r\n" + err(f"unknown upload {UNKNOWN_HEX}") + b"+PONG\r\n"
    assert harness.control.calls == [f"abort {HEX2}", "cleanup", f"abort {UNKNOWN_HEX}"]
    assert state(conn) is ConnState.READING_HEADER


async def test_async_command_then_partial_command(harness: Harness) -> None:
    conn, t = harness.connect()
    conn.data_received(cmd("CLEANUP") + cmd("ECHO", "abc")[:5])
    await settle(conn)
    assert t.take() == b":3\r\n"
    assert state(conn) is ConnState.READING_PAYLOAD


async def test_async_command_then_protocol_error(harness: Harness) -> None:
    conn, t = harness.connect()
    conn.data_received(cmd("CLEANUP") + b"*1\r\n$-5\r\n")
    await settle(conn)
    assert t.take() == b":3\r\n-ERR Protocol error: invalid bulk length -5\r\n"
    assert t.closed


async def test_async_error_reply_keeps_the_connection(harness: Harness) -> None:
    conn, t = harness.connect()
    conn.data_received(cmd("CONFIG", "SET", "x", "100") + cmd("PING"))
    await settle(conn)
    assert t.take() == err("setting 'x' must be between 1 and 64, got 100") + b"+PONG\r\n"


async def test_client_gone_while_async_work_runs(harness: Harness) -> None:
    harness.control.gate.clear()
    conn, t = harness.connect()
    conn.data_received(cmd("ABORT", HEX1) + cmd("PING"))
    await asyncio.sleep(0)
    conn.connection_lost(None)
    harness.control.gate.set()
    await settle(conn)
    assert t.take() == b""
    assert [p.file_id for p in harness.control.payloads] == [ID2]  # the abort still happened
    assert harness.manager.active == 0


async def test_shutdown_waits_for_the_async_reply(harness: Harness) -> None:
    harness.control.gate.clear()
    conn, t = harness.connect()
    conn.data_received(cmd("CLEANUP") + cmd("PING"))
    await asyncio.sleep(0)
    conn.shutdown_requested()
    assert not t.closed
    harness.control.gate.set()
    await settle(conn)
    assert t.take() == b":3\r\n"
    assert t.closed
    assert conn.close_reason == "server shutdown"


async def test_shutdown_of_an_idle_connection_closes_it(harness: Harness) -> None:
    conn, t = harness.connect()
    conn.shutdown_requested()
    assert t.closed


async def test_repr_shows_auth(secured: Harness) -> None:
    conn, t = secured.connect()
    assert (
        repr(conn) == "<ControlConnection id=1 127.0.0.1:50000 READING_HEADER auth=no requests=0>"
    )
    send(conn, t, "AUTH", "s3cret")
    assert "auth=yes requests=1>" in repr(conn)
