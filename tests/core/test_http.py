"""Tests for core.http: HttpProtocol over an in-memory transport, and the stock routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from postoffice.core.http import (
    MAX_HEAD_BYTES,
    HttpProtocol,
    Response,
    Route,
    health_routes,
    metrics_route,
)
from postoffice.core.metrics import StatsCollector
from tests.fakes import FakeTransport


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """One parsed HTTP response."""

    status: int
    headers: dict[str, str]
    body: bytes


def parse_replies(data: bytes | bytearray, *, head: tuple[int, ...] = ()) -> list[Reply]:
    """Split `data` into responses; the replies at indexes in `head` answer HEAD (no body)."""
    replies: list[Reply] = []
    rest = bytes(data)
    while rest:
        head_block, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, f"incomplete response head: {head_block!r}"
        status_line, *header_lines = head_block.decode("latin-1").split("\r\n")
        version, status, _ = status_line.split(" ", 2)
        assert version == "HTTP/1.1"
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if len(replies) in head else int(headers["content-length"])
        replies.append(Reply(status=int(status), headers=headers, body=rest[:length]))
        rest = rest[length:]
    return replies


def get(path: str, *, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n".encode()


def connect(routes: Mapping[str, Route]) -> tuple[HttpProtocol, FakeTransport]:
    protocol = HttpProtocol(routes)
    transport = FakeTransport(protocol, peer=("127.0.0.1", 5012), auto_lost=False)
    protocol.connection_made(transport)
    return protocol, transport


def _hello() -> Response:
    return Response(status=200, body=b"hello\n")


ROUTES: Mapping[str, Route] = {**health_routes(lambda: True), "/hello": _hello}


class TestRouting:
    def test_healthz_is_ok(self) -> None:
        protocol, transport = connect(ROUTES)
        protocol.data_received(get("/healthz"))
        [reply] = parse_replies(transport.written)
        assert reply.status == 200
        assert reply.body == b"ok\n"
        assert reply.headers["content-type"] == "text/plain; charset=utf-8"
        assert reply.headers["content-length"] == "3"
        assert not transport.closed

    def test_readyz_follows_the_ready_callback(self) -> None:
        ready = False
        protocol, transport = connect(health_routes(lambda: ready))
        protocol.data_received(get("/readyz"))
        ready = True
        protocol.data_received(get("/readyz"))
        not_ready, is_ready = parse_replies(transport.written)
        assert (not_ready.status, not_ready.body) == (503, b"not ready\n")
        assert (is_ready.status, is_ready.body) == (200, b"ready\n")

    def test_unknown_path_is_404_and_keeps_the_connection(self) -> None:
        protocol, transport = connect(ROUTES)
        protocol.data_received(get("/nope"))
        [reply] = parse_replies(transport.written)
        assert reply.status == 404
        assert not transport.closed

    def test_query_string_is_ignored(self) -> None:
        protocol, transport = connect(ROUTES)
        protocol.data_received(get("/hello?verbose=1&x=2"))
        [reply] = parse_replies(transport.written)
        assert (reply.status, reply.body) == (200, b"hello\n")

    @pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
    def test_other_methods_are_405_with_allow(self, method: str) -> None:
        protocol, transport = connect(ROUTES)
        protocol.data_received(get("/healthz", method=method))
        [reply] = parse_replies(transport.written)
        assert reply.status == 405
        assert reply.headers["allow"] == "GET, HEAD"
        assert not transport.closed

    def test_head_sends_headers_without_body(self) -> None:
        protocol, transport = connect(ROUTES)
        protocol.data_received(get("/hello", method="HEAD") + get("/hello"))
        head, full = parse_replies(transport.written, head=(0,))
        assert head.status == 200
        assert head.headers["content-length"] == "6"
        assert head.body == b""
        assert full.body == b"hello\n"

    def test_head_of_unknown_path_is_404_without_body(self) -> None:
        protocol, transport = connect(ROUTES)
        protocol.data_received(get("/nope", method="HEAD"))
        [reply] = parse_replies(transport.written, head=(0,))
        assert reply.status == 404
        assert bytes(transport.written).endswith(b"\r\n\r\n")


class TestConnection:
    def test_keep_alive_two_requests_in_one_feed(self) -> None:
        protocol, transport = connect(ROUTES)
        protocol.data_received(get("/healthz") + get("/hello"))
        first, second = parse_replies(transport.written)
        assert (first.status, first.body) == (200, b"ok\n")
        assert (second.status, second.body) == (200, b"hello\n")
        assert not transport.closed
        assert "requests=2" in repr(protocol)

    def test_request_split_byte_by_byte(self) -> None:
        protocol, transport = connect(ROUTES)
        request = get("/hello") + get("/healthz")
        for index in range(len(request)):
            protocol.data_received(request[index : index + 1])
        first, second = parse_replies(transport.written)
        assert first.body == b"hello\n"
        assert second.body == b"ok\n"

    def test_connection_close_header_closes_after_the_response(self) -> None:
        protocol, transport = connect(ROUTES)
        protocol.data_received(get("/healthz", extra="Connection: close\r\n"))
        [reply] = parse_replies(transport.written)
        assert reply.status == 200
        assert transport.closed

    def test_http_1_0_closes_after_the_response(self) -> None:
        protocol, transport = connect(ROUTES)
        protocol.data_received(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert bytes(transport.written).startswith(b"HTTP/1.1 200 OK\r\n")
        assert transport.closed

    def test_eof_between_requests_closes(self) -> None:
        protocol, transport = connect(ROUTES)
        protocol.data_received(get("/healthz"))
        assert protocol.eof_received() is True
        assert transport.closed
        assert len(parse_replies(transport.written)) == 1

    def test_repr_shows_peer_and_state(self) -> None:
        protocol, _ = connect(ROUTES)
        assert repr(protocol) == "<HttpProtocol 127.0.0.1:5012 READING requests=0>"


class TestBadRequests:
    def test_malformed_request_is_400_then_close(self) -> None:
        protocol, transport = connect(ROUTES)
        protocol.data_received(b"this is not http\r\n\r\n")
        [reply] = parse_replies(transport.written)
        assert reply.status == 400
        assert reply.headers["connection"] == "close"
        assert transport.closed
        assert "CLOSED" in repr(protocol)

    def test_missing_host_is_400_then_close(self) -> None:
        protocol, transport = connect(ROUTES)
        protocol.data_received(b"GET /healthz HTTP/1.1\r\n\r\n")
        [reply] = parse_replies(transport.written)
        assert reply.status == 400
        assert transport.closed

    def test_bytes_after_close_are_ignored(self) -> None:
        protocol, transport = connect(ROUTES)
        protocol.data_received(b"garbage\r\n\r\n")
        written = bytes(transport.written)
        protocol.data_received(get("/healthz"))
        assert bytes(transport.written) == written

    def test_incomplete_oversized_head_is_431_then_close(self) -> None:
        protocol, transport = connect(ROUTES)
        protocol.data_received(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ")
        protocol.data_received(b"a" * MAX_HEAD_BYTES)
        [reply] = parse_replies(transport.written)
        assert reply.status == 431
        assert transport.closed

    def test_complete_oversized_head_in_one_read_is_431_then_close(self) -> None:
        protocol, transport = connect(ROUTES)
        protocol.data_received(get("/healthz", extra=f"X-Big: {'a' * MAX_HEAD_BYTES}\r\n"))
        [reply] = parse_replies(transport.written)
        assert reply.status == 431
        assert transport.closed

    def test_head_just_under_the_limit_is_served(self) -> None:
        protocol, transport = connect(ROUTES)
        protocol.data_received(get("/healthz", extra=f"X-Big: {'a' * 16000}\r\n"))
        [reply] = parse_replies(transport.written)
        assert reply.status == 200

    @pytest.mark.parametrize(
        "extra",
        [
            "Content-Length: 5\r\n\r\nhello",
            "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ],
    )
    def test_request_body_is_413_then_close(self, extra: str) -> None:
        protocol, transport = connect(ROUTES)
        head, _, body = extra.partition("\r\n\r\n")
        protocol.data_received(get("/healthz", extra=head + "\r\n") + body.encode())
        [reply] = parse_replies(transport.written)
        assert reply.status == 413
        assert transport.closed

    def test_empty_body_is_accepted(self) -> None:
        protocol, transport = connect(ROUTES)
        protocol.data_received(get("/healthz", extra="Content-Length: 0\r\n"))
        [reply] = parse_replies(transport.written)
        assert reply.status == 200
        assert not transport.closed


class TestRouteErrors:
    def test_route_exception_is_500_logged_and_connection_stays(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        def broken() -> Response:
            raise RuntimeError("boom")

        protocol, transport = connect({"/broken": broken, "/hello": _hello})
        with caplog.at_level(logging.ERROR, logger="postoffice.core.http"):
            protocol.data_received(get("/broken") + get("/hello"))
        failed, ok = parse_replies(transport.written)
        assert failed.status == 500
        assert ok.body == b"hello\n"
        assert not transport.closed
        [record] = caplog.records
        assert record.getMessage() == "http route failed peer=127.0.0.1:5012 path=/broken"
        assert record.exc_info is not None

    def test_unsendable_response_closes(self, caplog: pytest.LogCaptureFixture) -> None:
        def bad_type() -> Response:
            return Response(status=200, body=b"x", content_type="text/plain\r\nX-Evil: 1")

        protocol, transport = connect({"/bad": bad_type})
        with caplog.at_level(logging.WARNING, logger="postoffice.core.http"):
            protocol.data_received(get("/bad"))
        assert transport.written == b""
        assert transport.closed
        assert "http response not sendable" in caplog.text


class TestAsyncRoutes:
    async def test_reading_pauses_while_the_route_runs(self) -> None:
        release = asyncio.Event()

        async def slow() -> Response:
            await release.wait()
            return Response(status=200, body=b"slow\n")

        protocol, transport = connect({"/slow": slow, "/hello": _hello})
        protocol.data_received(get("/slow") + get("/hello"))
        assert not transport.reading
        assert transport.written == b""
        assert "BUSY" in repr(protocol)
        release.set()
        await asyncio.wait_for(transport.resumed.wait(), timeout=5)
        first, second = parse_replies(transport.written)
        assert first.body == b"slow\n"
        assert second.body == b"hello\n"
        assert transport.reading
        assert transport.calls.count("pause_reading") == 1

    async def test_async_route_exception_is_500(self, caplog: pytest.LogCaptureFixture) -> None:
        async def broken() -> Response:
            raise RuntimeError("boom")

        protocol, transport = connect({"/broken": broken})
        with caplog.at_level(logging.ERROR, logger="postoffice.core.http"):
            protocol.data_received(get("/broken"))
            await asyncio.wait_for(transport.resumed.wait(), timeout=5)
        [reply] = parse_replies(transport.written)
        assert reply.status == 500
        assert not transport.closed
        assert "http route failed" in caplog.text

    async def test_head_on_async_route_has_no_body(self) -> None:
        async def fast() -> Response:
            return Response(status=200, body=b"fast\n")

        protocol, transport = connect({"/fast": fast})
        protocol.data_received(get("/fast", method="HEAD"))
        await asyncio.wait_for(transport.resumed.wait(), timeout=5)
        [reply] = parse_replies(transport.written, head=(0,))
        assert reply.headers["content-length"] == "5"
        assert reply.body == b""

    async def test_eof_while_busy_answers_then_closes(self) -> None:
        release = asyncio.Event()

        async def slow() -> Response:
            await release.wait()
            return Response(status=200, body=b"slow\n")

        protocol, transport = connect({"/slow": slow})
        protocol.data_received(get("/slow"))
        assert protocol.eof_received() is True
        assert not transport.closed
        release.set()
        await asyncio.wait_for(transport.resumed.wait(), timeout=5)
        [reply] = parse_replies(transport.written)
        assert reply.body == b"slow\n"
        assert transport.closed

    async def test_connection_lost_cancels_the_route(self) -> None:
        started = asyncio.Event()
        cancelled = asyncio.Event()

        async def hang() -> Response:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return Response(status=200, body=b"never\n")

        protocol, transport = connect({"/hang": hang})
        protocol.data_received(get("/hang"))
        await asyncio.wait_for(started.wait(), timeout=5)
        protocol.connection_lost(None)
        await asyncio.wait_for(cancelled.wait(), timeout=5)
        assert transport.written == b""


class TestStockRoutes:
    def test_metrics_route_renders_the_registry(self) -> None:
        registry = CollectorRegistry()
        registry.register(StatsCollector("svc", lambda: {"up": 1}))
        protocol, transport = connect({"/metrics": metrics_route(registry)})
        protocol.data_received(get("/metrics"))
        [reply] = parse_replies(transport.written)
        assert reply.status == 200
        assert reply.headers["content-type"] == CONTENT_TYPE_LATEST
        assert b"\nsvc_up 1.0\n" in reply.body

    def test_health_routes_paths(self) -> None:
        assert sorted(health_routes(lambda: True)) == ["/healthz", "/readyz"]
