"""Pure RESP2/RESP3 and text-line codec of the command protocol: bytes in, commands out.

Shared by the command server and every control port (ingest's among them).

Design: one parser serves both of the port's dialects. A request starting with `*` is a
RESP array of bulk strings (redis-cli, redis-py). Anything else is an inline line, split on
whitespace with Redis's quoting (`inline.split_inline`). The first request fixes the
connection's dialect: a RESP array, or a line ending in CRLF (redis-benchmark's
PING_INLINE, telnet), means RESP replies; a line ending in a bare LF
(`printf 'PING\n' | nc`) means plain text replies (`PONG\n`).

The parser is resumable: a partial array keeps its parsed arguments and the position of
the next one, a partial line keeps how far it was scanned, and a large bulk string is
collected as a list of chunks and joined once, so no byte is scanned twice. A bulk string
of PREALLOCATE_BULK_BYTES or more that is not all here goes straight into one buffer of
its length as its bytes arrive (no chunks kept, no join), copied once more, whole, into
the argument handed out: about twice its size at the peak where chunks, their join and
the buffer they were joined into held three times.

Speed: a read that starts with `*` while nothing is buffered (how every RESP client sends,
pipelined or not) first goes through hiredis's C reader, which splits it into commands in
one call at a fraction of the Python parser's cost. Its result is only trusted when it can
be checked: every command a non-empty array of byte strings within the limits, and the
commands' canonical encoded size equal to the bytes they came from (hiredis also reads
`+simple` strings and nested replies, which a request may not hold; those change the size
or the types). A read that ends inside a command keeps the commands before it and hands
the tail to the Python parser. Anything else falls back to the Python parser for the whole
read, which then reports the precise error. Like Redis, the two bytes after a bulk
string's data are skipped, not checked, on this path.

The C reader sets aside a list for every aggregate header it meets (`*n`, and RESP3's
`%n`, `~n`, `>n`, `|n`, nested ones too) before any item arrives, and frees it item by
item: `*2147483647` alone held the loop for seconds. So a read goes to it only when its
headers are known to be small (see `_headers_fit`); the Python parser checks each header
against the limits before it reads on.
"""

from __future__ import annotations

import collections
import enum
import re
from itertools import chain, repeat
from typing import Final, NamedTuple, cast, final

import hiredis

from postoffice.core.errors import RespLimitError, RespProtocolError
from postoffice.core.resp.inline import split_inline

MAX_INLINE_BYTES: Final = 64 * 1024  # one inline line, as Redis allows
MAX_BULK_BYTES: Final = 8 * 1024 * 1024  # one argument; far above any command of ours
MAX_ARRAY_ITEMS: Final = 64 * 1024  # arguments in one command
MAX_HEADER_BYTES: Final = 32  # "*<n>\r\n" or "$<n>\r\n": 20 digits of a u64 fit easily
#: A partial bulk string this long or longer is read into a buffer of its own length;
#: below it, a few chunks joined cost less than the buffer.
PREALLOCATE_BULK_BYTES: Final = 64 * 1024

# An aggregate header of 10 items or more: `*`, or a RESP3 aggregate the C reader also reads.
# One class costs less on a short read; on a long one a search for the literal `*` (the
# regex engine skips to it) and a memchr for each other mark cost less.
_TWO_DIGITS: Final = re.compile(rb"[*%~>|]\d\d")
_SHORT_READ: Final = 256
_STAR_TWO_DIGITS: Final = re.compile(rb"\*\d\d")
_OTHER_AGGREGATES: Final = tuple(
    (ord(mark), re.compile(re.escape(mark) + rb"\d\d")) for mark in (b"%", b"~", b">", b"|")
)
# Every aggregate header of the C reader (its counts have no sign, no leading zero, no +).
_AGGREGATE_COUNT: Final = re.compile(rb"[*%~>|](\d+)\r\n")

