"""Pure field codecs both of the bus's wire formats share (the control protocol and the
discovery/bridge formats): text with a limit, range checks, a bounds-checked reader."""

from __future__ import annotations

import struct
from typing import Final, final

from postoffice.bus.errors import BusProtocolError

U8: Final = struct.Struct(">B")


def encode_text(value: str, limit: int, what: str) -> bytes:
    """`value` as UTF-8 of at most `limit` bytes with no NUL; BusProtocolError otherwise.

    A lone surrogate is encoded as it is, so the peer refuses it as not UTF-8 instead of
    the encoder failing with an error of another kind."""
    data = value.encode("utf-8", "surrogatepass")
    if len(data) > limit:
        raise BusProtocolError(f"{what} is {len(data)} bytes, the limit is {limit}")
    if b"\0" in data:
        raise BusProtocolError(f"{what} holds a NUL byte")
    return data


def encode_str8(value: str, limit: int, what: str) -> bytes:
    """`encode_text` behind a u8 length; `limit` is at most 255."""
    data = encode_text(value, limit, what)
    return U8.pack(len(data)) + data


def check_range(value: int, low: int, high: int, what: str) -> int:
    """`value`, or BusProtocolError when it is outside low..high."""
    if not low <= value <= high:
        raise BusProtocolError(f"{what} {value} outside {low}..{high}")
    return value


@final
class FieldReader:
    """Reads fields off a payload, every read bounds-checked; BusProtocolError names the
    payload (`what`) and the field that does not fit."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    def __repr__(self) -> str:
        return f"<FieldReader {self._what} at {self._pos}/{len(self._data)}>"

    def take(self, count: int, field: str) -> bytes:
        end = self._pos + count
        if end > len(self._data):
            raise BusProtocolError(
                f"{self._what} payload of {len(self._data)} bytes ends inside {field}"
            )
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def unpack(self, layout: struct.Struct, field: str) -> tuple[int, ...]:
        values: tuple[int, ...] = layout.unpack(self.take(layout.size, field))
        return values

    def u8(self, field: str) -> int:
        return self.unpack(U8, field)[0]

    def text(self, length: int, limit: int, field: str) -> str:
        if length > limit:
            raise BusProtocolError(f"{field} is {length} bytes, the limit is {limit}")
        raw = self.take(length, field)
        if b"\0" in raw:
            raise BusProtocolError(f"{field} holds a NUL byte")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BusProtocolError(f"{field} is not UTF-8: {exc.reason}") from exc

    def str8(self, limit: int, field: str) -> str:
        return self.text(self.u8(f"{field} length"), limit, field)

    def rest(self) -> bytes:
        chunk = self._data[self._pos :]
        self._pos = len(self._data)
        return chunk

    def end(self) -> None:
        extra = len(self._data) - self._pos
        if extra:
            raise BusProtocolError(f"{self._what} payload has {extra} bytes past its end")
