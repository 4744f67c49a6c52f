"""Inline lines with Redis's quoting: the splitter alone, then through the parser."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postoffice.core.resp import NEED_DATA, Command, Dialect, RespParser, RespProtocolError
from postoffice.core.resp.inline import UNBALANCED_QUOTES, split_inline
from tests.strategies import cut_points

SPLITS = [
    (b"set k v", [b"set", b"k", b"v"]),
    (b'set "a b" c', [b"set", b"a b", b"c"]),
    (b"set 'a b' c", [b"set", b"a b", b"c"]),
    (b'""', [b""]),
    (b"''", [b""]),
    (b'echo "" x', [b"echo", b"", b"x"]),
    (rb'"\n\r\t\b\a\\\""', [b'\n\r\t\b\a\\"']),
    (rb'"\x41\x6a\xFF\x00"', [b"Aj\xff\x00"]),
    (rb'"\x4g"', [b"x4g"]),  # not two hex digits: `\x` is a plain `x`, as in Redis
    (rb'"\q"', [b"q"]),  # an unknown escape is its byte
    (rb"'it\'s'", [b"it's"]),
    (rb"'a\nb\\c'", [rb"a\nb\\c"]),  # single quotes keep backslashes, but for \'
    (b"'say \"hi\"'", [b'say "hi"']),
    (b'"it\'s"', [b"it's"]),
    (b'foo"bar" baz', [b"foobar", b"baz"]),  # a quote may open inside a word
    (b"\t 'a'\t\"b\" \x0b c ", [b"a", b"b", b"c"]),
    (b'"a\nb"', [b"a\nb"]),
]


@pytest.mark.parametrize(("line", "expected"), SPLITS)
def test_split_inline_reads_quotes_as_redis(line: bytes, expected: list[bytes]) -> None:
    assert split_inline(line) == expected


UNBALANCED = [
    b'set """test-key""" test-value',  # the closing `""` is followed by a quote
    b'"abc',
    b"'abc",
    rb'"abc\"',  # the escaped quote does not close
    rb"'abc\'",
    b'"a"b',  # a closing quote must be followed by whitespace or the end
    b"'a'b",
    b"'a''b'",
    b'"a\\',
]


@pytest.mark.parametrize("line", UNBALANCED)
def test_split_inline_refuses_unbalanced_quotes(line: bytes) -> None:
    with pytest.raises(RespProtocolError, match=r"^Protocol error: unbalanced quotes in request$"):
        split_inline(line)


def _quote(arg: bytes) -> bytes:
    """`arg` in double quotes, every byte as \\xHH: the splitter must give it back."""
    return b'"' + b"".join(b"\\x%02x" % byte for byte in arg) + b'"'


@given(st.lists(st.binary(max_size=20), min_size=1, max_size=6))
def test_double_quoted_arguments_round_trip(args: list[bytes]) -> None:
    assert split_inline(b" ".join(_quote(arg) for arg in args)) == args


@given(st.binary(max_size=64))
@settings(max_examples=500)
def test_any_line_gives_arguments_or_unbalanced_quotes(line: bytes) -> None:
    """Only our error, only Redis's words, and only for a line that has a quote."""
    error = ""
    args: list[bytes] = []
    try:
        args = split_inline(line)
    except RespProtocolError as exc:
        error = str(exc)
    if error:
        assert error == UNBALANCED_QUOTES
        assert b'"' in line or b"'" in line
    else:
        assert all(isinstance(arg, bytes) and arg for arg in args) or b'"' in line or b"'" in line


def _parse(wire: bytes, parser: RespParser) -> list[list[bytes]]:
    parser.feed(wire)
    out: list[list[bytes]] = []
    while (event := parser.next_event()) is not NEED_DATA:
        assert isinstance(event, Command)
        out.append(event.args)
    return out


@pytest.mark.parametrize(("end", "dialect"), [(b"\r\n", Dialect.RESP), (b"\n", Dialect.TEXT)])
def test_quoted_line_in_either_dialect(end: bytes, dialect: Dialect) -> None:
    parser = RespParser()
    assert _parse(b"set 'a key' \"two\\nlines\"" + end, parser) == [
        [b"set", b"a key", b"two\nlines"]
    ]
    assert parser.dialect is dialect


def test_quoted_line_as_one_read_goes_through_the_whole_parser() -> None:
    """feed_one's fast path leaves a quoted line to next_event, which reads its quotes."""
    parser = RespParser()
    assert parser.feed_one(b'echo "a b"\r\n') is None
    event = parser.next_event()
    assert isinstance(event, Command)
    assert event.args == [b"echo", b"a b"]


def test_unbalanced_quotes_as_one_read_raise_from_next_event() -> None:
    parser = RespParser()
    assert parser.feed_one(b'set """k""" v\r\n') is None
    with pytest.raises(RespProtocolError, match=r"^Protocol error: unbalanced quotes in request$"):
        parser.next_event()


def test_unbalanced_quotes_poison_the_parser_after_the_good_lines() -> None:
    parser = RespParser()
    parser.feed(b'ping\r\nset """test-key""" test-value\r\nping\r\n')
    first = parser.next_event()
    assert isinstance(first, Command)
    assert first.args == [b"ping"]
    for _ in range(2):  # the framing is lost: the same error again, nothing after it
        with pytest.raises(RespProtocolError, match="unbalanced quotes"):
            parser.next_event()


def test_quoted_line_split_at_every_cut_point() -> None:
    wire = b"set 'k 1' \"v\\x20w\"\r\n"
    for chunks in cut_points(wire):
        parser = RespParser()
        out: list[list[bytes]] = []
        for chunk in chunks:
            out += _parse(chunk, parser)
        assert out == [[b"set", b"k 1", b"v w"]]


def test_quoted_line_over_the_inline_limit_is_refused_by_length() -> None:
    parser = RespParser(max_inline_bytes=16)
    with pytest.raises(RespProtocolError, match=r"inline request of 20 bytes exceeds limit 16$"):
        _parse(b'"' + b"a" * 18 + b'"\n', parser)


def test_quoted_line_at_the_inline_limit_is_read() -> None:
    parser = RespParser(max_inline_bytes=16)
    assert _parse(b'"' + b"a b" * 4 + b'"  \n', parser) == [[b"a b" * 4]]
