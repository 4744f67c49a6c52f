"""Unit tests of the ingest client's connections: the /info response parser (bytes only) and
a failed write over a fake stream."""

from __future__ import annotations

import asyncio
import gc
import json
from typing import cast

import pytest

from postoffice.core.errors import BrokenError
from postoffice.ingest.client.links import (
    MAX_INFO_BYTES,
    Link,
    ServerInfo,
    parse_info,
    parse_info_response,
)
from postoffice.ingest.errors import IngestLimitError, IngestProtocolError


def http(body: bytes, *, status: str = "200 OK", headers: str | None = None) -> bytes:
    if headers is None:
        headers = f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
    return f"HTTP/1.1 {status}\r\n{headers}\r\n".encode() + body


INFO = json.dumps({"x": 2, "ttl_s": 86400, "data_ports": [7100, 7101]}).encode()


class TestInfoResponse:
    def test_good_response(self) -> None:
        assert parse_info_response(http(INFO)) == (7100, 7101)

    def test_the_ack_port_is_read_when_named(self) -> None:
        body = json.dumps({"data_ports": [7100], "sys_ports": {"health": 7000, "ack": 7003}})
        assert parse_info(http(body.encode())) == ServerInfo(data_ports=(7100,), ack_port=7003)
        assert parse_info(http(INFO)) == ServerInfo(data_ports=(7100, 7101), ack_port=None)

    @pytest.mark.parametrize("ack", ["7003", 0, 65536, True])
    def test_a_bad_ack_port_is_refused(self, ack: object) -> None:
        body = json.dumps({"data_ports": [7100], "sys_ports": {"ack": ack}}).encode()
        with pytest.raises(
            IngestProtocolError, match=r"^/info sys_ports\.ack is .+, expected a port$"
        ):
            parse_info(http(body))

    def test_body_ends_at_content_length(self) -> None:
        assert parse_info_response(http(INFO) + b"trailing junk") == (7100, 7101)

    def test_close_delimited_body(self) -> None:
        assert parse_info_response(http(INFO, headers="")) == (7100, 7101)

    def test_oversize_response_is_refused(self) -> None:
        big = http(json.dumps({"data_ports": [7100], "pad": "x" * MAX_INFO_BYTES}).encode())
        with pytest.raises(IngestLimitError, match=rf"exceeds limit {MAX_INFO_BYTES}$"):
            parse_info_response(big)

    @pytest.mark.parametrize(
        ("data", "message"),
        [
            (
                http(b"not ready\n", status="503 Service Unavailable"),
                r"^/info answered status 503, expected 200$",
            ),
            (http(b"", status="404 Not Found"), r"^/info answered status 404, expected 200$"),
            (b"SSH-2.0-OpenSSH\r\n\r\n", r"expected an HTTP/1\.x status line$"),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n", r"ends before its blank line$"),
            (http(b"{", headers="content-length: 1\r\n"), r"^/info body is not json"),
            (http(b"{}", headers="content-length: 9\r\n"), r"^/info body of 2 bytes, expected 9$"),
            (http(b"{}", headers="content-length: -1\r\n"), r"is not a number$"),
            (http(b"{}", headers="transfer-encoding: chunked\r\n"), r"transfer-encoding"),
            (http(b"{}"), r"^/info data_ports is None"),
            (http(b"[7100]"), r"^/info data_ports is None"),
            (http(b'{"data_ports": []}'), r"expected a list of ports$"),
            (http(b'{"data_ports": [0]}'), r"expected a list of ports$"),
            (http(b'{"data_ports": [70000]}'), r"expected a list of ports$"),
            (http(b'{"data_ports": ["7100"]}'), r"expected a list of ports$"),
            (http(b'{"data_ports": [true]}'), r"expected a list of ports$"),
        ],
    )
    def test_bad_responses_are_refused(self, data: bytes, message: str) -> None:
        with pytest.raises(IngestProtocolError, match=message):
            parse_info_response(data)


class _BrokenWriter:
    """A stream writer whose peer is gone: every drain fails, as asyncio's does."""

    def __init__(self) -> None:
        self.closed = False

    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        raise ConnectionResetError("Connection lost")

    def close(self) -> None:
        self.closed = True


async def test_a_failed_write_raises_once_and_leaves_no_unretrieved_error() -> None:
    """The call that failed to write raises BrokenError; its own reply future must not be
    failed as well, or asyncio reports 'Future exception was never retrieved' later."""
    writer = _BrokenWriter()

    async def connect(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return asyncio.StreamReader(), cast(asyncio.StreamWriter, writer)

    unretrieved: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
    link = Link("127.0.0.1", (1,), connect=connect, timeout_s=5.0)
    await link.ensure()
    with pytest.raises(BrokenError, match=r"^cannot write to 127\.0\.0\.1:1: Connection lost$"):
        await link.call(b"x" * 100_000, link.next_id())  # large: written and drained at once
    assert writer.closed
    await link.close()
    gc.collect()
    await asyncio.sleep(0)
    loop.set_exception_handler(None)
    assert unretrieved == []


class _StalledWriter:
    """A stream writer whose drain waits until released (a full socket buffer)."""

    def __init__(self) -> None:
        self.closed = False
        self.release = asyncio.Event()
        self.draining = asyncio.Event()

    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        self.draining.set()
        await self.release.wait()

    def close(self) -> None:
        self.closed = True


async def test_a_call_queued_behind_a_write_when_the_link_drops_leaves_no_unretrieved_error() -> (
    None
):
    """A call waiting for the write lock when the connection drops has its reply future
    failed with the drop; it raises on its own, and that future's error must count as
    retrieved, or asyncio reports 'Future exception was never retrieved' later."""
    writer = _StalledWriter()
    reader = asyncio.StreamReader()

    async def connect(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return reader, cast(asyncio.StreamWriter, writer)

    unretrieved: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
    link = Link("127.0.0.1", (1,), connect=connect, timeout_s=5.0)
    await link.ensure()
    large = b"x" * 100_000  # written and drained at once, holding the write lock
    first = asyncio.ensure_future(link.call(large, link.next_id()))
    await writer.draining.wait()
    second = asyncio.ensure_future(link.call(large, link.next_id()))
    await asyncio.sleep(0)  # the second call waits for the lock
    reader.feed_eof()  # the node is gone
    for _ in range(10):
        await asyncio.sleep(0)
    writer.release.set()
    results = await asyncio.gather(first, second, return_exceptions=True)
    assert [type(r) for r in results] == [BrokenError, BrokenError]
    assert str(results[0]) == "127.0.0.1:1 closed the connection"
    assert str(results[1]) == "connection to 127.0.0.1:1 was reset"
    await link.close()
    del first, second, results
    gc.collect()
    await asyncio.sleep(0)
    loop.set_exception_handler(None)
    assert unretrieved == []


class _Transport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


class _CutOffWriter:
    """A stream writer to a peer cut off by the network: bytes are left unsent, so closing
    never completes (no FIN or RST comes back) until the transport is aborted."""

    def __init__(self) -> None:
        self.transport = _Transport()
        self.closed = False

    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    async def wait_closed(self) -> None:
        await asyncio.Event().wait()  # never: only an abort ends such a connection


async def test_closing_a_link_to_a_peer_cut_off_aborts_it_after_the_timeout() -> None:
    writer = _CutOffWriter()

    async def connect(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return asyncio.StreamReader(), cast(asyncio.StreamWriter, writer)

    link = Link("127.0.0.1", (1,), connect=connect, timeout_s=0.01)
    await link.ensure()
    async with asyncio.timeout(5):
        await link.close()
    assert writer.closed
    assert writer.transport.aborted
