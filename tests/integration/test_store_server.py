"""The store server as a real process, driven over its binary protocol on 127.0.0.1."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from postoffice.core.framing import FrameDecoder, encode_parts
from postoffice.store.wire import (
    NEED_DATA,
    BatchRequest,
    DeleteRequest,
    GetRequest,
    PingRequest,
    PutRequest,
    Request,
    Response,
    ScanRequest,
    StatsRequest,
    Status,
    decode_delete_body,
    decode_response,
    decode_scan_body,
    decode_stats_body,
    encode_request,
)
from tests.integration.conftest import ServerProcess
from tests.integration.rawclient import RawClient

pytestmark = pytest.mark.integration

Serve = Callable[..., ServerProcess]


_OPEN: list[RawClient] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


class Conn:
    """A raw protocol connection: send requests, read responses in order."""

    def __init__(self, port: int) -> None:
        self.raw = RawClient.connect(port)
        _OPEN.append(self.raw)
        self.frames = FrameDecoder()
        self.next_id = 0

    def send(self, *requests: Request) -> list[int]:
        ids = []
        wire = b""
        for request in requests:
            self.next_id += 1
            ids.append(self.next_id)
            wire += encode_request(request, self.next_id)
        self.raw.send(wire)
        return ids

    def read(self, count: int) -> list[Response]:
        out: list[Response] = []
        while len(out) < count:
            event = self.frames.next_event()
            if event is NEED_DATA:
                block = self.raw.recv()
                if not block:
                    break
                self.frames.feed(block)
                continue
            out.append(decode_response(event))
        return out

    def call(self, request: Request) -> Response:
        self.send(request)
        return self.read(1)[0]


def args(tmp_path: Path, *extra: str) -> list[str]:
    return ["--port", "0", "--metrics-port", "0", "--data-dir", str(tmp_path / "var"), *extra]


def test_every_request_type(serve: Serve, tmp_path: Path) -> None:
    server = serve("store", *args(tmp_path))
    c = Conn(server.port)
    assert c.call(PingRequest()).status is Status.OK
    assert c.call(PutRequest(key=b"a", value=b"1")).status is Status.OK
    got = c.call(GetRequest(key=b"a"))
    assert (got.status, got.body) == (Status.OK, b"1")
    assert c.call(GetRequest(key=b"zz")).status is Status.NOT_FOUND
    ops = (
        PutRequest(key=b"b", value=b"2"),
        PutRequest(key=b"c", value=b"3"),
        DeleteRequest(key=b"a"),
    )
    assert c.call(BatchRequest(ops=ops)).status is Status.OK
    deleted = c.call(DeleteRequest(key=b"b"))
    assert decode_delete_body(deleted.body) is True
    page = decode_scan_body(c.call(ScanRequest(limit=10)).body)
    assert page.items == ((b"c", b"3"),)
    assert not page.more
    stats = decode_stats_body(c.call(StatsRequest()).body)
    assert stats["requests"] == 8
    counts = {key: value for key, value in stats.items() if key.startswith("requests_")}
    assert counts == {
        "requests_ping": 1,
        "requests_get": 2,
        "requests_put": 1,
        "requests_delete": 1,
        "requests_batch": 1,
        "requests_scan": 1,
        "requests_stats": 1,
        "requests_unknown": 0,
    }


def test_pipelined_requests_are_answered_in_order(serve: Serve, tmp_path: Path) -> None:
    server = serve("store", *args(tmp_path))
    c = Conn(server.port)
    puts = [PutRequest(key=b"k%05d" % i, value=b"v%d" % i) for i in range(500)]
    ids = c.send(*puts)
    replies = c.read(len(ids))
    assert [r.request_id for r in replies] == ids
    assert all(r.status is Status.OK for r in replies)
    gets = c.send(*(GetRequest(key=p.key) for p in puts))
    assert [r.body for r in c.read(len(gets))] == [p.value for p in puts]
    page = decode_scan_body(c.call(ScanRequest(prefix=b"k000", limit=5)).body)
    assert [k for k, _ in page.items] == [b"k%05d" % i for i in range(5)]
    assert page.more


def test_acknowledged_writes_survive_kill_9(serve: Serve, tmp_path: Path) -> None:
    server = serve("store", *args(tmp_path))
    c = Conn(server.port)
    ids = c.send(*(PutRequest(key=b"d%03d" % i, value=b"x" * 100) for i in range(200)))
    assert all(r.status is Status.OK for r in c.read(len(ids)))
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    again = serve("store", *args(tmp_path))
    c2 = Conn(again.port)
    ids = c2.send(*(GetRequest(key=b"d%03d" % i) for i in range(200)))
    assert all(r.body == b"x" * 100 for r in c2.read(len(ids)))


def test_garbage_and_oversize_keep_others_served(serve: Serve, tmp_path: Path) -> None:
    server = serve("store", *args(tmp_path, "--max-request-size", "4096"))
    good = Conn(server.port)
    bad = Conn(server.port)
    bad.raw.send(b"HELLO, IS THIS REDIS?\r\n")
    reply = bad.read(1)
    assert reply[0].status is Status.BAD_REQUEST
    assert bad.raw.read_until_eof() == b""  # closed after the error
    big = Conn(server.port)
    big.raw.send(encode_parts(0x03, 0, 5, b"\0\x01k" + b"v" * 10_000)[:200])
    assert big.read(1)[0].status is Status.TOO_LARGE
    # A well-framed but malformed request: an error reply, the connection stays.
    weird = Conn(server.port)
    weird.raw.send(encode_parts(0x02, 0, 9, b""))  # GET with an empty key
    assert weird.read(1)[0].status is Status.BAD_REQUEST
    assert weird.call(PingRequest()).status is Status.OK
    assert good.call(PutRequest(key=b"ok", value=b"yes")).status is Status.OK


def test_over_the_connection_limit_gets_busy(serve: Serve, tmp_path: Path) -> None:
    server = serve("store", *args(tmp_path, "--max-connections", "2"))
    held = [Conn(server.port) for _ in range(2)]
    for c in held:
        assert c.call(PingRequest()).status is Status.OK
    refused = Conn(server.port)
    (busy,) = refused.read(1)
    assert (busy.request_id, busy.status) == (0, Status.BUSY)  # answers no request
    assert refused.raw.read_until_eof() == b""  # then closed


def test_idle_clients_are_closed(serve: Serve, tmp_path: Path) -> None:
    server = serve("store", *args(tmp_path, "--idle-timeout", "0.3"))
    c = Conn(server.port)
    assert c.call(PingRequest()).status is Status.OK
    assert c.raw.read_until_eof() == b""


def test_a_request_trickling_in_does_not_keep_a_connection_alive(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve("store", *args(tmp_path, "--idle-timeout", "0.5"))
    c = Conn(server.port)
    wire = encode_request(PutRequest(key=b"slow", value=b"v" * 100), 1)
    deadline = time.monotonic() + 10
    closed = False
    for byte in wire:  # one byte every 0.2 s: never 0.5 s without a byte
        try:
            c.raw.send(bytes([byte]))
        except OSError:  # reset: the server closed it
            closed = True
            break
        try:
            closed = c.raw.recv(timeout_s=0.2) == b""
        except TimeoutError:
            pass
        except OSError:  # reset: the server closed it
            closed = True
        if closed or time.monotonic() > deadline:
            break
    assert closed
    assert Conn(server.port).call(GetRequest(key=b"slow")).status is Status.NOT_FOUND


def test_sigterm_drains_and_exits_zero(serve: Serve, tmp_path: Path) -> None:
    server = serve("store", *args(tmp_path))
    c = Conn(server.port)
    ids = c.send(*(PutRequest(key=b"t%03d" % i, value=b"v") for i in range(100)))
    server.proc.send_signal(signal.SIGTERM)
    replies = c.read(len(ids))
    assert len(replies) == len(ids)
    assert server.proc.wait(15) == 0


def test_blocking_client(serve: Serve, tmp_path: Path) -> None:
    from postoffice.store.client import Client
    from postoffice.store.wire import StoreProtocolError

    server = serve("store", *args(tmp_path))
    with Client("127.0.0.1", server.port) as client:
        client.ping()
        client.put(b"user:1", b"ada")
        client.put(b"user:2", b"grace")
        assert client.get(b"user:1") == b"ada"
        assert client.get(b"missing") is None
        client.batch([PutRequest(key=b"user:3", value=b"linus"), DeleteRequest(key=b"user:1")])
        assert [k for k, _ in client.scan(prefix=b"user:").items] == [b"user:2", b"user:3"]
        assert client.delete(b"user:2") is True
        assert client.delete(b"user:2") is False
        assert client.stats()["requests"] >= 8  # type: ignore[operator]
        with pytest.raises(StoreProtocolError, match=r"^scan limit 0 out of range 1\.\.10000$"):
            client.call(ScanRequest(limit=0))  # refused before it is sent
        assert client.get(b"user:3") == b"linus"  # the connection is still usable


def test_async_client_pipelines(serve: Serve, tmp_path: Path) -> None:
    import asyncio

    from postoffice.store.client import AsyncClient

    server = serve("store", *args(tmp_path))

    async def go() -> list[bytes | None]:
        async with await AsyncClient.connect("127.0.0.1", server.port) as client:
            await asyncio.gather(*(client.put(b"a%03d" % i, b"%d" % i) for i in range(300)))
            return await asyncio.gather(*(client.get(b"a%03d" % i) for i in range(300)))

    assert asyncio.run(go()) == [b"%d" % i for i in range(300)]


def test_command_line(serve: Serve, tmp_path: Path) -> None:
    import subprocess

    from tests.integration.conftest import POSTOFFICE

    server = serve("store", *args(tmp_path))
    port = str(server.port)

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*POSTOFFICE, "store", *argv, "--port", port],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    assert run("put", "greeting", "hello").stdout.strip() == "OK"
    assert run("get", "greeting").stdout.strip() == "hello"
    assert run("scan", "--prefix", "greet").stdout.strip() == "greeting\thello"
    assert '"requests"' in run("stats").stdout
    assert run("del", "greeting").stdout.strip() == "1"
    missing = run("get", "greeting")
    assert missing.returncode == 1
    assert "no such key 'greeting'" in missing.stderr


def test_a_client_vanishing_mid_request_costs_nothing(serve: Serve, tmp_path: Path) -> None:
    server = serve("store", *args(tmp_path))
    for cut in (10, 30, 60):  # inside the header, inside the key, inside the value
        ghost = RawClient.connect(server.port)
        ghost.send(encode_request(PutRequest(key=b"ghost", value=b"v" * 100), 1)[:cut])
        ghost.close()
    # Many requests in flight, then the client disappears without reading a reply.
    flood = RawClient.connect(server.port)
    flood.send(
        b"".join(
            encode_request(PutRequest(key=b"f%04d" % i, value=b"x" * 1000), i + 1)
            for i in range(500)
        )
    )
    flood.close()
    c = Conn(server.port)
    assert c.call(GetRequest(key=b"ghost")).status is Status.NOT_FOUND  # never half there
    assert c.call(PutRequest(key=b"alive", value=b"yes")).status is Status.OK
    deadline = time.monotonic() + 10  # the vanished clients are noticed and released
    while time.monotonic() < deadline:
        stats = decode_stats_body(c.call(StatsRequest()).body)
        if stats["connections_active"] == 1:
            break
    assert stats["connections_active"] == 1
