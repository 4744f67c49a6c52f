"""The trace context a request carries from one service to the next (W3C trace id, span
id and flags) and its 25 wire bytes; core layer, pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from postoffice.core.errors import ConfigError

__all__ = ["TRACE_CONTEXT_BYTES", "TraceContext"]

#: A trace context on the wire: 16-byte trace id, 8-byte span id, 1-byte trace flags,
#: the fields of a W3C traceparent without its version byte.
TRACE_CONTEXT_BYTES: Final = 25
_TRACE_ID_MAX: Final = (1 << 128) - 1
_SPAN_ID_MAX: Final = (1 << 64) - 1


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceContext:
    """Where a request sits in a trace: its trace id (128 bits), the id of the span that
    sent it (64 bits) and the W3C trace flags (bit 0: sampled). Neither id may be 0.

    Raises ConfigError for an id or flags out of range.
    """

    trace_id: int
    span_id: int
    flags: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.trace_id <= _TRACE_ID_MAX:
            raise ConfigError(f"trace id {self.trace_id} out of range 1..2**128-1")
        if not 0 < self.span_id <= _SPAN_ID_MAX:
            raise ConfigError(f"span id {self.span_id} out of range 1..2**64-1")
        if not 0 <= self.flags <= 0xFF:
            raise ConfigError(f"trace flags {self.flags} out of range 0..255")

    @property
    def sampled(self) -> bool:
        """Whether the sender records this trace (W3C flag bit 0)."""
        return bool(self.flags & 1)

    def to_bytes(self) -> bytes:
        """The 25 wire bytes: trace id, span id (both big-endian), flags."""
        return (
            self.trace_id.to_bytes(16, "big")
            + self.span_id.to_bytes(8, "big")
            + bytes((self.flags,))
        )
