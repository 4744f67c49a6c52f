"""HttpProtocol (HTTP/1.1) with endpoints that take a body: the body read within its limit,
refused with 413 past it (announced or chunked), credentials checked before the handler."""

from __future__ import annotations

import json

from postoffice.core.http import HttpProtocol
from postoffice.core.httpapi import Endpoint, HttpRequest, Response, Routes, json_response
from tests.core.test_http import parse_replies
from tests.fakes import FakeTransport


def _put(request: HttpRequest) -> Response:
    return json_response({"got": json.loads(request.body)})


ROUTES: Routes = {
    "/config": Endpoint(
        handlers={"GET": lambda r: json_response({}), "PUT": _put},
        password=lambda: "pw",
        max_body_bytes=100,
    )
}
AUTH = "Authorization: Bearer pw\r\n"


def connect() -> tuple[HttpProtocol, FakeTransport]:
    protocol = HttpProtocol(ROUTES)
    transport = FakeTransport(protocol, auto_lost=False)
    protocol.connection_made(transport)
    return protocol, transport


def put(body: bytes, *, extra: str = AUTH, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    head = (
        f"PUT /config HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Content-Length: {size}\r\n{extra}\r\n"
    )
    return head.encode() + body


def test_body_within_the_limit_reaches_the_handler_and_the_connection_stays() -> None:
    protocol, transport = connect()
    protocol.data_received(put(b'{"a": 1}'))
    protocol.data_received(b"GET /config HTTP/1.1\r\nHost: t\r\n" + AUTH.encode() + b"\r\n")
    first, second = parse_replies(transport.written)
    assert (first.status, json.loads(first.body)) == (200, {"got": {"a": 1}})
    assert second.status == 200
    assert not transport.closed


def test_body_split_across_reads_is_gathered() -> None:
    protocol, transport = connect()
    data = put(b'{"key": "value"}')
    for i in range(len(data)):
        protocol.data_received(data[i : i + 1])
    [reply] = parse_replies(transport.written)
    assert json.loads(reply.body) == {"got": {"key": "value"}}


def test_announced_body_over_the_limit_is_413_before_it_is_read() -> None:
    protocol, transport = connect()
    protocol.data_received(put(b"", length=101))
    [reply] = parse_replies(transport.written)
    assert reply.status == 413
    assert json.loads(reply.body)["message"] == "request body exceeds limit 100 bytes"
    assert transport.closed


def test_chunked_body_over_the_limit_is_413_once_it_passes_it() -> None:
    protocol, transport = connect()
    head = (
        "PUT /config HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Transfer-Encoding: chunked\r\n{AUTH}\r\n"
    )
    protocol.data_received(head.encode())
    protocol.data_received(b"64\r\n" + b"x" * 100 + b"\r\n")
    assert transport.written == b""  # 100 bytes: still within the limit
    protocol.data_received(b"1\r\nx\r\n")
    [reply] = parse_replies(transport.written)
    assert reply.status == 413
    assert transport.closed


def test_body_to_a_plain_route_is_still_refused() -> None:
    protocol = HttpProtocol({"/healthz": lambda: Response(status=200, body=b"ok\n")})
    transport = FakeTransport(protocol, auto_lost=False)
    protocol.connection_made(transport)
    protocol.data_received(b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx")
    [reply] = parse_replies(transport.written)
    assert (reply.status, reply.body) == (413, b"request bodies are not accepted\n")


def test_missing_credentials_never_reach_the_handler() -> None:
    protocol, transport = connect()
    protocol.data_received(put(b'{"a": 1}', extra=""))
    [reply] = parse_replies(transport.written)
    assert reply.status == 401
    assert not transport.closed  # a refusal, not a broken stream
