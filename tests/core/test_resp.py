"""The pure RESP and text-line codec: table tests, split feeds, round trips, robustness."""

from __future__ import annotations

import contextlib
import gc
import time
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postoffice.core.resp import (
    HELLO_BEFORE_AUTH,
    MAX_ARRAY_ITEMS,
    NEED_DATA,
    NIL,
    NOAUTH,
    OK,
    PONG,
    PROTOCOL_VERSIONS,
    Array,
    Bulk,
    Command,
    Dialect,
    Error,
    Integer,
    NoAuthError,
    NoProtoError,
    Reply,
    RespLimitError,
    RespParser,
    RespProtocolError,
    RespRefusal,
    SimpleString,
    WrongPassError,
    bulk,
    check_credentials,
    encode_command,
    encode_resp,
    encode_text,
    hello_protocol,
)
from tests.strategies import command_args, cut_points, inline_word


def parse_all(data: bytes, parser: RespParser | None = None) -> list[Command]:
    parser = parser or RespParser()
    parser.feed(data)
    out: list[Command] = []
    while (event := parser.next_event()) is not NEED_DATA:
        assert isinstance(event, Command)
        out.append(event)
    return out


def parse_split(chunks: list[bytes], parser: RespParser | None = None) -> list[Command]:
    parser = parser or RespParser()
    out: list[Command] = []
    for chunk in chunks:
        parser.feed(chunk)
        while (event := parser.next_event()) is not NEED_DATA:
            assert isinstance(event, Command)
            out.append(event)
    return out


