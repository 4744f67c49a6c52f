"""The command protocol's replies: their types, and their RESP2, RESP3 and text encodings.

Pure: values in, bytes out. `encode_command` is the other direction's encoder, a request
as clients send it (for tests and tools).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, final

#: A bulk reply this long or longer is written as three parts (header, the value where
#: it lies, CRLF) instead of one copy of them joined: below it the copy costs less.
LARGE_BULK_BYTES: Final = 64 * 1024


def _one_line(text: str) -> bytes:
    # A RESP simple string or error cannot hold CR or LF.
    return text.replace("\r", " ").replace("\n", " ").encode()


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SimpleString:
    """`+text`: a short status such as OK or PONG. Its RESP bytes are made once."""

    text: str
    wire: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "wire", b"+" + _one_line(self.text) + b"\r\n")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Error:
    """`-CODE message`: a refused command."""

    code: str
    message: str


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Integer:
    """`:n`."""

    value: int


@final
@dataclass(slots=True)
class Bulk:
    """`$len` and bytes; `None` is the nil bulk.

    Unlike the other replies not frozen, and positional: one is built for every GET's
    value, and a frozen dataclass's __init__ with a keyword costs twice as much. Treat
    it as frozen all the same (replies such as NIL are shared).
    """

    data: bytes | memoryview | None


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Array:
    """`*n` and n replies; `None` is the nil array."""

    items: Sequence[Reply] | None


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Map:
    """Key-value pairs: `%n` in RESP3, a flat array of 2n items in RESP2."""

    pairs: Sequence[tuple[Reply, Reply]]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Double:
    """A floating-point number: `,value` in RESP3, a bulk string in RESP2; written as
    Redis writes one (`%.17g`, `inf` and `-inf`)."""

    value: float

    @property
    def text(self) -> bytes:
        """The number as Redis spells it in either protocol."""
        return b"%.17g" % self.value


Reply = SimpleString | Error | Integer | Bulk | Array | Map | Double

OK: Final = SimpleString(text="OK")
PONG: Final = SimpleString(text="PONG")
NIL: Final = Bulk(data=None)
EMPTY_ARRAY: Final = Array(items=())


def bulk(data: bytes | str) -> Bulk:
    """A bulk reply from bytes or UTF-8 text."""
    return Bulk(data.encode() if isinstance(data, str) else data)


def bulk_parts(data: bytes | memoryview) -> tuple[bytes, bytes | memoryview, bytes]:
    """A bulk string's RESP2/RESP3 encoding as (header, `data` itself, CRLF): no copy."""
    return (b"$%d\r\n" % len(data), data, b"\r\n")


def encode_resp(reply: Reply) -> bytes:
    """RESP2 bytes for `reply`."""
    if type(reply) is SimpleString:
        return reply.wire
    if isinstance(reply, Bulk):
        data = reply.data
        # %b takes any buffer: a value's memoryview (Store.get_view) as well as bytes.
        return b"$-1\r\n" if data is None else b"$%d\r\n%b\r\n" % (len(data), data)  # type: ignore[str-format]
    if isinstance(reply, Integer):
        return b":%d\r\n" % reply.value
    if isinstance(reply, Error):
        return b"-" + _one_line(f"{reply.code} {reply.message}") + b"\r\n"
    if isinstance(reply, Double):
        text = reply.text
        return b"$%d\r\n%b\r\n" % (len(text), text)
    if isinstance(reply, Map):
        flat = [encode_resp(part) for pair in reply.pairs for part in pair]
        return b"*%d\r\n" % len(flat) + b"".join(flat)
    items = reply.items
    if items is None:
        return b"*-1\r\n"
    return b"*%d\r\n" % len(items) + b"".join([encode_resp(item) for item in items])


def encode_resp3(reply: Reply) -> bytes:
    """RESP3 bytes for `reply`: as RESP2, but with a real null and real maps."""
    if isinstance(reply, Map):
        parts = [encode_resp3(part) for pair in reply.pairs for part in pair]
        return b"%%%d\r\n" % len(reply.pairs) + b"".join(parts)
    if isinstance(reply, Array):
        items = reply.items
        if items is None:
            return b"_\r\n"
        return b"*%d\r\n" % len(items) + b"".join([encode_resp3(item) for item in items])
    if isinstance(reply, Bulk) and reply.data is None:
        return b"_\r\n"
    if isinstance(reply, Double):
        return b",%b\r\n" % reply.text
    return encode_resp(reply)


def encode_text(reply: Reply, indent: bytes = b"") -> bytes:
    """Seed 001's text rendering: one line per value, errors as `CODE message`."""
    if isinstance(reply, SimpleString):
        return indent + reply.text.encode() + b"\n"
    if isinstance(reply, Bulk):
        data = reply.data
        if data is None:
            return indent + b"(nil)\n"
        text = data if type(data) is bytes else bytes(data)
        return indent + text.rstrip(b"\r\n").replace(b"\r\n", b"\n") + b"\n"
    if isinstance(reply, Integer):
        return indent + b"%d\n" % reply.value
    if isinstance(reply, Double):
        return indent + reply.text + b"\n"
    if isinstance(reply, Error):
        return indent + _one_line(f"{reply.code} {reply.message}") + b"\n"
    if isinstance(reply, Map):
        return (
            b"".join([encode_text(Array(items=pair), indent) for pair in reply.pairs])
            or indent + b"(empty)\n"
        )
    items = reply.items
    if items is None:
        return indent + b"(nil)\n"
    if not items:
        return indent + b"(empty)\n"
    deeper = indent + b"  "
    return b"".join(
        [encode_text(item, deeper if isinstance(item, Array) else indent) for item in items]
    )


def encode_command(args: Sequence[bytes]) -> bytes:
    """A request as a RESP array of bulk strings, as clients send it."""
    parts = [b"*%d\r\n" % len(args)]
    parts.extend(b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in args)
    return b"".join(parts)