# Decimal digits of every length below 10,000, for the encoded-size check of the C path.
_DIGITS_BELOW: Final = 10_000
_JOIN_TO_COUNT_BYTES: Final = 65_536  # see _checked_size
_DIGITS: Final = bytes(len(str(n)) for n in range(_DIGITS_BELOW))


class Dialect(enum.Enum):
    """How a connection frames its requests and wants its replies; fixed by its first request.

    A RESP connection starts with RESP2 replies; HELLO 3 switches it to RESP3 (the
    connection's business, not the parser's).
    """

    UNKNOWN = "unknown"
    RESP = "resp"
    TEXT = "text"


@final
class NeedData(enum.Enum):
    """The sentinel type of `NEED_DATA`."""

    NEED_DATA = "need_data"


NEED_DATA: Final = NeedData.NEED_DATA


class Command(NamedTuple):
    """One request: its arguments (the name first) and whether it came as an inline line.

    A NamedTuple rather than a frozen dataclass: one is built per request, and a frozen
    dataclass's __init__ (object.__setattr__ per field) cost more than parsing the request.
    """

    args: list[bytes]
    inline: bool


@final
class RespParser:
    """Turns the bytes of one connection into Commands.

    `next_event()` returns a Command or NEED_DATA, and raises RespProtocolError (or its
    RespLimitError) on malformed or oversized input; after that the parser is poisoned,
    because the framing is lost.
    """

    __slots__ = (
        "_args",
        "_buf",
        "_bulk_len",
        "_chunked",
        "_chunks",
        "_error",
        "_large",
        "_large_have",
        "_need",
        "_pos",
        "_reader",
        "_remaining",
        "_scan",
        "dialect",
        "max_array_items",
        "max_bulk_bytes",
        "max_inline_bytes",
        "ready",
    )

    def __init__(
        self,
        *,
        max_inline_bytes: int = MAX_INLINE_BYTES,
        max_bulk_bytes: int = MAX_BULK_BYTES,
        max_array_items: int = MAX_ARRAY_ITEMS,
    ) -> None:
        self.max_inline_bytes = max_inline_bytes
        self.max_bulk_bytes = max_bulk_bytes
        self.max_array_items = max_array_items
        self.dialect = Dialect.UNKNOWN
        self._buf = b""
        self._pos = 0
        self._chunks: list[bytes] = []
        self._chunked = 0
        self._need = 0  # bytes (from _pos) needed before parsing can move on
        self._scan = 0  # how far (from _pos) an inline line was scanned without a LF
        self._remaining = 0  # arguments still to read in the current array
        self._args: list[bytes] = []
        self._bulk_len = -1  # length of the bulk whose header was read, else -1
        self._large: bytearray | None = None  # a large bulk's data, filled as it comes
        self._large_have = 0  # how much of `_large` is filled
        self._error: RespProtocolError | None = None
        self._reader = hiredis.Reader()
        #: Commands the C reader split off and nobody took yet, in order. `next_event`
        #: hands them out first; a hot loop may pop them here itself.
        self.ready: collections.deque[list[bytes]] = collections.deque()

    @property
    def buffered(self) -> int:
        """Bytes held for what was received and not yet parsed into commands: a large
        bulk's whole buffer, allocated at its header (so the partial-request budget
        counts what a client's announced length makes us hold, not only what it sent)."""
        held = len(self._buf) - self._pos + self._chunked
        return held if self._large is None else held + len(self._large)

    def has_partial(self) -> bool:
        """Whether anything received is still to be handed out (a whole or part request)."""
        return (
            self._pos < len(self._buf)
            or self._chunked > 0
            or self._large is not None
            or self._remaining > 0
            or bool(self.ready)
        )

    def feed(self, data: bytes) -> None:
        """Append bytes from the peer."""
        if self._large is not None:
            data = self._fill(data)
            if not data:
                return
        if (
            data
            and data[0] == 0x2A  # "*"
            and self._pos >= len(self._buf)
            and not self._chunks
            and not self._remaining
            and self._error is None
        ):
            self._take_arrays(data)
            return
        if self._chunks or self._need > len(self._buf) - self._pos + len(data):
            self._chunks.append(data)
            self._chunked += len(data)
            if len(self._buf) - self._pos + self._chunked >= self._need:
                self._merge()
        elif self._pos >= len(self._buf):
            self._buf = data
            self._pos = 0
        else:
            self._buf = self._buf[self._pos :] + data
            self._pos = 0

    def feed_one(self, data: bytes) -> list[bytes] | None:
        """Feed `data`, and when it is exactly one whole command with nothing buffered
        before it (an unpipelined client's read), return its arguments at once.

        None: `data` was fed as by `feed`; its commands, if any, come from `next_event`.
        The command returned is checked as `feed` checks it; it never joins `ready`.
        """
        if (
            data
            and self._pos >= len(self._buf)
            and not self._chunks
            and not self._remaining
            and self._error is None
            and not self.ready
        ):
            if data[0] == 0x2A:  # "*"
                ready = self.ready
                return ready.pop() if self._take_arrays(data) and len(ready) == 1 else None
            end = len(data) - 1
            if (
                0 < end <= self.max_inline_bytes
                and data.find(b"\n") == end
                and b'"' not in data  # a quoted line goes the whole way, to name its error
                and b"'" not in data
            ):
                crlf = data[end - 1] == 0x0D
                args = data[: end - 1 if crlf else end].split()
                if args:
                    if self.dialect is Dialect.UNKNOWN:
                        self.dialect = Dialect.RESP if crlf else Dialect.TEXT
                    return args
        self.feed(data)
        return None

    def _fill(self, data: bytes) -> bytes:
        """Copy the start of `data` into the large bulk's buffer; what is past its end."""
        large = cast(bytearray, self._large)
        have = self._large_have
        take = min(len(large) - have, len(data))
        memoryview(large)[have : have + take] = memoryview(data)[:take]
        self._large_have = have + take
        return data[take:] if take < len(data) else b""

    def _start_large(self, length: int) -> None:
        """Move the bulk of `length` at `_pos` (only part of it here) into its own buffer."""
        buf, start = self._buf, self._pos
        have = len(buf) - start  # less than length + 2: else it would be read at once
        take = min(have, length)
        large = bytearray(length)
        memoryview(large)[:take] = memoryview(buf)[start : start + take]
        self._large = large
        self._large_have = take
        self._buf = buf[start + take :]  # a byte of the CRLF at most
        self._pos = 0
        self._need = 2

    def _take_arrays(self, data: bytes) -> bool:
        """`feed` of a read starting with `*` while nothing is buffered: the whole commands
        the C reader splits off join `ready`, the Python parser keeps the rest (all of it
        when none could be trusted). Whether the commands took the whole read."""
        taken = self._split(data)
        if taken and self.dialect is Dialect.UNKNOWN:
            self.dialect = Dialect.RESP
        if taken == len(data):
            return True
        self._buf = data[taken:]
        self._pos = 0
        return False

    def _merge(self) -> None:
        self._buf = self._buf[self._pos :] + b"".join(self._chunks)
        self._pos = 0
        self._chunks.clear()
        self._chunked = 0

    def _split(self, data: bytes) -> int:
        """Split whole commands off `data` with the C reader; how many bytes they took.

        The commands join the ready queue. 0 means none could be trusted: the Python
        parser reads all of `data` (and finds the error, if there is one).
        """
        if len(data) < _SHORT_READ:
            fits = _TWO_DIGITS.search(data) is None or self._counts_fit(data)
        else:
            fits = self._headers_fit(data)
        if not fits:
            return 0
        reader = self._reader
        gets = reader.gets
        cmds: list[object]
        try:
            reader.feed(data)
            first = gets()
            if first is False:
                taken, cmds = -1, []
            elif not reader.has_data():  # it took the whole read: an unpipelined client's
                taken = self._one_size(first, data)
                if taken == len(data):  # the common case, at once
                    self.ready.append(first)
                    return taken
                cmds = [first]
            else:
                cmds = [first]
                while (cmd := gets()) is not False:
                    cmds.append(cmd)
                taken = self._checked_size(cmds, data)
        except (hiredis.HiredisError, TypeError):
            # TypeError: a RESP3 map or set whose key is an aggregate (`%1` then `*1`)
            # is built as a Python dict, and a list cannot be its key. Either way the
            # Python parser reads the read and names the error.
            taken, cmds = -1, []
        tail = len(data) - taken
        if (
            taken < 0
            or tail < 0
            or (tail and data[taken] != 0x2A)
            or (not tail and reader.has_data())
        ):
            self._reader = hiredis.Reader()  # its state is unknown: start afresh
            return 0
        if tail:
            self._reader = hiredis.Reader()  # the tail's start is in it: the Python parser has it
        self.ready.extend(cast(list[list[bytes]], cmds))  # the size checks proved the type
        return taken

    def _headers_fit(self, data: bytes) -> bool:
        """Whether the C reader may read `data`: what it sets aside for the aggregate
        headers in it is at most a few list slots per byte, and none is over the limit.

        Headers of one digit (the common case, found with one search for `*` and two
        digits) cost at most 9 slots per 4-byte header. Otherwise every header-like run
        is summed: the counts together may not pass the read's length (an array of n
        items takes at least 3n bytes, so the read could not finish it anyway). Bytes of
        data that look like a header only send the read to the Python parser.
        """
        if _STAR_TWO_DIGITS.search(data) is None:
            for mark, two_digits in _OTHER_AGGREGATES:
                if data.find(mark) >= 0 and two_digits.search(data) is not None:
                    break
            else:
                return True
        return self._counts_fit(data)

    def _counts_fit(self, data: bytes) -> bool:
        """`_headers_fit`'s exact check: every header-like count summed."""
        counts = list(map(int, _AGGREGATE_COUNT.findall(data)))
        return max(counts, default=0) <= self.max_array_items and sum(counts) <= len(data)

    def _one_size(self, cmd: object, data: bytes) -> int:
        """`_checked_size` of one command, unrolled, with each terminator checked in place."""
        if type(cmd) is not list or not 0 < (count := len(cmd)) <= self.max_array_items:
            return -1
        end = 3 + (_DIGITS[count] if count < _DIGITS_BELOW else len(str(count)))
        for arg in cmd:
            if type(arg) is not bytes or (n := len(arg)) > self.max_bulk_bytes:
                return -1
            end += 5 + n + (_DIGITS[n] if n < _DIGITS_BELOW else len(str(n)))
            if not data.startswith(b"\r\n", end - 2):
                return -1
        return end

    def _checked_size(self, cmds: list[object], data: bytes) -> int:
        """The encoded size of `cmds` if they are valid requests that `data` starts with, else -1.

        Valid: each a non-empty list of bytes within the limits, each argument followed by
        CRLF in `data`. The size is the canonical encoding's, so a `+simple` string among
        them makes it disagree with `data`. This runs once per read, so each step is a
        C-level pass over all the read's arguments rather than a Python loop.
        """
        if set(map(type, cmds)) != {list}:
            return -1
        arrays = cast(list[list[object]], cmds)
        counts = list(map(len, arrays))
        if min(counts) == 0 or max(counts) > self.max_array_items:
            return -1
        items = list(chain.from_iterable(arrays))
        if set(map(type, items)) != {bytes}:
            return -1
        args = cast(list[bytes], items)
        lengths = list(map(len, args))
        longest = max(lengths)
        if longest > self.max_bulk_bytes:
            return -1
        if longest >= _DIGITS_BELOW or max(counts) >= _DIGITS_BELOW:
            return -1  # past the digits table: rare enough to leave to the Python parser
        size = (
            3 * len(counts)  # "*" and CRLF
            + 5 * len(lengths)  # "$", CRLF, CRLF
            + sum(map(_DIGITS.__getitem__, chain(counts, lengths)))
            + sum(lengths)
        )
        # hiredis skips the two bytes after each argument's data unread. Checking each
        # at its offset costs more than the C reader saves, so count instead: CRLFs (one
        # per header, one per terminator, and the data's own) and CRs likewise. A changed
        # terminator byte leaves one count short, even where the data ends in CR.
        lines = len(counts) + 2 * len(lengths)
        if size <= _JOIN_TO_COUNT_BYTES:  # one copy of small arguments beats a call per one
            joined = b"\0".join(args)  # NUL between them: no CRLF made across two
            own_crlfs = joined.count(b"\r\n")
            own_crs = joined.count(b"\r")
        else:
            own_crlfs = sum(map(bytes.count, args, repeat(b"\r\n")))
            own_crs = sum(map(bytes.count, args, repeat(b"\r")))
        if data.count(b"\r\n", 0, size) != lines + own_crlfs:
            return -1
        if data.count(b"\r", 0, size) != lines + own_crs:
            return -1
        return size

    def next_event(self) -> Command | NeedData:
        """The next complete command, or NEED_DATA."""
        if self.ready:
            return Command(self.ready.popleft(), False)
        if self._error is not None:
            raise self._error
        if self._chunks:
            return NEED_DATA
        try:
            if self._remaining:
                return self._array_items()
            buf = self._buf
            while self._pos < len(buf):
                if buf[self._pos] == 0x2A:  # "*"
                    command = self._whole_array() or self._array_header()
                else:
                    command = self._inline()
                if command is not None:
                    return command
                if self._need:
                    return NEED_DATA
            return NEED_DATA
        except RespProtocolError as exc:
            self._error = exc
            raise

    def _whole_array(self) -> Command | None:
        """The fast path: a well-formed array that is all in the buffer, else None.

        Anything else (a partial array, a bad header, a limit) is left to the resumable
        path, which starts again from the array's first byte; only a request split across
        reads pays that second look at its headers.
        """
        buf, pos = self._buf, self._pos
        size = len(buf)
        eol = buf.find(b"\r\n", pos, pos + MAX_HEADER_BYTES)
        if eol < 0:
            return None
        try:
            count = int(buf[pos + 1 : eol])
        except ValueError:
            return None
        if not 0 < count <= self.max_array_items:
            return None
        max_bulk = self.max_bulk_bytes
        args: list[bytes] = []
        p = eol + 2
        for _ in range(count):
            if p >= size or buf[p] != 0x24:  # "$"
                return None
            eol = buf.find(b"\r\n", p, p + MAX_HEADER_BYTES)
            if eol < 0:
                return None
            try:
                length = int(buf[p + 1 : eol])
            except ValueError:
                return None
            start = eol + 2
            end = start + length
            if not 0 <= length <= max_bulk or end + 2 > size or buf[end : end + 2] != b"\r\n":
                return None
            args.append(buf[start:end])
            p = end + 2
        self._pos = p
        if self.dialect is Dialect.UNKNOWN:
            self.dialect = Dialect.RESP
        return Command(args, False)

    def _line_end(self, what: str) -> int:
        """Index of the CR of the next CRLF-terminated header, or -1 when not all here."""
        buf, pos = self._buf, self._pos
        eol = buf.find(b"\r\n", pos, pos + MAX_HEADER_BYTES)
        if eol < 0:
            if len(buf) - pos >= MAX_HEADER_BYTES:
                raise RespProtocolError(
                    f"Protocol error: {what} line longer than {MAX_HEADER_BYTES} bytes"
                )
            self._need = len(buf) - pos + 1
        return eol

    def _array_header(self) -> Command | NeedData | None:
        """The array at `_pos`: a Command, NEED_DATA, or None for an empty one (skipped:
        the caller's loop goes on, so a run of them costs no stack)."""
        eol = self._line_end("multibulk length")
        if eol < 0:
            return NEED_DATA
        raw = self._buf[self._pos + 1 : eol]
        try:
            count = int(raw)
        except ValueError:
            raise RespProtocolError(f"Protocol error: invalid multibulk length {raw!r}") from None
        if count > self.max_array_items:
            raise RespLimitError(
                f"Protocol error: invalid multibulk length "
                f"({count} exceeds limit {self.max_array_items})"
            )
        self._pos = eol + 2
        self._need = 0
        if self.dialect is Dialect.UNKNOWN:
            self.dialect = Dialect.RESP
        if count <= 0:  # Redis treats "*0" and "*-1" as an empty request
            return None
        self._remaining = count
        self._args = []
        return self._array_items()

    def _array_items(self) -> Command | NeedData:
        buf = self._buf
        args = self._args
        while self._remaining:
            length = self._bulk_len
            if length < 0:
                pos = self._pos
                if pos >= len(buf):
                    self._need = 1
                    return NEED_DATA
                if buf[pos] != 0x24:  # "$"
                    raise RespProtocolError(f"Protocol error: expected '$', got {chr(buf[pos])!r}")
                eol = self._line_end("bulk length")
                if eol < 0:
                    return NEED_DATA
                raw = buf[pos + 1 : eol]
                try:
                    length = int(raw)
                except ValueError:
                    raise RespProtocolError(
                        f"Protocol error: invalid bulk length {raw!r}"
                    ) from None
                if length < 0:
                    raise RespProtocolError(f"Protocol error: invalid bulk length {length}")
                if length > self.max_bulk_bytes:
                    raise RespLimitError(
                        f"Protocol error: invalid bulk length "
                        f"({length} exceeds limit {self.max_bulk_bytes})"
                    )
                self._pos = eol + 2
                self._bulk_len = length
            large = self._large
            if large is not None:  # its data is in `_large`, its CRLF at `_pos`
                pos = self._pos
                if self._large_have < length or pos + 2 > len(buf):
                    return NEED_DATA
                if buf[pos : pos + 2] != b"\r\n":
                    raise RespProtocolError("Protocol error: bulk string not followed by CRLF")
                args.append(bytes(large))
                self._large = None
                self._large_have = 0
                self._pos = pos + 2
                self._bulk_len = -1
                self._remaining -= 1
                continue
            start = self._pos
            end = start + length
            if end + 2 > len(buf):
                if length >= PREALLOCATE_BULK_BYTES:
                    self._start_large(length)
                    return NEED_DATA
                self._need = length + 2
                return NEED_DATA
            if buf[end : end + 2] != b"\r\n":
                raise RespProtocolError("Protocol error: bulk string not followed by CRLF")
            args.append(buf[start:end])
            self._pos = end + 2
            self._bulk_len = -1
            self._remaining -= 1
        self._need = 0
        self._args = []
        return Command(args, False)

    def _inline(self) -> Command | None:
        """One inline line as a Command; None for a blank line or when more bytes are needed."""
        buf, pos = self._buf, self._pos
        eol = buf.find(b"\n", pos + self._scan)
        if eol < 0:
            size = len(buf) - pos
            if size > self.max_inline_bytes:
                raise RespLimitError(
                    f"Protocol error: inline request of {size} bytes exceeds limit "
                    f"{self.max_inline_bytes}"
                )
            self._scan = size
            self._need = size + 1
            return None
        if eol - pos > self.max_inline_bytes:
            raise RespLimitError(
                f"Protocol error: inline request of {eol - pos} bytes exceeds limit "
                f"{self.max_inline_bytes}"
            )
        crlf = eol > pos and buf[eol - 1] == 0x0D
        args = split_inline(buf[pos : eol - 1 if crlf else eol])
        self._pos = eol + 1
        self._scan = 0
        self._need = 0
        if not args:
            return None
        if self.dialect is Dialect.UNKNOWN:
            self.dialect = Dialect.RESP if crlf else Dialect.TEXT
        return Command(args, True)

    def __repr__(self) -> str:
        return f"<RespParser {self.dialect.value} buffered={self.buffered}>"