GOOD = [
    (b"*1\r\n$4\r\nPING\r\n", [[b"PING"]], Dialect.RESP),
    (b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n", [[b"ECHO", b""]], Dialect.RESP),
    (b"*2\r\n$3\r\nSET\r\n$5\r\na\r\nb\n\r\n", [[b"SET", b"a\r\nb\n"]], Dialect.RESP),
    (b"PING\r\n", [[b"PING"]], Dialect.RESP),
    (b"PING\n", [[b"PING"]], Dialect.TEXT),
    (b"  echo   hello  world \n", [[b"echo", b"hello", b"world"]], Dialect.TEXT),
    (b"\n\r\nPING\n", [[b"PING"]], Dialect.TEXT),
    (b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n", [[b"PING"]], Dialect.RESP),
    (b"PING\nPING\r\n*1\r\n$4\r\nPING\r\n", [[b"PING"]] * 3, Dialect.TEXT),
    # Empty arrays, then lines that are not arrays: inline commands, as in Redis (the C
    # reader would make `%1` then `*0` a map with a list for its key, and fail).
    (b"*0\r\n%1\r\n*0\r\n%1\r\n", [[b"%1"], [b"%1"]], Dialect.RESP),
    # Whole reads of several commands (the C reader's path), odd ones among them.
    (
        b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nECHO\r\n$4\r\n\r\n\r\r\r\n*1\r\n$4\r\nPING\r\n",
        [[b"PING"], [b"ECHO", b"\r\n\r\r"], [b"PING"]],
        Dialect.RESP,
    ),
    (b"*1\r\n$4\r\nPING\r\nPING\r\n", [[b"PING"], [b"PING"]], Dialect.RESP),
    (b"*1\r\n$4\r\nPING\r\n*0\r\n*1\r\n$1\r\nx\r\n", [[b"PING"], [b"x"]], Dialect.RESP),
    (b"*1\r\n$04\r\nPING\r\n*1\r\n$4\r\nPING\r\n", [[b"PING"]] * 2, Dialect.RESP),
]


@pytest.mark.parametrize(("wire", "expected", "dialect"), GOOD)
def test_parses_table(wire: bytes, expected: list[list[bytes]], dialect: Dialect) -> None:
    parser = RespParser()
    assert [c.args for c in parse_all(wire, parser)] == expected
    assert parser.dialect is dialect
    assert not parser.has_partial()


@pytest.mark.parametrize(("wire", "expected", "dialect"), GOOD)
def test_every_cut_point_gives_the_same_commands(
    wire: bytes, expected: list[list[bytes]], dialect: Dialect
) -> None:
    for head, tail in cut_points(wire):
        assert [c.args for c in parse_split([head, tail])] == expected


@pytest.mark.parametrize(("wire", "expected", "dialect"), GOOD)
def test_one_byte_at_a_time(wire: bytes, expected: list[list[bytes]], dialect: Dialect) -> None:
    chunks = [wire[i : i + 1] for i in range(len(wire))]
    assert [c.args for c in parse_split(chunks)] == expected


BAD = [
    (b"*x\r\n", RespProtocolError, r"^Protocol error: invalid multibulk length b'x'$"),
    (b"*1\r\n+PING\r\n", RespProtocolError, r"^Protocol error: expected '\$', got '\+'$"),
    (b"*1\r\n$x\r\n", RespProtocolError, r"^Protocol error: invalid bulk length b'x'$"),
    (b"*1\r\n$-3\r\n", RespProtocolError, r"^Protocol error: invalid bulk length -3$"),
    (b"*1\r\n$2\r\nabcd\r\n", RespProtocolError, r"^Protocol error: bulk string not followed"),
    (b"*" + b"9" * 40, RespProtocolError, r"^Protocol error: multibulk length line longer"),
    (b"*1\r\n$" + b"9" * 40, RespProtocolError, r"^Protocol error: bulk length line longer"),
    # Whole reads that the C reader would take, or take wrongly, were it not checked.
    (b"*1\r\n$2\r\nabXY", RespProtocolError, r"^Protocol error: bulk string not followed"),
    (b"*1\r\n$2\r\na\r\n\n", RespProtocolError, r"^Protocol error: bulk string not followed"),
    (
        b"*1\r\n$4\r\nPING\r\n*1\r\n$2\r\nabXY*1\r\n$4\r\nPING\r\n",
        RespProtocolError,
        r"^Protocol error: bulk string not followed",
    ),
    (
        b"*1\r\n$4\r\nPING\r\n*1\r\n$2\r\na\r\n\n*1\r\n$4\r\nPING\r\n",
        RespProtocolError,
        r"^Protocol error: bulk string not followed",
    ),
    (b"*1\r\n$4\r\nPING\r\n*1\r\n+PING\r\n", RespProtocolError, r"^Protocol error: expected '\$'"),
    (b"*1\r\n*1\r\n$1\r\nx\r\n", RespProtocolError, r"^Protocol error: expected '\$', got '\*'$"),
    # A RESP3 map whose key is an array: the C reader cannot make it a dict key.
    (b"*1\r\n%1\r\n*1\r\n%1\r\n", RespProtocolError, r"^Protocol error: expected '\$', got '%'$"),
    (b"*2\r\n$3\r\nGET\r\n:1\r\n", RespProtocolError, r"^Protocol error: expected '\$', got ':'$"),
    (b"*1\r\n$-1\r\n", RespProtocolError, r"^Protocol error: invalid bulk length -1$"),
]


@pytest.mark.parametrize(("wire", "error", "message"), BAD)
def test_malformed_input_raises(wire: bytes, error: type[Exception], message: str) -> None:
    parser = RespParser()
    with pytest.raises(error, match=message):
        parse_all(wire, parser)
    # Framing is lost: the parser stays failed.
    with pytest.raises(error, match=message):
        parser.next_event()


def test_array_over_limit_is_refused_before_reading_items() -> None:
    parser = RespParser(max_array_items=4)
    with pytest.raises(
        RespLimitError, match=r"^Protocol error: invalid multibulk length \(5 exceeds limit 4\)$"
    ):
        parse_all(b"*5\r\n", parser)


def test_bulk_over_limit_is_refused_from_its_header() -> None:
    parser = RespParser(max_bulk_bytes=10)
    with pytest.raises(
        RespLimitError, match=r"^Protocol error: invalid bulk length \(11 exceeds limit 10\)$"
    ):
        parse_all(b"*1\r\n$11\r\n", parser)


@pytest.mark.parametrize("pipelined", [False, True])
def test_limits_hold_for_whole_reads(pipelined: bool) -> None:
    """A request that arrives whole is held to the same limits as one that trickles in."""
    head = b"*1\r\n$4\r\nPING\r\n" if pipelined else b""
    with pytest.raises(
        RespLimitError, match=r"^Protocol error: invalid bulk length \(5 exceeds limit 4\)$"
    ):
        parse_all(head + b"*1\r\n$5\r\nHELLO\r\n", RespParser(max_bulk_bytes=4))
    with pytest.raises(
        RespLimitError, match=r"^Protocol error: invalid multibulk length \(3 exceeds limit 2\)$"
    ):
        parse_all(head + encode_command([b"SET", b"k", b"v"]), RespParser(max_array_items=2))


def test_a_read_ending_inside_a_command_keeps_its_tail() -> None:
    """The commands before the cut come out at once; the rest when its bytes arrive."""
    wire = b"*1\r\n$4\r\nPING\r\n" * 3 + encode_command([b"ECHO", b"hello"])
    for cut in range(3 * 14 + 1, len(wire)):
        parser = RespParser()
        assert [c.args for c in parse_all(wire[:cut], parser)] == [[b"PING"]] * 3
        assert parser.has_partial()
        assert [c.args for c in parse_all(wire[cut:], parser)] == [[b"ECHO", b"hello"]]
        assert not parser.has_partial()


def test_inline_over_limit_without_newline() -> None:
    parser = RespParser(max_inline_bytes=100)
    with pytest.raises(
        RespLimitError, match=r"^Protocol error: inline request of 101 bytes exceeds limit 100$"
    ):
        parse_all(b"A" * 101, parser)


def test_inline_over_limit_with_newline() -> None:
    parser = RespParser(max_inline_bytes=100)
    with pytest.raises(RespLimitError, match=r"inline request of 150 bytes exceeds limit 100$"):
        parse_all(b"A" * 150 + b"\n", parser)


def test_inline_at_limit_is_accepted() -> None:
    assert parse_all(b"A" * 100 + b"\n", RespParser(max_inline_bytes=100))[0].args == [b"A" * 100]


def test_large_bulk_in_many_chunks_is_joined_once() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    wire = encode_command([b"ECHO", payload])
    chunks = [wire[i : i + 1000] for i in range(0, len(wire), 1000)]
    parser = RespParser(max_bulk_bytes=2 * len(payload))
    commands = parse_split(chunks, parser)
    assert [c.args for c in commands] == [[b"ECHO", payload]]
    assert parser.buffered == 0


def test_partial_request_is_reported() -> None:
    parser = RespParser()
    parser.feed(b"*2\r\n$4\r\nECHO\r\n$3\r\nab")
    assert parser.next_event() is NEED_DATA
    assert parser.has_partial()
    parser.feed(b"c\r\n")
    event = parser.next_event()
    assert isinstance(event, Command)
    assert event.args == [b"ECHO", b"abc"]
    assert not parser.has_partial()


@given(st.lists(command_args, min_size=1, max_size=5), st.data())
@settings(max_examples=200)
def test_encode_then_parse_round_trip(commands: list[list[bytes]], data: st.DataObject) -> None:
    wire = b"".join(encode_command(args) for args in commands)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    assert [c.args for c in parse_split(chunks)] == commands


@given(st.lists(st.lists(inline_word, min_size=1, max_size=5), min_size=1, max_size=5))
def test_inline_round_trip(commands: list[list[bytes]]) -> None:
    wire = b"".join(b" ".join(args) + b"\n" for args in commands)
    assert [c.args for c in parse_all(wire)] == commands


@given(st.lists(st.binary(max_size=40), max_size=10))
@settings(max_examples=500)
def test_any_bytes_give_commands_or_protocol_error(chunks: list[bytes]) -> None:
    parser = RespParser(max_inline_bytes=64, max_bulk_bytes=64, max_array_items=8)
    try:
        for chunk in chunks:
            parser.feed(chunk)
            while (event := parser.next_event()) is not NEED_DATA:
                assert isinstance(event, Command)
                assert event.args
    except RespProtocolError:
        pass


@given(st.lists(command_args, min_size=1, max_size=6), st.data())
@settings(max_examples=400, derandomize=True)
def test_whole_reads_parse_as_byte_by_byte_reads_do(
    commands: list[list[bytes]], data: st.DataObject
) -> None:
    """Whole reads go through the C reader, single bytes through the Python parser; a
    pipeline with any one byte changed gives both the same commands or the same error."""
    wire = bytearray(b"".join(encode_command(args) for args in commands))
    if data.draw(st.booleans()):
        wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))

    def outcome(chunks: list[bytes]) -> tuple[list[list[bytes]], str]:
        parser = RespParser(max_inline_bytes=64, max_bulk_bytes=64, max_array_items=8)
        out: list[list[bytes]] = []
        try:
            for chunk in chunks:
                parser.feed(chunk)
                while (event := parser.next_event()) is not NEED_DATA:
                    assert isinstance(event, Command)
                    out.append(event.args)
        except RespProtocolError as exc:
            return out, str(exc)
        return out, "partial" if parser.has_partial() else ""

    sent = bytes(wire)
    assert outcome([sent]) == outcome([sent[i : i + 1] for i in range(len(sent))])


