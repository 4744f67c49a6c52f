"""The store protocol's vocabulary: limits, request kinds, statuses, errors, messages.

Pure data and the checks both codecs apply, so an encoder and a decoder can never
disagree about what is valid. Wire format: docs/protocols/store.md.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, NamedTuple, TypeAlias, final

from postoffice.core.framing import MAX_PAYLOAD_BYTES, MAX_REQUEST_ID
from postoffice.store.errors import Status, StoreLimitError, StoreProtocolError

MAX_KEY_BYTES: Final = 1024
"""Longest key, in bytes: keys are names, not payloads (the engine's default limit)."""

MAX_VALUE_BYTES: Final = 16 * 1024 * 1024
"""Longest value the engine keeps, in bytes (its default). A request's value shares one
frame with its key and fields, so the frame's limit binds first: `check_put_fits`."""

PUT_HEAD_BYTES: Final = 2
"""Bytes of a PUT payload before its key: the u16 key length."""

BATCH_HEAD_BYTES: Final = 4
"""Bytes of a BATCH payload before its first op: the u32 op count."""

BATCH_OP_HEAD_BYTES: Final = 7
"""Bytes of a batch op before its key: kind u8, key length u16, value length u32."""

MAX_BATCH_OPS: Final = 10_000
"""Most operations in one BATCH: bounds the work one atomic request can pin."""

MAX_SCAN_LIMIT: Final = 10_000
"""Most items one SCAN may ask for: bounds one response's size and the index walk."""

MAX_BOUND_BYTES: Final = MAX_KEY_BYTES + 1
"""Longest scan bound, in bytes: one more than a key, so the continuation of a page
ending at a longest key (that key + b"\\0") is still a valid start."""

RESPONSE_TYPE: Final = 0x80
"""Frame type of every response."""

TRACED_FLAG: Final = 0x0001
"""Request frame flag: the payload starts with a trace context (TRACE_CONTEXT_BYTES: trace
id, span id, trace flags), and the request's own payload follows it."""

CONNECTION_REPLY_ID: Final = 0
"""The request id no request may carry: a response with it answers no request (BUSY for
a refused connection, the error of an unreadable frame) and the connection then closes."""


class RequestType(enum.IntEnum):
    """The frame `type` of each request."""

    PING = 0x01
    GET = 0x02
    PUT = 0x03
    DELETE = 0x04
    BATCH = 0x05
    SCAN = 0x06
    STATS = 0x07


# --- messages -------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class PingRequest:
    """Liveness probe; answered OK with an empty body."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class GetRequest:
    """Read one key; answered OK with the value, or NOT_FOUND."""

    key: bytes


@final
@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class PutRequest:
    """Set `key` to `value`; answered OK with an empty body. Also a batch operation."""

    key: bytes
    value: bytes

    def __repr__(self) -> str:
        # Never print up to 16 MiB of value into a log line.
        return f"PutRequest(key={self.key!r}, value=<{len(self.value)} bytes>)"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteRequest:
    """Remove one key; answered OK with `existed`. Also a batch operation."""

    key: bytes


BatchOp: TypeAlias = PutRequest | DeleteRequest


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class BatchRequest:
    """Apply all `ops` atomically, in order; answered OK with an empty body."""

    ops: tuple[BatchOp, ...]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ScanRequest:
    """Up to `limit` items in key order with start <= key < end and the prefix.

    A bound that is None is absent (an empty bytes bound is present and empty). The
    next page starts at `next_start(page)`: the last key returned + b"\\0".
    """

    prefix: bytes | None = None
    start: bytes | None = None
    end: bytes | None = None
    limit: int


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class StatsRequest:
    """Ask for the server's statistics; answered OK with a JSON object."""


Request: TypeAlias = (
    PingRequest
    | GetRequest
    | PutRequest
    | DeleteRequest
    | BatchRequest
    | ScanRequest
    | StatsRequest
)


@final
class Response(NamedTuple):
    """One response: the request id it answers, its status, and the raw body.

    Read the body with the decoder for the request kind (decode_get_body, ...) when
    the status is OK, and with decode_error_body otherwise. A named tuple: a client
    makes one per response, and a tuple costs a fifth of a frozen dataclass.
    """

    request_id: int
    status: Status
    body: bytes

    def __repr__(self) -> str:
        body = self.body
        shown = repr(body) if len(body) <= 32 else f"{body[:32]!r}...<{len(body)} bytes>"
        return f"Response(request_id={self.request_id}, status={self.status.name}, body={shown})"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ScanPage:
    """A SCAN's OK body: the items in key order, and `more` when at least one more item
    matched after the last one (the server looks one item ahead, so never on a last page)."""

    items: tuple[tuple[bytes, bytes], ...]
    more: bool


def next_start(page: ScanPage) -> bytes | None:
    """The `start` of the next page (the last key + b"\\0"), or None when done."""
    if not page.more or not page.items:
        return None
    return page.items[-1][0] + b"\0"


# --- checks shared by encoders and decoders -------------------------------------------


def check_key(what: str, key: bytes) -> bytes:
    """`key` if it is a valid key; StoreProtocolError (empty) or StoreLimitError."""
    if not key:
        raise StoreProtocolError(f"{what} is empty")
    if len(key) > MAX_KEY_BYTES:
        raise StoreLimitError(f"{what} of {len(key)} bytes exceeds limit {MAX_KEY_BYTES}")
    return key


def check_value(what: str, length: int) -> None:
    """StoreLimitError if a value of `length` bytes is over MAX_VALUE_BYTES."""
    if length > MAX_VALUE_BYTES:
        raise StoreLimitError(f"{what} of {length} bytes exceeds limit {MAX_VALUE_BYTES}")


def check_bound(what: str, bound: bytes) -> None:
    """StoreLimitError if a scan bound is over MAX_BOUND_BYTES."""
    if len(bound) > MAX_BOUND_BYTES:
        raise StoreLimitError(f"{what} of {len(bound)} bytes exceeds limit {MAX_BOUND_BYTES}")


def check_limit(limit: int) -> None:
    """StoreProtocolError if a scan limit is outside 1..MAX_SCAN_LIMIT."""
    if not 1 <= limit <= MAX_SCAN_LIMIT:
        raise StoreProtocolError(f"scan limit {limit} out of range 1..{MAX_SCAN_LIMIT}")


def check_ops(count: int) -> None:
    """StoreLimitError if a batch of `count` ops is over MAX_BATCH_OPS."""
    if count > MAX_BATCH_OPS:
        raise StoreLimitError(f"batch of {count} ops exceeds limit {MAX_BATCH_OPS}")


def check_request_id(request_id: int) -> None:
    """StoreProtocolError if `request_id` is CONNECTION_REPLY_ID, reserved for the server."""
    if request_id == CONNECTION_REPLY_ID:
        raise StoreProtocolError(
            f"request id {CONNECTION_REPLY_ID} is reserved for replies that answer no request,"
            f" expected 1..{MAX_REQUEST_ID}"
        )


def check_put_fits(key_len: int, value_len: int) -> None:
    """StoreLimitError if a PUT of this key and value needs a payload over one frame's."""
    room = MAX_PAYLOAD_BYTES - PUT_HEAD_BYTES - key_len
    if value_len > room:
        raise StoreLimitError(
            f"put value of {value_len} bytes exceeds limit {room} for a key of {key_len}"
            f" bytes (a frame payload holds {MAX_PAYLOAD_BYTES})"
        )


def check_batch_fits(payload_len: int) -> None:
    """StoreLimitError if a BATCH payload is over one frame's."""
    if payload_len > MAX_PAYLOAD_BYTES:
        raise StoreLimitError(
            f"batch payload of {payload_len} bytes exceeds limit {MAX_PAYLOAD_BYTES}"
        )


def check_overrun(what: str, end: int, payload: bytes) -> None:
    """StoreProtocolError if `what`, ending at byte `end`, runs past `payload`."""
    if end > len(payload):
        raise StoreProtocolError(
            f"{what} ends at byte {end}, past the payload of {len(payload)} bytes"
        )
