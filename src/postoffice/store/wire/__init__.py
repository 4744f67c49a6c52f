"""The store's binary protocol (port 7400), pure sans-I/O on core frames: `messages`
(limits, kinds, statuses, the shared checks), `requests` and `responses` (their codecs).
Wire format: docs/protocols/store.md. Import the public names from here."""

from __future__ import annotations

from postoffice.core.framing import NEED_DATA, NeedData
from postoffice.store.errors import Status, StoreLimitError, StoreProtocolError
from postoffice.store.wire.messages import (
    CONNECTION_REPLY_ID,
    MAX_BATCH_OPS,
    MAX_BOUND_BYTES,
    MAX_KEY_BYTES,
    MAX_SCAN_LIMIT,
    MAX_VALUE_BYTES,
    RESPONSE_TYPE,
    TRACED_FLAG,
    BatchOp,
    BatchRequest,
    DeleteRequest,
    GetRequest,
    PingRequest,
    PutRequest,
    Request,
    RequestType,
    Response,
    ScanPage,
    ScanRequest,
    StatsRequest,
    next_start,
)
from postoffice.store.wire.requests import (
    RequestDecoder,
    add_trace_context,
    decode_request,
    decode_request_parts,
    decode_traced_request,
    encode_get,
    encode_put,
    encode_request,
    split_put,
    split_trace_context,
)
from postoffice.store.wire.responses import (
    ResponseDecoder,
    decode_delete_body,
    decode_empty_body,
    decode_error_body,
    decode_get_body,
    decode_response,
    decode_response_parts,
    decode_scan_body,
    decode_stats_body,
    encode_delete_body,
    encode_error,
    encode_response,
    encode_scan_body,
    encode_stats_body,
    response_head,
)

# Design
# ------
# Every request is one core frame whose type names the request and whose flags are 0,
# or TRACED_FLAG: then a 25-byte trace context precedes the request's own payload.
# Every response is one RESPONSE frame (type 0x80) echoing the request id: a status
# byte, then a body whose layout depends on the request it answers (the response does
# not repeat the request kind; the client knows what it asked). There is no state
# machine: `RequestDecoder` is `FrameDecoder` plus `decode_request`, and the two
# failure kinds stay apart on purpose. A FrameError means framing is lost and the
# connection must close; a StoreProtocolError means one well-framed request was bad, so
# the server answers it with the error's `status` and keeps reading.
#
# Encoders apply the same rules as decoders (key and value limits, scan limit range),
# so a client can never send a request the server would reject as malformed. Tools that
# want to probe a server with bad requests build frames with `framing.encode_parts`.

__all__ = [
    "CONNECTION_REPLY_ID",
    "MAX_BATCH_OPS",
    "MAX_BOUND_BYTES",
    "MAX_KEY_BYTES",
    "MAX_SCAN_LIMIT",
    "MAX_VALUE_BYTES",
    "NEED_DATA",
    "RESPONSE_TYPE",
    "TRACED_FLAG",
    "BatchOp",
    "BatchRequest",
    "DeleteRequest",
    "GetRequest",
    "NeedData",
    "PingRequest",
    "PutRequest",
    "Request",
    "RequestDecoder",
    "RequestType",
    "Response",
    "ResponseDecoder",
    "ScanPage",
    "ScanRequest",
    "StatsRequest",
    "Status",
    "StoreLimitError",
    "StoreProtocolError",
    "add_trace_context",
    "decode_delete_body",
    "decode_empty_body",
    "decode_error_body",
    "decode_get_body",
    "decode_request",
    "decode_request_parts",
    "decode_response",
    "decode_response_parts",
    "decode_scan_body",
    "decode_stats_body",
    "decode_traced_request",
    "encode_delete_body",
    "encode_error",
    "encode_get",
    "encode_put",
    "encode_request",
    "encode_response",
    "encode_scan_body",
    "encode_stats_body",
    "next_start",
    "response_head",
    "split_put",
    "split_trace_context",
]
