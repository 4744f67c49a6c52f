"""The binary frame codec every binary protocol shares: ingest, store, the command workers.

Core layer, pure sans-I/O: bytes in, `Frame` events out. Wire format: docs/protocols/frame.md.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Generic, NoReturn, TypeVar, final

from postoffice.core.errors import (
    ConfigError,
    FrameError,
    FrameTooLarge,
)

M = TypeVar("M")

# Design
# ------
# A frame is a fixed 24-byte header followed by `length` payload bytes. The decoder has
# three states, kept as plain fields because the machine is a straight line:
#
#   HEADER   `_pending is None`: wait for 24 bytes, then validate magic, version,
#            reserved field and length. The magic is checked as soon as 2 bytes are
#            buffered, so a peer speaking the wrong protocol fails at once instead of
#            stalling until 24 bytes arrive.
#   PAYLOAD  `_pending` holds the unpacked header: wait for `length` more bytes. The
#            header is never unpacked twice, and the length limit has already been
#            checked, so an oversized frame fails before its payload is buffered.
#   FAILED   `_error` is set: framing is lost for good (there is no resync marker),
#            so every later `next_event` re-raises the same error and `feed` discards.
#
# Bytes live in one bytearray with a read offset. Consumed bytes are dropped when the
# buffer is fully drained (the common case: each read holds whole frames) or when the
# offset passes half the buffer, so compaction costs O(1) amortised per byte. A payload
# of at least _COLLECT_MIN_BYTES that is still arriving when `next_event` sees its
# header is gathered instead as a list of the blocks fed, joined once into the payload
# when complete: one copy per byte instead of growing (and re-allocating) the bytearray
# and then copying out of it, which is 10x faster for multi-megabyte payloads. A
# service that reads the socket into buffers of its own (asyncio's BufferedProtocol) can
# take such a payload over with `detach_payload` and receive the rest straight into one
# buffer: no copy at all beyond the kernel's.

__all__ = [
    "HEADER",
    "HEADER_BYTES",
    "MAGIC",
    "MAX_FLAGS",
    "MAX_PAYLOAD_BYTES",
    "MAX_REQUEST_ID",
    "MAX_TYPE",
    "NEED_DATA",
    "VERSION",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "FrameTooLarge",
    "NeedData",
    "encode",
    "encode_header",
    "encode_parts",
]

HEADER: Final = struct.Struct(">2sBBHHQII")
"""magic, version, type, flags, reserved, request id, payload length, payload CRC-32."""

# Fixed size, so one 24-byte read always yields the payload length.
HEADER_BYTES: Final = 24
# Lets a receiver reject a peer speaking another protocol (HTTP, RESP) from 2 bytes.
MAGIC: Final = b"PO"
# Bumped on any change to the header; receivers reject versions they do not know.
VERSION: Final = 1

MAX_PAYLOAD_BYTES: Final = 16 * 1024 * 1024
"""Hard ceiling on one frame's payload, in bytes: a decoder buffers a whole payload
before handing it on, so this bounds the memory one peer can pin per connection."""

# Field ranges, fixed by the header's u8 / u16 / u64 slots.
MAX_TYPE: Final = 0xFF
MAX_FLAGS: Final = 0xFFFF
MAX_REQUEST_ID: Final = 0xFFFF_FFFF_FFFF_FFFF
#: What a decoder's `self_checked_flag` may be: no flag, or exactly one of the 16 bits
#: (built once here: mypyc fails on a generator unpacked into a tuple display).
_ONE_FLAG_OR_NONE: Final = frozenset([0, *[1 << bit for bit in range(16)]])

_MAGIC_BYTES: Final = len(MAGIC)
# Payloads at least this long are copied out through a memoryview (one copy instead of
# two); below it, creating and releasing the view costs more than the extra copy.
_VIEW_COPY_MIN_BYTES: Final = 64 * 1024
# Payloads at least this long that span several feeds are gathered block by block.
_COLLECT_MIN_BYTES: Final = 256 * 1024
# Frame.__repr__ shows payloads up to this many bytes; longer ones only by length, so a
# logged 16 MiB frame does not flood the log.
_REPR_PAYLOAD_BYTES: Final = 32

assert HEADER.size == HEADER_BYTES


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Frame:
    """One frame: a service-defined `type` (0..255) and `flags` (0..65535), the
    `request_id` (0..2**64-1) a reply echoes, and the payload bytes.

    Construction does not validate, to keep decoding cheap; `encode` does.
    """

    type: int
    flags: int
    request_id: int
    payload: bytes

    def __repr__(self) -> str:
        payload = self.payload
        shown = (
            repr(payload)
            if len(payload) <= _REPR_PAYLOAD_BYTES
            else f"{payload[:_REPR_PAYLOAD_BYTES]!r}...<{len(payload)} bytes>"
        )
        return (
            f"Frame(type={self.type}, flags=0x{self.flags:04x}, "
            f"request_id={self.request_id}, payload={shown})"
        )


@final
class NeedData(enum.Enum):
    """Type of the `NEED_DATA` sentinel: the decoder needs more bytes for a whole frame."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA


