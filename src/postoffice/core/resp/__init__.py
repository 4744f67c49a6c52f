"""The command protocol's codec (RESP2, RESP3 and plain text lines), pure sans-I/O.

Shared by the command server and every control port (ingest's among them). `parser`
turns a connection's bytes into commands; `replies` holds the reply types and encodes
them; `refusals` the AUTH and HELLO checks and their errors; `globs` the linear
Redis glob matcher. Import the public names from here.
"""

from __future__ import annotations

from postoffice.core.errors import (
    NoAuthError,
    NoProtoError,
    PatternTooLongError,
    RespLimitError,
    RespProtocolError,
    RespRefusal,
    WrongPassError,
)
from postoffice.core.resp.globs import (
    MAX_CONFIG_PATTERN_BYTES,
    MAX_PATTERN_BYTES,
    Glob,
)
from postoffice.core.resp.parser import (
    MAX_ARRAY_ITEMS,
    MAX_BULK_BYTES,
    MAX_HEADER_BYTES,
    MAX_INLINE_BYTES,
    NEED_DATA,
    Command,
    Dialect,
    NeedData,
    RespParser,
)
from postoffice.core.resp.refusals import (
    AUTH_FAILURES_CLOSE,
    HELLO_BEFORE_AUTH,
    MAX_AUTH_FAILURES,
    NOAUTH,
    PROTOCOL_VERSIONS,
    AuthThrottle,
    check_credentials,
    hello_protocol,
)
from postoffice.core.resp.replies import (
    EMPTY_ARRAY,
    LARGE_BULK_BYTES,
    NIL,
    OK,
    PONG,
    Array,
    Bulk,
    Double,
    Error,
    Integer,
    Map,
    Reply,
    SimpleString,
    bulk,
    bulk_parts,
    encode_command,
    encode_resp,
    encode_resp3,
    encode_text,
)

__all__ = [
    "AUTH_FAILURES_CLOSE",
    "EMPTY_ARRAY",
    "HELLO_BEFORE_AUTH",
    "LARGE_BULK_BYTES",
    "MAX_ARRAY_ITEMS",
    "MAX_AUTH_FAILURES",
    "MAX_BULK_BYTES",
    "MAX_CONFIG_PATTERN_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_INLINE_BYTES",
    "MAX_PATTERN_BYTES",
    "NEED_DATA",
    "NIL",
    "NOAUTH",
    "OK",
    "PONG",
    "PROTOCOL_VERSIONS",
    "Array",
    "AuthThrottle",
    "Bulk",
    "Command",
    "Dialect",
    "Double",
    "Error",
    "Glob",
    "Integer",
    "Map",
    "NeedData",
    "NoAuthError",
    "NoProtoError",
    "PatternTooLongError",
    "Reply",
    "RespLimitError",
    "RespParser",
    "RespProtocolError",
    "RespRefusal",
    "SimpleString",
    "WrongPassError",
    "bulk",
    "bulk_parts",
    "check_credentials",
    "encode_command",
    "encode_resp",
    "encode_resp3",
    "encode_text",
    "hello_protocol",
]
