"""The command server's HTTP port as a real process: the admin API over HTTP/1.1 and
HTTP/2 (curl, httpx), and the command protocol over WebSocket (the websockets library)."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import socket
import subprocess
from collections.abc import Callable

import httpx
import pytest
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.integration.conftest import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

Serve = Callable[..., ServerProcess]
BASE = ("--port", "0", "--metrics-port", "0")
_TIMEOUT_S = 10.0
CURL = shutil.which("curl")


def http_base(server: ServerProcess) -> str:
    host, port = server.listeners["metrics"]
    return f"http://{host}:{port}"


def ws_url(server: ServerProcess) -> str:
    host, port = server.listeners["metrics"]
    return f"ws://{host}:{port}/ws"


def curl(*args: str) -> tuple[int, str, bytes]:
    """Run curl; (status, HTTP version, body) of its one response."""
    assert CURL is not None
    done = subprocess.run(
        [
            CURL,
            "-sS",
            "--max-time",
            str(_TIMEOUT_S),
            "-o",
            "-",
            "-w",
            "\n%{http_code} %{http_version}",
            *args,
        ],
        capture_output=True,
        timeout=_TIMEOUT_S + 5,
        check=True,
    )
    body, _, tail = done.stdout.rpartition(b"\n")
    code, version = tail.decode().split()
    return int(code), version, body


# -- the admin API -----------------------------------------------------------------------


def test_stats_clients_and_config_answer_json(serve: Serve) -> None:
    server = serve("command", *BASE)
    host, port = server.listeners["command"]
    r = redis.Redis(host=host, port=port, socket_timeout=10, client_name="watched")
    assert r.ping() is True
    with httpx.Client(base_url=http_base(server), timeout=_TIMEOUT_S) as http:
        stats = http.get("/stats")
        assert stats.status_code == 200
        assert stats.headers["content-type"] == "application/json"
        info = stats.json()
        assert info["clients"]["connected_clients"] >= 1
        assert info["stats"]["total_commands_processed"] >= 1
        [entry] = [c for c in http.get("/clients").json() if c["name"] == "watched"]
        assert entry["id"] == r.client_id()
        assert {"addr", "age", "idle", "tot-net-in", "tot-net-out", "state"} <= set(entry)
        assert entry["tot-net-in"] > 0
        assert http.get("/config").json()["maxclients"] == "10000"


def test_put_config_changes_what_config_get_says(serve: Serve) -> None:
    server = serve("command", *BASE)
    host, port = server.listeners["command"]
    r = redis.Redis(host=host, port=port, socket_timeout=10)
    with httpx.Client(base_url=http_base(server), timeout=_TIMEOUT_S) as http:
        reply = http.put("/config", json={"timeout": 120, "maxclients": "500"})
        assert reply.status_code == 200, reply.text
        assert reply.json()["timeout"] == "120"
    assert r.config_get("timeout") == {"timeout": "120"}
    assert r.config_get("maxclients") == {"maxclients": "500"}


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (b'{"port": 1}', "application/json", 403, "can't set immutable config"),
        (b'{"nope": 1}', "application/json", 400, "Unknown option"),
        (b'{"maxclients": "lots"}', "application/json", 400, "expected a number, got 'lots'"),
        (b'{"maxclients": 0}', "application/json", 400, "max_connections"),
        (
            b'{"maxclients": true}',
            "application/json",
            400,
            "must be a string or a number, got bool",
        ),
        (b"[1]", "application/json", 400, "expected a JSON object, got list"),
        (b"{", "application/json", 400, "body is not valid JSON"),
        (b"maxclients=5", "application/x-www-form-urlencoded", 415, "expected content-type"),
    ],
)
def test_put_config_refuses_bad_bodies_with_a_clear_error(
    serve: Serve, body: bytes, content_type: str, status: int, message: str
) -> None:
    server = serve("command", *BASE)
    with httpx.Client(base_url=http_base(server), timeout=_TIMEOUT_S) as http:
        reply = http.put("/config", content=body, headers={"content-type": content_type})
        assert reply.status_code == status
        assert message in reply.json()["message"]
        assert http.get("/config").json()["maxclients"] == "10000"  # nothing changed


def test_admin_paths_need_the_password_and_probes_do_not(serve: Serve) -> None:
    server = serve("command", *BASE, "--requirepass", "s3cret")
    with httpx.Client(base_url=http_base(server), timeout=_TIMEOUT_S) as http:
        missing = http.get("/stats")
        assert missing.status_code == 401
        assert "Bearer" in missing.headers["www-authenticate"]
        assert http.get("/clients", headers={"authorization": "Bearer wrong"}).status_code == 403
        assert http.get("/stats", headers={"authorization": "Bearer s3cret"}).status_code == 200
        basic = base64.b64encode(b"default:s3cret").decode()
        assert http.get("/config", headers={"authorization": f"Basic {basic}"}).status_code == 200
        assert http.put("/config", json={"timeout": 5}).status_code == 401
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").status_code == 200
        assert http.get("/metrics").status_code == 200


def test_wrong_method_and_path_and_oversized_body_and_head(serve: Serve) -> None:
    server = serve("command", *BASE)
    with httpx.Client(base_url=http_base(server), timeout=_TIMEOUT_S) as http:
        wrong = http.post("/config", json={})
        assert wrong.status_code == 405
        assert wrong.headers["allow"] == "GET, HEAD, PUT"
        assert http.get("/nowhere").status_code == 404
        big = http.put("/config", json={"timeout": "1" * 70_000})
        assert big.status_code == 413
        assert "exceeds limit 65536" in big.json()["message"]
        assert http.get("/stats").status_code == 200  # a new connection is served
        huge = http.get("/stats", headers={"x-padding": "p" * 17_000})
        assert huge.status_code == 431
        assert http.get("/stats").status_code == 200


# -- HTTP/2 --------------------------------------------------------------------------------


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_prior_knowledge_and_upgrade_speak_http2(serve: Serve) -> None:
    server = serve("command", *BASE)
    base = http_base(server)
    assert curl("--http2-prior-knowledge", f"{base}/healthz") == (200, "2", b"ok\n")
    status, version, body = curl("--http2", f"{base}/stats")
    assert (status, version) == (200, "2")
    assert "clients" in json.loads(body)
    status, version, body = curl(
        "--http2-prior-knowledge",
        "-X",
        "PUT",
        "-H",
        "content-type: application/json",
        "--data",
        '{"timeout": 77}',
        f"{base}/config",
    )
    assert (status, version) == (200, "2")
    assert json.loads(body)["timeout"] == "77"


async def test_httpx_http2_runs_concurrent_requests_on_one_connection(serve: Serve) -> None:
    server = serve("command", *BASE)
    # httpx never upgrades an http:// connection: HTTP/2 over cleartext is prior knowledge.
    transport = httpx.AsyncHTTPTransport(http1=False, http2=True)
    async with httpx.AsyncClient(
        base_url=http_base(server), transport=transport, timeout=_TIMEOUT_S
    ) as http:
        replies = await asyncio.gather(*(http.get(p) for p in ["/stats", "/metrics"] * 10))
        assert {r.http_version for r in replies} == {"HTTP/2"}
        assert all(r.status_code == 200 for r in replies)
        put = await http.put("/config", json={"maxclients": 900})
        assert put.status_code == 200
        assert put.json()["maxclients"] == "900"


# -- WebSocket -----------------------------------------------------------------------------


async def test_websocket_ping_set_get_round_trips(serve: Serve) -> None:
    server = serve("command", *BASE, "--store-dir", "kv")
    async with connect(ws_url(server), open_timeout=_TIMEOUT_S) as ws:
        await ws.send("PING")
        assert await asyncio.wait_for(ws.recv(), _TIMEOUT_S) == "+PONG\r\n"
        await ws.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n")
        assert await asyncio.wait_for(ws.recv(), _TIMEOUT_S) == b"+OK\r\n"
        await ws.send("GET k")
        assert await asyncio.wait_for(ws.recv(), _TIMEOUT_S) == "$5\r\nhello\r\n"
    # The first command decides the dialect, as on the command port: a bare LF is seed
    # 001's text dialect.
    async with connect(ws_url(server), open_timeout=_TIMEOUT_S) as ws:
        await ws.send("GET k\n")
        assert await asyncio.wait_for(ws.recv(), _TIMEOUT_S) == "hello\n"


async def test_websocket_pipelined_burst_is_answered_in_order(serve: Serve) -> None:
    """Durable SETs (answered after their fsync) between inline GETs and ECHOs: every
    reply is one message, in the order of the commands."""
    server = serve("command", *BASE, "--store-dir", "kv")
    count = 100
    async with connect(ws_url(server), open_timeout=_TIMEOUT_S) as ws:
        for i in range(count):
            await ws.send(f"SET k{i} v{i}")
            await ws.send(f"GET k{i}")
            await ws.send(f"ECHO e{i}")
        replies = [await asyncio.wait_for(ws.recv(), _TIMEOUT_S) for _ in range(3 * count)]
    expected = []
    for i in range(count):
        value, echo = f"v{i}", f"e{i}"
        expected += ["+OK\r\n", f"${len(value)}\r\n{value}\r\n", f"${len(echo)}\r\n{echo}\r\n"]
    assert replies == expected


async def test_websocket_oversize_message_is_closed_with_1009(serve: Serve) -> None:
    server = serve("command", *BASE, "--max-bulk-bytes", "16384")
    async with connect(ws_url(server), open_timeout=_TIMEOUT_S, max_size=None) as ws:
        await ws.send(b"x" * (16384 + 64 * 1024 + 1))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), _TIMEOUT_S)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009


async def test_websocket_garbage_is_closed_with_1002_and_others_go_on(serve: Serve) -> None:
    server = serve("command", *BASE)
    async with connect(ws_url(server), open_timeout=_TIMEOUT_S) as good:
        async with connect(ws_url(server), open_timeout=_TIMEOUT_S) as bad:
            # A frame with a reserved bit set and no extension agreed: not WebSocket.
            bad.transport.write(b"\xf1\x85" + b"\x00" * 4 + b"hello")
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(bad.recv(), _TIMEOUT_S)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1002
        await good.send("PING")
        assert await asyncio.wait_for(good.recv(), _TIMEOUT_S) == "+PONG\r\n"


async def test_websocket_two_commands_in_one_message_are_refused(serve: Serve) -> None:
    server = serve("command", *BASE)
    async with connect(ws_url(server), open_timeout=_TIMEOUT_S) as ws:
        await ws.send("PING\r\nPING\r\n")
        reply = await asyncio.wait_for(ws.recv(), _TIMEOUT_S)
        assert reply == "-ERR Protocol error: more than one command in message\r\n"
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), _TIMEOUT_S)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1002


async def test_websocket_needs_auth_like_the_command_port(serve: Serve) -> None:
    server = serve("command", *BASE, "--requirepass", "s3cret")
    async with connect(ws_url(server), open_timeout=_TIMEOUT_S) as ws:
        await ws.send("GET k")
        assert str(await asyncio.wait_for(ws.recv(), _TIMEOUT_S)).startswith("-NOAUTH")
        await ws.send("AUTH s3cret")
        assert await asyncio.wait_for(ws.recv(), _TIMEOUT_S) == "+OK\r\n"
        await ws.send("PING")
        assert await asyncio.wait_for(ws.recv(), _TIMEOUT_S) == "+PONG\r\n"


async def test_websocket_client_is_listed_and_idle_timeout_closes_it(serve: Serve) -> None:
    server = serve("command", *BASE, "--idle-timeout", "1")
    async with connect(ws_url(server), open_timeout=_TIMEOUT_S) as ws:
        await ws.send("CLIENT SETNAME browser")
        assert await asyncio.wait_for(ws.recv(), _TIMEOUT_S) == "+OK\r\n"
        async with httpx.AsyncClient(base_url=http_base(server), timeout=_TIMEOUT_S) as http:
            names = [c["name"] for c in (await http.get("/clients")).json()]
        assert "browser" in names
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), _TIMEOUT_S)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1000


async def test_plain_get_of_ws_path_gets_426(serve: Serve) -> None:
    server = serve("command", *BASE)
    async with httpx.AsyncClient(base_url=http_base(server), timeout=_TIMEOUT_S) as http:
        reply = await http.get("/ws")
    assert reply.status_code == 426
    assert reply.headers["upgrade"] == "websocket"


async def test_websocket_quit_is_answered_then_closed_with_1000(serve: Serve) -> None:
    server = serve("command", *BASE)
    async with connect(ws_url(server), open_timeout=_TIMEOUT_S) as ws:
        await ws.send("QUIT")
        assert await asyncio.wait_for(ws.recv(), _TIMEOUT_S) == "+OK\r\n"
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), _TIMEOUT_S)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1000


async def test_websocket_over_maxclients_is_refused_with_1013(serve: Serve) -> None:
    server = serve("command", *BASE, "--max-connections", "1")
    async with connect(ws_url(server), open_timeout=_TIMEOUT_S) as first:
        await first.send("PING")
        assert await asyncio.wait_for(first.recv(), _TIMEOUT_S) == "+PONG\r\n"
        async with connect(ws_url(server), open_timeout=_TIMEOUT_S) as second:
            refusal = await asyncio.wait_for(second.recv(), _TIMEOUT_S)
            assert refusal == b"-ERR max number of clients reached\r\n"
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(second.recv(), _TIMEOUT_S)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1013


async def test_websocket_binary_value_to_a_text_command_comes_back_binary(serve: Serve) -> None:
    server = serve("command", *BASE, "--store-dir", "kv")
    async with connect(ws_url(server), open_timeout=_TIMEOUT_S) as ws:
        await ws.send(b"*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$2\r\n\xff\x00\r\n")
        assert await asyncio.wait_for(ws.recv(), _TIMEOUT_S) == b"+OK\r\n"
        await ws.send("GET b")
        assert await asyncio.wait_for(ws.recv(), _TIMEOUT_S) == b"$2\r\n\xff\x00\r\n"


def _goaway_code(sock: socket.socket) -> int:
    """Read frames until the GOAWAY; its error code (RFC 9113 section 6.8)."""
    data = b""
    sock.settimeout(_TIMEOUT_S)
    while True:
        while len(data) >= 9:
            length = int.from_bytes(data[:3], "big")
            if len(data) < 9 + length:
                break
            kind, payload = data[3], data[9 : 9 + length]
            data = data[9 + length :]
            if kind == 0x7:
                return int.from_bytes(payload[4:8], "big")
        block = sock.recv(65536)
        assert block, "closed without a GOAWAY"
        data += block


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        # A DATA frame on stream 0: PROTOCOL_ERROR.
        (b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x", 0x1),
        # A PING frame of 9 bytes (must be 8): FRAME_SIZE_ERROR.
        (b"\x00\x00\x09\x06\x00\x00\x00\x00\x00" + b"\x00" * 9, 0x6),
    ],
)
async def test_a_bad_http2_frame_gets_goaway_and_other_clients_are_served(
    serve: Serve, frames: bytes, code: int
) -> None:
    server = serve("command", *BASE)
    host, port = server.listeners["metrics"]
    transport = httpx.AsyncHTTPTransport(http1=False, http2=True)
    async with httpx.AsyncClient(
        base_url=http_base(server), transport=transport, timeout=_TIMEOUT_S
    ) as http:
        assert (await http.get("/healthz")).status_code == 200  # a connection open before
        with socket.create_connection((host, port), timeout=_TIMEOUT_S) as bad:
            settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
            bad.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings + frames)
            assert await asyncio.to_thread(_goaway_code, bad) == code
        assert (await http.get("/stats")).status_code == 200  # the same connection goes on


def test_under_workers_the_admin_api_asks_every_worker(serve: Serve) -> None:
    server = serve("command", *BASE, "--workers", "2", "--requirepass", "pw")
    host, port = server.listeners["command"]
    named = []
    for i in range(6):  # SO_REUSEPORT spreads them over both workers
        r = redis.Redis(host=host, port=port, socket_timeout=10, password="pw")
        r.client_setname(f"c{i}")
        named.append(r)
    auth = {"authorization": "Bearer pw"}
    with httpx.Client(base_url=http_base(server), timeout=_TIMEOUT_S, headers=auth) as http:
        names = {c["name"] for c in http.get("/clients").json()}
        assert {f"c{i}" for i in range(6)} <= names
        info = http.get("/stats").json()
        assert info["clients"]["connected_clients"] >= 6
        assert http.get("/stats", headers={"authorization": "Bearer no"}).status_code == 403
        changed = http.put("/config", json={"timeout": 99})
        assert changed.status_code == 200, changed.text
        assert changed.json()["workers"] == "2"
        assert http.put("/config", json={"workers": 3}).status_code == 403
        assert http.get("/ws").status_code == 404  # no clients of its own to bridge to
    for r in named:  # each worker was told, whichever a client landed on
        assert r.config_get("timeout") == {"timeout": "99"}