def _field_error(type: int, flags: int, request_id: int, payload: bytes) -> FrameError:
    """Explain why a frame's fields cannot be packed (the slow path of encoding)."""
    if not 0 <= type <= MAX_TYPE:
        return FrameError(f"frame type {type} out of range 0..{MAX_TYPE}")
    if not 0 <= flags <= MAX_FLAGS:
        return FrameError(f"frame flags {flags} out of range 0..{MAX_FLAGS}")
    if not 0 <= request_id <= MAX_REQUEST_ID:
        return FrameError(f"frame request id {request_id} out of range 0..{MAX_REQUEST_ID}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        return FrameTooLarge(len(payload), MAX_PAYLOAD_BYTES, request_id=request_id)
    return FrameError(
        f"frame fields type={type!r} flags={flags!r} request_id={request_id!r} "
        "cannot be encoded, expected integers"
    )


def encode_header(type: int, flags: int, request_id: int, payload: bytes) -> bytes:
    """Return only the 24-byte header for `payload`, for writing header and payload
    separately (`transport.writelines`) without copying a large payload.

    Raises FrameError if a field is out of range, FrameTooLarge if the payload is longer
    than MAX_PAYLOAD_BYTES.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise _field_error(type, flags, request_id, payload)
    try:
        return HEADER.pack(
            MAGIC, VERSION, type, flags, 0, request_id, len(payload), zlib.crc32(payload)
        )
    except struct.error:
        raise _field_error(type, flags, request_id, payload) from None


def encode_parts(type: int, flags: int, request_id: int, payload: bytes) -> bytes:
    """Return the wire bytes of one frame built from its fields, without making a Frame.

    Raises FrameError if a field is out of range, FrameTooLarge if the payload is longer
    than MAX_PAYLOAD_BYTES.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise _field_error(type, flags, request_id, payload)
    try:
        header = HEADER.pack(
            MAGIC, VERSION, type, flags, 0, request_id, len(payload), zlib.crc32(payload)
        )
    except struct.error:
        raise _field_error(type, flags, request_id, payload) from None
    return header + payload


def encode(frame: Frame) -> bytes:
    """Return the wire bytes of `frame`.

    Raises FrameError if a field is out of range, FrameTooLarge if the payload is longer
    than MAX_PAYLOAD_BYTES.
    """
    return encode_parts(frame.type, frame.flags, frame.request_id, frame.payload)


@final
class FrameDecoder:
    """Incremental frame decoder for one connection: `feed` bytes, then call
    `next_event` until it returns NEED_DATA.

    `max_payload_bytes` (at most MAX_PAYLOAD_BYTES) lets a service accept less than the
    hard ceiling. `self_checked_flag` (default 0: none) is the one flag bit, if any, by
    which the service says "this payload carries its own checksum": a frame with that
    bit set and a CRC-32 field of 0 is handed on without computing its CRC (the service
    must check the payload itself); any other frame is checked as usual. Raises
    ConfigError if a value is out of range.
    """

    __slots__ = (
        "_buf",
        "_error",
        "_max_payload_bytes",
        "_parts",
        "_parts_bytes",
        "_pending",
        "_pos",
        "_self_checked",
    )

    def __init__(
        self, max_payload_bytes: int = MAX_PAYLOAD_BYTES, self_checked_flag: int = 0
    ) -> None:
        if not 0 <= max_payload_bytes <= MAX_PAYLOAD_BYTES:
            raise ConfigError(
                f"max_payload_bytes {max_payload_bytes} out of range 0..{MAX_PAYLOAD_BYTES}"
            )
        if self_checked_flag not in _ONE_FLAG_OR_NONE:
            raise ConfigError(f"self_checked_flag 0x{self_checked_flag:x} is not one flag bit")
        self._max_payload_bytes = max_payload_bytes
        self._self_checked = self_checked_flag
        self._buf = bytearray()
        self._pos = 0
        # (type, flags, request_id, length, crc) of the frame whose payload is awaited.
        self._pending: tuple[int, int, int, int, int] | None = None
        self._error: FrameError | None = None
        # The blocks of a large pending payload, gathered (see the design note), or None.
        self._parts: list[bytes | memoryview] | None = None
        self._parts_bytes = 0

    @property
    def max_payload_bytes(self) -> int:
        """The largest payload this decoder accepts, in bytes."""
        return self._max_payload_bytes

    @property
    def buffered_bytes(self) -> int:
        """Bytes fed but not yet returned as part of a Frame; non-zero at end of stream
        means the peer stopped mid-frame."""
        pending_header = 0 if self._pending is None else HEADER_BYTES
        return len(self._buf) - self._pos + pending_header + self._parts_bytes

    @property
    def failed(self) -> bool:
        """True once a FrameError was raised: framing is lost for this stream."""
        return self._error is not None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes. After a FrameError the bytes are discarded."""
        if self._error is not None:
            return
        if self._parts is not None:
            self._parts.append(data if type(data) is bytes else bytes(data))
            self._parts_bytes += len(data)
            return
        pos = self._pos
        if pos and pos >= len(self._buf) >> 1:
            del self._buf[:pos]
            self._pos = 0
        self._buf += data

    def next_event(self) -> Frame | NeedData:
        """Return the next complete Frame, or NEED_DATA if more bytes are needed.

        Raises FrameError for a bad magic, an unsupported version, a non-zero reserved
        field or a checksum mismatch; FrameTooLarge as soon as a header announces a
        payload over `max_payload_bytes`. Once raised, the same error is raised again on
        every later call.
        """
        if self._error is not None:
            raise self._error
        buf = self._buf
        pos = self._pos
        available = len(buf) - pos
        pending = self._pending
        if pending is None:
            if available < HEADER_BYTES:
                if available >= _MAGIC_BYTES and buf[pos : pos + _MAGIC_BYTES] != MAGIC:
                    self._fail(_bad_magic(bytes(buf[pos : pos + _MAGIC_BYTES])))
                return NEED_DATA
            pending = self._read_header(buf, pos)
            pos += HEADER_BYTES
            self._pos = pos
            available -= HEADER_BYTES
        type_, flags, request_id, length, crc = pending
        if self._parts is not None:
            return self._collected(pending)
        if available < length:
            self._pending = pending
            if length >= _COLLECT_MIN_BYTES:
                self._parts = [bytes(buf[pos:])]
                self._parts_bytes = available
                buf.clear()
                self._pos = 0
            return NEED_DATA
        end = pos + length
        if length < _VIEW_COPY_MIN_BYTES:
            payload = bytes(buf[pos:end])
        else:
            with memoryview(buf) as view:
                payload = view[pos:end].tobytes()
        if crc or not flags & self._self_checked:
            actual = zlib.crc32(payload)
            if actual != crc:
                self._fail(
                    FrameError(
                        f"payload checksum 0x{actual:08x} does not match header 0x{crc:08x}",
                        request_id=request_id,
                    )
                )
        self._pending = None
        if end == len(buf):
            buf.clear()
            self._pos = 0
        else:
            self._pos = end
        return Frame(type=type_, flags=flags, request_id=request_id, payload=payload)

    def _collected(self, pending: tuple[int, int, int, int, int]) -> Frame | NeedData:
        """The gathered large payload as a Frame once all of it is in, else NEED_DATA."""
        type_, flags, request_id, length, crc = pending
        parts = self._parts
        assert parts is not None
        extra = self._parts_bytes - length
        if extra < 0:
            return NEED_DATA
        if extra:
            last = memoryview(parts[-1])
            keep = len(last) - extra
            parts[-1] = last[:keep]
            self._buf += last[keep:]  # the next frames' bytes (the buffer is empty)
        payload = b"".join(parts)
        self._parts = None
        self._parts_bytes = 0
        self._pending = None
        if crc or not flags & self._self_checked:
            actual = zlib.crc32(payload)
            if actual != crc:
                self._fail(
                    FrameError(
                        f"payload checksum 0x{actual:08x} does not match header 0x{crc:08x}",
                        request_id=request_id,
                    )
                )
        return Frame(type=type_, flags=flags, request_id=request_id, payload=payload)

    def detach_payload(self) -> tuple[int, int, int, int, list[bytes | memoryview]] | None:
        """Hand the large payload being gathered to a caller that reads the rest of it
        into a buffer of its own (a BufferedProtocol); the decoder then waits for the next
        header.

        Returns (type, flags, request_id, length, the payload's blocks received so far),
        or None when no large payload is being gathered, or when its frame has a CRC-32
        to check: only a frame with the self-checked flag and a CRC field of 0 is handed
        over, since its service checks the payload itself. The caller then owns the
        frame: it reads the payload's remaining bytes itself and feeds the decoder only
        the bytes after them.
        """
        parts = self._parts
        pending = self._pending
        if parts is None or pending is None or self._parts_bytes >= pending[3]:
            return None
        type_, flags, request_id, length, crc = pending
        if crc or not flags & self._self_checked:
            return None
        self._parts = None
        self._parts_bytes = 0
        self._pending = None
        return type_, flags, request_id, length, parts

    def read_frames(self, out: list[tuple[int, int, int, bytes]], limit: int) -> int:
        """Append up to `limit` whole frames to `out` as (type, flags, request_id, payload)
        tuples; return how many. The batch form of `next_event`, for a server that handles
        every frame of a read in one pass: no Frame objects, one call per read.

        Raises FrameError (and FrameTooLarge) as `next_event` does, after appending the
        good frames before the bad one: handle those, then answer the error.
        """
        if self._error is not None:
            raise self._error
        count = 0
        if self._parts is not None and limit > 0:  # a large payload gathered by next_event
            frame = self.next_event()
            if isinstance(frame, NeedData):
                return 0
            out.append((frame.type, frame.flags, frame.request_id, frame.payload))
            count = 1
        buf = self._buf
        pos = self._pos
        size = len(buf)
        pending = self._pending
        unpack = HEADER.unpack_from
        crc32 = zlib.crc32
        limit_bytes = self._max_payload_bytes
        self_checked = self._self_checked
        verdict = False  # stopped at bytes `next_event` must judge (a bad header or CRC)
        with memoryview(buf) as view:
            while count < limit:
                if pending is None:
                    if size - pos < HEADER_BYTES:
                        verdict = size - pos >= _MAGIC_BYTES  # a wrong magic fails early
                        break
                    magic, version, type_, flags, reserved, request_id, length, crc = unpack(
                        buf, pos
                    )
                    if magic != MAGIC or version != VERSION or reserved or length > limit_bytes:
                        verdict = True
                        break
                    pos += HEADER_BYTES
                else:
                    type_, flags, request_id, length, crc = pending
                    pending = None
                end = pos + length
                if end > size:
                    pending = (type_, flags, request_id, length, crc)
                    break
                payload = view[pos:end].tobytes()
                if (crc or not flags & self_checked) and crc32(payload) != crc:
                    pending = (type_, flags, request_id, length, crc)
                    verdict = True
                    break
                out.append((type_, flags, request_id, payload))
                pos = end
                count += 1
        self._pending = pending
        if pos == size:
            buf.clear()
            self._pos = 0
        else:
            self._pos = pos
        if verdict:
            self.next_event()  # raises the error, or NEED_DATA for a good partial header
        return count

    def _read_header(self, buf: bytearray, pos: int) -> tuple[int, int, int, int, int]:
        """Unpack and validate the header at `pos`; raise (and poison) if it is bad."""
        magic: bytes
        version: int
        type_: int
        flags: int
        reserved: int
        request_id: int
        length: int
        crc: int
        magic, version, type_, flags, reserved, request_id, length, crc = HEADER.unpack_from(
            buf, pos
        )
        if magic != MAGIC:
            self._fail(_bad_magic(magic))
        if version != VERSION:
            self._fail(FrameError(f"unsupported frame version {version}, expected {VERSION}"))
        if reserved != 0:
            self._fail(
                FrameError(
                    f"frame reserved field 0x{reserved:04x}, expected 0", request_id=request_id
                )
            )
        if length > self._max_payload_bytes:
            self._fail(FrameTooLarge(length, self._max_payload_bytes, request_id=request_id))
        return type_, flags, request_id, length, crc

    def _fail(self, error: FrameError) -> NoReturn:
        """Poison the decoder with `error`, free the buffer, and raise it."""
        self._error = error
        self._pending = None
        self._buf = bytearray()
        self._pos = 0
        self._parts = None
        self._parts_bytes = 0
        raise error

    def __repr__(self) -> str:
        if self._error is not None:
            state = "FAILED"
        elif self._pending is not None:
            state = "PAYLOAD"
        else:
            state = "HEADER"
        return (
            f"<FrameDecoder at 0x{id(self):x} {state} buffered={self.buffered_bytes} "
            f"limit={self._max_payload_bytes}>"
        )


def _bad_magic(found: bytes) -> FrameError:
    return FrameError(f"bad frame magic {found!r}, expected {MAGIC!r}")


class MessageStream(Generic[M]):
    """Frames to a service's typed messages: a FrameDecoder plus its `decode` function.

    `next_event()` returns `(request_id, message)` or NEED_DATA. A FrameError means
    framing is lost (it is raised again on every later call: reply if you can, then
    close). Any error `decode` raises leaves the frame consumed and framing intact: answer
    `last_request_id` and call again. `self_checked_flag` is FrameDecoder's. Raises
    ConfigError for an out-of-range limit.
    """

    __slots__ = ("_decode", "_frames", "_last_request_id")

    def __init__(
        self,
        decode: Callable[[Frame], M],
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
        self_checked_flag: int = 0,
    ) -> None:
        self._decode = decode
        self._frames = FrameDecoder(max_payload_bytes, self_checked_flag)
        self._last_request_id: int | None = None

    @property
    def last_request_id(self) -> int | None:
        """Request id of the last frame read (where an error reply goes); None before any."""
        return self._last_request_id

    @property
    def buffered_bytes(self) -> int:
        """Bytes fed but not yet decoded; non-zero at end of stream means a cut frame."""
        return self._frames.buffered_bytes

    @property
    def failed(self) -> bool:
        """True once a FrameError was raised: framing is lost and the connection must close."""
        return self._frames.failed

    @property
    def max_payload_bytes(self) -> int:
        """The largest frame payload accepted."""
        return self._frames.max_payload_bytes

    @property
    def frames(self) -> FrameDecoder:
        """The frame decoder underneath (see FrameDecoder.detach_payload)."""
        return self._frames

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes (discarded once framing is lost)."""
        self._frames.feed(data)

    def next_event(self) -> tuple[int, M] | NeedData:
        """The next `(request_id, message)`, or NEED_DATA."""
        frame = self._frames.next_event()
        if frame is NEED_DATA:
            return NEED_DATA
        self._last_request_id = frame.request_id
        return frame.request_id, self._decode(frame)

    def __repr__(self) -> str:
        state = "FAILED" if self.failed else "OK"
        return (
            f"<{type(self).__name__} at 0x{id(self):x} {state} buffered={self.buffered_bytes}"
            f" last_request_id={self._last_request_id} limit={self.max_payload_bytes}>"
        )