def parse_reads_one_by_one(chunks: list[bytes], parser: RespParser) -> list[list[bytes]]:
    """What a connection sees feeding each read with `feed_one`: the command it returns
    at once, else the commands `next_event` gives."""
    out: list[list[bytes]] = []
    for chunk in chunks:
        args = parser.feed_one(chunk)
        if args is not None:
            out.append(args)
            continue
        while (event := parser.next_event()) is not NEED_DATA:
            assert isinstance(event, Command)
            out.append(event.args)
    return out


FEED_ONE = [
    (b"*1\r\n$4\r\nPING\r\n", [b"PING"], Dialect.RESP),
    (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\nv\r\n\r\r\n", [b"SET", b"k", b"v\r\n\r"], Dialect.RESP),
    (b"PING\r\n", [b"PING"], Dialect.RESP),
    (b"PING\n", [b"PING"], Dialect.TEXT),
    (b"  echo  hi \n", [b"echo", b"hi"], Dialect.TEXT),
]


@pytest.mark.parametrize(("wire", "expected", "dialect"), FEED_ONE)
def test_feed_one_returns_a_whole_lone_command(
    wire: bytes, expected: list[bytes], dialect: Dialect
) -> None:
    parser = RespParser()
    assert parser.feed_one(wire) == expected
    assert parser.dialect is dialect
    assert not parser.has_partial()
    assert parser.next_event() is NEED_DATA
    assert parser.feed_one(wire) == expected  # and again: nothing was left behind


@pytest.mark.parametrize(
    "wire",
    [
        b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n",  # two commands
        b"PING\nPING\n",
        b"*1\r\n$4\r\nPING\r\n*1\r\n",  # one and a part
        b"PING\n*1\r\n$4\r\nPING\r\n",
        b"*2\r\n$4\r\nECHO\r\n$5\r\nhe",  # a part
        b"PING",
        b"\r\n",  # a blank line: no command at all
    ],
)
def test_feed_one_leaves_anything_else_to_next_event(wire: bytes) -> None:
    parser = RespParser()
    assert parser.feed_one(wire) is None
    plain = RespParser()
    expected = [c.args for c in parse_all(wire, plain)]
    assert parse_reads_one_by_one([], parser) == []
    assert [c.args for c in parse_all(b"", parser)] == expected  # nothing lost or doubled
    assert parser.has_partial() is plain.has_partial()


def test_feed_one_after_a_buffered_part_completes_it_through_next_event() -> None:
    parser = RespParser()
    assert parser.feed_one(b"*2\r\n$4\r\nECHO\r\n$2\r\nh") is None
    assert parser.next_event() is NEED_DATA
    assert parser.feed_one(b"i\r\n") is None  # bytes were buffered before it
    event = parser.next_event()
    assert isinstance(event, Command)
    assert event.args == [b"ECHO", b"hi"]
    assert parser.feed_one(b"*1\r\n$4\r\nPING\r\n") == [b"PING"]


@pytest.mark.parametrize(("wire", "error", "message"), BAD)
def test_feed_one_refuses_what_feed_refuses(
    wire: bytes, error: type[Exception], message: str
) -> None:
    parser = RespParser()
    assert parser.feed_one(wire) is None
    with pytest.raises(error, match=message):
        parse_all(b"", parser)  # the good commands before the error come out first


def test_feed_one_keeps_the_limits() -> None:
    parser = RespParser(max_inline_bytes=8, max_bulk_bytes=4, max_array_items=2)
    assert parser.feed_one(b"PING abc\n") == [b"PING", b"abc"]  # 8 bytes: at the limit
    assert parser.feed_one(b"PING abcd\n") is None
    with pytest.raises(RespLimitError, match="inline request of 9 bytes exceeds limit 8"):
        parser.next_event()
    for wire, message in [
        (b"*1\r\n$5\r\nHELLO\r\n", r"invalid bulk length \(5 exceeds limit 4\)"),
        (
            b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n",
            r"invalid multibulk length \(3 exceeds limit 2\)",
        ),
    ]:
        parser = RespParser(max_inline_bytes=8, max_bulk_bytes=4, max_array_items=2)
        assert parser.feed_one(wire) is None
        with pytest.raises(RespLimitError, match=message):
            parser.next_event()


def reads_outcome(reads: list[bytes], *, one: bool, limit: int) -> tuple[list[list[bytes]], str]:
    """The commands of `reads` fed with `feed_one` (`one`) or with `feed`, and how they
    end: the protocol error's text, "partial", or ""."""
    parser = RespParser(max_inline_bytes=limit, max_bulk_bytes=limit, max_array_items=limit // 8)
    out: list[list[bytes]] = []
    try:
        for read in reads:
            if one:
                out.extend(parse_reads_one_by_one([read], parser))
            else:
                out.extend(c.args for c in parse_all(read, parser))
    except RespProtocolError as exc:
        return out, str(exc)
    return out, "partial" if parser.has_partial() else ""


@given(st.lists(st.binary(max_size=40), max_size=10))
@settings(max_examples=500)
def test_feed_one_gives_what_feed_gives(chunks: list[bytes]) -> None:
    """Any reads give the same commands (or the same error) through `feed_one` as
    through `feed` and `next_event`."""
    assert reads_outcome(chunks, one=True, limit=32) == reads_outcome(chunks, one=False, limit=32)


@given(st.lists(command_args, min_size=1, max_size=4), st.data())
@settings(max_examples=300, derandomize=True)
def test_feed_one_on_one_command_per_read(commands: list[list[bytes]], data: st.DataObject) -> None:
    """An unpipelined client's reads, each one command, some with a byte changed."""
    reads = []
    for args in commands:
        wire = bytearray(encode_command(args))
        if data.draw(st.booleans()):
            wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
        reads.append(bytes(wire))
    assert reads_outcome(reads, one=True, limit=64) == reads_outcome(reads, one=False, limit=64)


REPLIES: list[tuple[Reply, bytes, bytes]] = [
    (OK, b"+OK\r\n", b"OK\n"),
    (PONG, b"+PONG\r\n", b"PONG\n"),
    (NIL, b"$-1\r\n", b"(nil)\n"),
    (bulk("hi"), b"$2\r\nhi\r\n", b"hi\n"),
    (bulk(b""), b"$0\r\n\r\n", b"\n"),
    (Integer(value=-7), b":-7\r\n", b"-7\n"),
    (Error(code="ERR", message="bad\r\nthing"), b"-ERR bad  thing\r\n", b"ERR bad  thing\n"),
    (Array(items=None), b"*-1\r\n", b"(nil)\n"),
    (Array(items=()), b"*0\r\n", b"(empty)\n"),
    (
        Array(items=(bulk("a"), Integer(value=1), Array(items=(bulk("b"),)))),
        b"*3\r\n$1\r\na\r\n:1\r\n*1\r\n$1\r\nb\r\n",
        b"a\n1\n  b\n",
    ),
    (SimpleString(text="QUEUED"), b"+QUEUED\r\n", b"QUEUED\n"),
    (Bulk(data=b"line1\r\nline2\r\n"), b"$14\r\nline1\r\nline2\r\n\r\n", b"line1\nline2\n"),
]


@pytest.mark.parametrize(("reply", "resp", "text"), REPLIES)
def test_reply_encodings(reply: Reply, resp: bytes, text: bytes) -> None:
    assert encode_resp(reply) == resp
    assert encode_text(reply) == text


# -- refusals: AUTH and HELLO, as every port speaking the command protocol answers them ----


def refusal_reply(exc: RespRefusal) -> Error:
    return Error(code=exc.wire_code, message=str(exc))


def test_noauth_reply_is_redis_wording_in_every_dialect() -> None:
    assert encode_resp(NOAUTH) == b"-NOAUTH Authentication required.\r\n"
    assert encode_text(NOAUTH) == b"NOAUTH Authentication required.\n"
    assert refusal_reply(NoAuthError()) == NOAUTH


@pytest.mark.parametrize(
    ("user", "password"),
    [(None, b"wrong"), (b"default", b"wrong"), (b"admin", b"s3cret"), (None, b""), (None, b"s3")],
)
def test_wrong_credentials_are_refused_with_wrongpass(user: bytes | None, password: bytes) -> None:
    with pytest.raises(WrongPassError) as caught:
        check_credentials(user, password, "s3cret")
    assert encode_resp(refusal_reply(caught.value)) == (
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    )


@pytest.mark.parametrize("user", [None, b"default"])
def test_right_credentials_pass(user: bytes | None) -> None:
    check_credentials(user, b"s3cret", "s3cret")


def test_credentials_compare_bytes_not_replaced_text() -> None:
    """A password that is not UTF-8 is not taken for the replacement character."""
    with pytest.raises(WrongPassError):
        check_credentials(None, b"\xff", "\ufffd")
    check_credentials(None, "pässword".encode(), "pässword")


@pytest.mark.parametrize(("arg", "version"), [(b"2", 2), (b"3", 3)])
def test_hello_protocol_versions(arg: bytes, version: int) -> None:
    assert hello_protocol(arg) == version
    assert version in PROTOCOL_VERSIONS


@pytest.mark.parametrize(
    ("arg", "shown"),
    [
        (b"4", "4"),
        (b"x", "x"),
        (b"", ""),
        (b"02", "02"),
        (b" 3", " 3"),
        (b"\xff", "\ufffd"),
        (b"9" * 100, "9" * 64),
    ],
)
def test_hello_protocol_refuses_other_versions_with_noproto(arg: bytes, shown: str) -> None:
    with pytest.raises(
        NoProtoError, match=rf"^unsupported protocol version '{shown}', expected 2 or 3$"
    ) as caught:
        hello_protocol(arg)
    assert caught.value.wire_code == "NOPROTO"


def test_hello_before_auth_is_a_noauth_naming_the_way_out() -> None:
    reply = refusal_reply(NoAuthError(HELLO_BEFORE_AUTH))
    assert encode_resp(reply) == (
        b"-NOAUTH HELLO must be called with the client already authenticated, "
        b"or with HELLO <proto> AUTH <user> <password>\r\n"
    )


# -- hostile headers: nothing is set aside for a count before it is checked -----------------

HUGE_HEADERS = [
    b"*2147483647\r\n",
    b"*4294967295\r\n",
    b"*1\r\n*2147483647\r\n",
    b"*1\r\n>2147483647\r\n",
    b"*1\r\n~2147483647\r\n",
    b"*1\r\n|2147483647\r\n",
    b"*1\r\n%2147483647\r\n",
    b"*1\r\n$1\r\naXY*2147483647\r\n",  # the C reader skips the two bytes after a bulk
    b"*1\r\n$4\r\nPING\r\n*2147483647\r\n",
    b"*2\r\n" + b"*65536\r\n" * 5000,  # every one within the limit, together far over it
]


def drain(chunks: list[bytes], parser: RespParser) -> int:
    """Feed `chunks` and take every command as a server does, one at a time, dropping
    each once taken: what stays allocated is the parser's, not a list of the results
    (16,384 inline commands in 64 KiB cost 4 MiB as a list of Commands)."""
    taken = 0
    for chunk in chunks:
        parser.feed(chunk)
        while parser.next_event() is not NEED_DATA:
            taken += 1
    return taken


def parse_cost(chunks: list[bytes]) -> tuple[int, float, str]:
    """Parse `chunks` as reads of one connection: the peak of memory allocated (bytes, a
    second run under tracemalloc, which slows Python several times over), the CPU seconds
    the first run took, and how it ended (the protocol error, or "")."""
    outcome = ""
    # A collection of the whole test process's heap is not the input's cost: keep it out.
    gc.disable()
    started = time.thread_time()
    try:
        drain(chunks, RespParser())
    except RespProtocolError as exc:
        outcome = str(exc)
    finally:
        elapsed = time.thread_time() - started
        gc.enable()
    tracemalloc.start()
    try:
        with contextlib.suppress(RespProtocolError):
            drain(chunks, RespParser())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, elapsed, outcome


@pytest.mark.parametrize("wire", HUGE_HEADERS)
def test_huge_aggregate_headers_cost_nothing(wire: bytes) -> None:
    """A count far over the limit is refused from its header, by whichever parser reads it,
    before a list is set aside for it (the C reader once took seconds over *2147483647)."""
    peak, elapsed, outcome = parse_cost([wire])
    assert outcome.startswith("Protocol error: ")
    assert peak < 1 << 20
    assert elapsed < 0.1


def test_huge_multibulk_length_gets_redis_reply() -> None:
    with pytest.raises(
        RespLimitError,
        match=r"^Protocol error: invalid multibulk length \(2147483647 exceeds limit 65536\)$",
    ):
        parse_all(b"*2147483647\r\n", RespParser())


@pytest.mark.parametrize(
    "wire",
    [
        encode_command([b"MSET", *[b"k%d" % i for i in range(40)]]) * 20,  # counts of 2 digits
        encode_command([b"SET", b"k", b"*99999 %|~>"]) * 50,  # header-like data
        encode_command([b"SET", b"k", b"%12\r\n>99\r\n"]),
    ],
)
def test_reads_with_larger_counts_or_header_like_data_still_parse(wire: bytes) -> None:
    """What the C reader is not trusted with goes to the Python parser, with the same result."""
    expected = [c.args for c in parse_split([wire[i : i + 1] for i in range(len(wire))])]
    assert [c.args for c in parse_all(wire)] == expected


def test_a_long_run_of_empty_arrays_is_skipped_without_recursion() -> None:
    """`*0` and `*-1` are empty requests, skipped in a loop (500 of them once overflowed
    the stack)."""
    wire = b"*0\r\n*-1\r\n" * 50_000 + encode_command([b"PING"])
    for feed in (parse_all, lambda data: parse_split([data[:7], data[7:]])):
        assert [c.args for c in feed(wire)] == [[b"PING"]]


# An input made of what a hostile client would send: headers of any count (the limit's
# neighbours among them), nesting, RESP3 marks, CRLFs out of place and data, repeated up to
# 64 KiB.
_counts = st.one_of(
    st.integers(min_value=-3, max_value=12),
    st.sampled_from([MAX_ARRAY_ITEMS - 1, MAX_ARRAY_ITEMS, MAX_ARRAY_ITEMS + 1, 2**31 - 1]),
    st.integers(min_value=-(2**63), max_value=2**64),
)
_token = st.one_of(
    st.builds(
        lambda mark, n: mark + b"%d\r\n" % n,
        st.sampled_from(list(b"*$%~>|=")).map(lambda c: bytes([c])),
        _counts,
    ),
    st.sampled_from([b"\r\n", b"\r", b"\n", b"PING", b" ", b"0"]),
    st.binary(max_size=16),
)
hostile_input = st.builds(
    lambda tokens, times: (b"".join(tokens) * times)[: 64 * 1024],
    st.lists(_token, min_size=1, max_size=12),
    st.integers(min_value=1, max_value=8000),
)


@given(hostile_input, st.integers(min_value=0, max_value=64 * 1024))
@settings(max_examples=150, deadline=None)
def test_any_input_costs_little_memory_and_time(data: bytes, cut: int) -> None:
    """Each input of up to 64 KiB, whole or in two reads, costs at most 4 MiB and 100 ms
    of CPU, and ends in commands, NEED_DATA or our ProtocolError."""
    peak, elapsed, _ = parse_cost([data[:cut], data[cut:]])
    assert peak <= 4 << 20, f"{peak} bytes for {len(data)} bytes of input"
    assert elapsed < 0.1, f"{elapsed:.3f} s for {len(data)} bytes of input"
