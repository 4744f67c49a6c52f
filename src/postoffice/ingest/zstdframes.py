"""A walker over the Zstandard frame format (RFC 8878) that checks framing without decoding.

Pure: bytes in, AssemblyError out. assembly.py feeds it every block it decompresses.
"""

# Design
# ------
# zstandard's stream_reader returns a short output without complaint when the input ends
# inside a frame; the walker catches that, names bytes after the last frame that are not
# a frame, and checks each frame's window against the limit before zstd allocates it.
# States (the table is FrameWalker._on_field):
#   MAGIC --zstd magic--> DESCRIPTOR --> HEADER_REST --> BLOCK_HEADER --(skip content)-->
#     BLOCK_HEADER ... --last block--> CHECKSUM (when flagged) --> MAGIC
#   MAGIC --skippable magic--> SKIPPABLE_SIZE --(skip content)--> MAGIC
# The input may end only in MAGIC with nothing pending, after at least one zstd frame.

from __future__ import annotations

import enum
from typing import Final, final

from postoffice.ingest.errors import AssemblyError

__all__ = ["FrameWalker"]

_ZSTD_MAGIC: Final = 0xFD2FB528
_SKIPPABLE_MAGIC: Final = 0x184D2A50  # the 16 values 0x184D2A50..0x184D2A5F
_SKIPPABLE_MASK: Final = 0xFFFFFFF0
_DICT_ID_BYTES: Final = (0, 1, 2, 4)
_BLOCK_RLE: Final = 1
_BLOCK_RESERVED: Final = 3


class _State(enum.Enum):
    MAGIC = enum.auto()  # 4 bytes: which kind of frame comes next
    SKIPPABLE_SIZE = enum.auto()  # 4 bytes: length of a skippable frame's content
    DESCRIPTOR = enum.auto()  # 1 byte: Frame_Header_Descriptor
    HEADER_REST = enum.auto()  # window, dictionary id and content size fields
    BLOCK_HEADER = enum.auto()  # 3 bytes: last flag, type, size
    CHECKSUM = enum.auto()  # 4 bytes after the last block when the frame has one


@final
class FrameWalker:
    """Follows zstd frame boundaries without decoding; raises AssemblyError on bad framing."""

    def __init__(self, *, max_window_size: int, hex_id: str) -> None:
        self._max_window = max_window_size
        self._hex_id = hex_id
        self._state = _State.MAGIC
        self._need = 4
        self._field = bytearray()
        self._skip = 0
        self._descriptor = 0
        self._frame_start = 0
        self.offset = 0  # bytes fed so far
        self.frames = 0  # zstd frames fully walked (skippable frames not counted)

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            take = min(self._need - len(self._field), end - pos)
            self._field += view[pos : pos + take]
            pos += take
            if len(self._field) == self._need:
                field = bytes(self._field)
                self._field.clear()
                self._on_field(field, self.offset + pos - len(field))
        self.offset += end

    def finish(self) -> None:
        """Call at the end of input: it must not end inside a frame."""
        if self._state is not _State.MAGIC or self._field or self._skip:
            raise AssemblyError(
                f"payload {self._hex_id} ends inside a zstd frame after {self.offset} bytes"
                f" (truncated)"
            )
        if self.frames == 0:
            raise AssemblyError(f"payload {self._hex_id} holds no zstd frame")

    def _expect(self, state: _State, need: int) -> None:
        self._state, self._need = state, need

    def _on_field(self, field: bytes, at: int) -> None:
        value = int.from_bytes(field, "little")
        match self._state:
            case _State.MAGIC:
                if value == _ZSTD_MAGIC:
                    self._frame_start = at
                    self._expect(_State.DESCRIPTOR, 1)
                elif value & _SKIPPABLE_MASK == _SKIPPABLE_MAGIC:
                    self._expect(_State.SKIPPABLE_SIZE, 4)
                else:
                    what = "trailing bytes" if self.frames else "bytes"
                    raise AssemblyError(
                        f"payload {self._hex_id}: {what} at offset {at} are not a zstd frame"
                        f" (magic 0x{value:08x})"
                    )
            case _State.SKIPPABLE_SIZE:
                self._skip = value
                self._expect(_State.MAGIC, 4)
            case _State.DESCRIPTOR:
                if value & 0x08:
                    raise AssemblyError(
                        f"payload {self._hex_id}: frame at offset {self._frame_start}"
                        f" has a reserved header bit set"
                    )
                self._descriptor = value
                single_segment = value >> 5 & 1
                content_size_bytes = (single_segment, 2, 4, 8)[value >> 6]
                rest = (1 - single_segment) + _DICT_ID_BYTES[value & 3] + content_size_bytes
                self._expect(_State.HEADER_REST, rest)
            case _State.HEADER_REST:
                self._check_window(field)
                self._expect(_State.BLOCK_HEADER, 3)
            case _State.BLOCK_HEADER:
                block_type, block_size = value >> 1 & 3, value >> 3
                if block_type == _BLOCK_RESERVED:
                    raise AssemblyError(
                        f"payload {self._hex_id}: block at offset {at} has the reserved type"
                    )
                self._skip = 1 if block_type == _BLOCK_RLE else block_size
                if not value & 1:
                    self._expect(_State.BLOCK_HEADER, 3)
                elif self._descriptor & 0x04:
                    self._expect(_State.CHECKSUM, 4)
                else:
                    self.frames += 1
                    self._expect(_State.MAGIC, 4)
            case _State.CHECKSUM:
                self.frames += 1
                self._expect(_State.MAGIC, 4)

    def _check_window(self, header: bytes) -> None:
        descriptor = self._descriptor
        if descriptor >> 5 & 1:  # single segment: the window is the content size
            size_bytes = (1, 2, 4, 8)[descriptor >> 6]
            window = int.from_bytes(header[-size_bytes:], "little")
            if size_bytes == 2:
                window += 256  # RFC 8878: the 2-byte field is offset by 256
        else:
            exponent, mantissa = header[0] >> 3, header[0] & 7
            base = 1 << (10 + exponent)
            window = base + (base >> 3) * mantissa
        if window > self._max_window:
            raise AssemblyError(
                f"payload {self._hex_id}: frame at offset {self._frame_start} needs a window"
                f" of {window} bytes, over the limit {self._max_window}"
            )
