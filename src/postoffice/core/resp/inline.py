"""Pure: an inline request line split into arguments, with Redis's quoting (sdssplitargs).

Part of the command-protocol codec (core/resp), shared by every port that speaks it.
"""

# Design
# ------
# A line without a quote character is split on ASCII whitespace, as it always was (the
# common case: one memchr-speed test for each quote, then bytes.split). A line with one is
# read token by token, as redis-server reads it: a token is a run of bare bytes, then at
# most one quoted part, and a closing quote must be followed by whitespace or the end.
#
#   "..."   \n \r \t \b \a, \xHH (two hex digits), and \<any byte> for that byte
#   '...'   \' for a quote; every other byte as it is, backslashes included
#
# The quoted parts are matched with possessive repeats, so a regex never backtracks into
# an escape it already took ("a\" is unterminated, as in Redis, not `a\` closed).

from __future__ import annotations

import re
from typing import Final

from postoffice.core.errors import RespProtocolError

#: Redis's words for a line whose quotes do not close, or close against a non-space.
UNBALANCED_QUOTES: Final = "Protocol error: unbalanced quotes in request"

_SPACE: Final = re.compile(rb"[ \t\n\r\x0b\x0c]*")
_BARE: Final = re.compile(rb"[^ \t\n\r\x0b\x0c\"']*")
_DOUBLE: Final = re.compile(rb'"((?:\\x[0-9a-fA-F]{2}|\\.|[^"\\])*+)"', re.DOTALL)
_SINGLE: Final = re.compile(rb"'((?:\\'|[^'])*+)'")
_ESCAPE: Final = re.compile(rb"\\(x[0-9a-fA-F]{2}|.)", re.DOTALL)
_SINGLE_ESCAPE: Final = re.compile(rb"\\'")
_WHITESPACE: Final = frozenset(b" \t\n\r\x0b\x0c")
_NAMED: Final = {
    ord("n"): b"\n",
    ord("r"): b"\r",
    ord("t"): b"\t",
    ord("b"): b"\b",
    ord("a"): b"\a",
}


def _end(pattern: re.Pattern[bytes], line: bytes, pos: int) -> int:
    """Where a run of `pattern` (one that matches the empty run too) starting at `pos` ends."""
    match = pattern.match(line, pos)
    assert match is not None  # a `*` repeat always matches
    return match.end()


def _unescape(match: re.Match[bytes]) -> bytes:
    escaped = match.group(1)
    if len(escaped) == 3:  # xHH
        return bytes((int(escaped[1:], 16),))
    return _NAMED.get(escaped[0], escaped)


def split_inline(line: bytes) -> list[bytes]:
    """The arguments of one inline line (its CR LF or LF already cut off).

    Raises RespProtocolError (UNBALANCED_QUOTES) when a quote is not closed, or is closed
    by a byte other than whitespace.
    """
    if b'"' not in line and b"'" not in line:
        return line.split()
    args: list[bytes] = []
    end = len(line)
    pos = _end(_SPACE, line, 0)
    while pos < end:
        start, pos = pos, _end(_BARE, line, pos)
        arg = line[start:pos]
        if pos < end and line[pos] not in _WHITESPACE:  # a quote opens here
            if line[pos] == 0x22:  # '"'
                quoted = _DOUBLE.match(line, pos)
                if quoted is None:
                    raise RespProtocolError(UNBALANCED_QUOTES)
                arg += _ESCAPE.sub(_unescape, quoted.group(1))
            else:
                quoted = _SINGLE.match(line, pos)
                if quoted is None:
                    raise RespProtocolError(UNBALANCED_QUOTES)
                arg += _SINGLE_ESCAPE.sub(b"'", quoted.group(1))
            pos = quoted.end()
            if pos < end and line[pos] not in _WHITESPACE:
                raise RespProtocolError(UNBALANCED_QUOTES)
        args.append(arg)
        pos = _end(_SPACE, line, pos)
    return args
