"""The command server as a real process, driven by real clients (redis-py, redis-cli, sockets)."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import trustme

from tests.integration.conftest import ServerProcess
from tests.integration.rawclient import RawClient, exchange

pytestmark = pytest.mark.integration

Serve = Callable[..., ServerProcess]
BASE = ("--port", "0", "--metrics-port", "0")


def call(r: redis.Redis, *args: object) -> object:
    """A raw command through redis-py (whose execute_command is untyped)."""
    return r.execute_command(*args)  # type: ignore[no-untyped-call]  # untyped in redis-py


def client(server: ServerProcess, **kwargs: object) -> redis.Redis:
    host, port = server.listeners["command"]
    return redis.Redis(host=host, port=port, socket_timeout=10, **kwargs)  # type: ignore[arg-type]


def test_text_protocol_ping_pong_and_errors(serve: Serve) -> None:
    server = serve("command", *BASE)
    expected = b"PONG\nERR unknown command 'HELLO?', with args beginning with: \nbye\nOK\n"
    assert (
        exchange(server.port, b"PING\nHELLO?\nECHO bye\nQUIT\n", expect=len(expected)) == expected
    )


def test_quit_closes_the_connection(serve: Serve) -> None:
    server = serve("command", *BASE)
    # Read until the server closes: the reply to QUIT, then EOF; the PING after it is ignored.
    assert exchange(server.port, b"PING\r\nQUIT\r\nPING\r\n") == b"+PONG\r\n+OK\r\n"


def test_redis_py_drives_every_command(serve: Serve) -> None:
    server = serve("command", *BASE)
    r = client(server, client_name="tester")
    assert r.ping() is True
    assert r.echo("héllo") == "héllo".encode()
    seconds, micros = r.time()
    assert abs(seconds - time.time()) < 60
    assert 0 <= micros < 1_000_000
    info = r.info()
    assert info["connected_clients"] >= 1
    assert r.info("stats")["total_commands_processed"] >= 3
    assert "used_memory_rss" in r.info("memory")
    assert r.client_getname() == "tester"
    assert r.client_setname("renamed")
    assert r.client_getname() == "renamed"
    my_id = r.client_id()
    assert any(c["id"] == str(my_id) and c["name"] == "renamed" for c in r.client_list())
    assert r.config_get("maxclients") == {"maxclients": "10000"}
    assert r.config_set("timeout", 120)
    assert r.config_get("timeout") == {"timeout": "120"}
    assert r.command_count() >= 14
    with pytest.raises(redis.ResponseError, match="unknown command 'NOPE'"):
        call(r, "NOPE")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'echo'"):
        call(r, "ECHO")
    victim = client(server)
    victim.client_setname("victim")
    victim_id = victim.client_id()
    assert r.client_kill_filter(_id=str(victim_id)) == 1
    assert all(c["id"] != str(victim_id) for c in r.client_list())
    loner = client(server)
    loner_id = loner.client_id()
    assert loner.client_kill_filter(_id=str(loner_id), skipme=False) == 1  # its answer first
    assert all(c["id"] != str(loner_id) for c in r.client_list())
    loner.close()
    with RawClient.connect(server.port, timeout_s=5) as raw:
        raw.send(b"CLIENT ID\r\n")
        host, own_port = raw.sock.getsockname()
        own_addr = f"{host}:{own_port}"
        assert raw.read_until(b"\r\n").startswith(b":")
        raw.send(b"CLIENT KILL " + own_addr.encode() + b"\r\nPING\r\n")
        assert raw.read_until_eof() == b"+OK\r\n"  # then closed: the PING is not run
    assert call(r, "HELP")
    r.close()


def test_redis_py_pipeline_of_thousands(serve: Serve) -> None:
    server = serve("command", *BASE)
    r = client(server)
    pipe = r.pipeline(transaction=False)
    for i in range(5000):
        pipe.echo(str(i))
    assert pipe.execute() == [str(i).encode() for i in range(5000)]


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli not installed")
def test_redis_cli_works_unchanged(serve: Serve) -> None:
    server = serve("command", *BASE)

    def cli(*args: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-p", str(server.port), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return done.stdout.strip()

    assert cli("ping") == "PONG"
    assert cli("echo", "a b") == "a b"
    assert cli("config", "get", "worker-threads") == "worker-threads\n4"
    assert "connected_clients:1" in cli("info", "clients")


def test_thousand_concurrent_clients(serve: Serve) -> None:
    server = serve("command", *BASE)
    count = 1000

    async def one(i: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"*2\r\n$4\r\nECHO\r\n$%d\r\n%d\r\n" % (len(str(i)), i))
        await writer.drain()
        line = await reader.readline()
        payload = await reader.readline()
        writer.close()
        await writer.wait_closed()
        return line + payload

    async def many() -> list[bytes]:
        # Open every connection first so all 1000 are connected at the same moment.
        conns = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(count)]
        r = client(server)
        assert r.info("clients")["connected_clients"] == count + 1
        for _, writer in conns:
            writer.write(b"PING\r\n")
        replies = [await reader.readline() for reader, _ in conns]
        for _, writer in conns:
            writer.close()
        assert replies == [b"+PONG\r\n"] * count
        return await asyncio.gather(*(one(i) for i in range(count)))

    results = asyncio.run(many())
    assert results == [b"$%d\r\n%d\r\n" % (len(str(i)), i) for i in range(count)]


def test_over_the_connection_limit_is_refused_with_a_message(serve: Serve) -> None:
    server = serve("command", *BASE, "--max-connections", "3")
    held = [RawClient.connect(server.port) for _ in range(3)]
    for raw in held:
        raw.send(b"PING\r\n")
        assert raw.read_exactly(7) == b"+PONG\r\n"
    assert exchange(server.port, b"PING\r\n") == b"-ERR max number of clients reached\r\n"
    held.pop().close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the freed slot is usable once the close is seen
        reply = exchange(server.port, b"PING\r\n", expect=7)
        if reply == b"+PONG\r\n":
            break
    assert reply == b"+PONG\r\n"
    for raw in held:
        raw.close()


def test_idle_clients_are_closed(serve: Serve) -> None:
    server = serve("command", *BASE, "--idle-timeout", "0.3")
    with RawClient.connect(server.port) as raw:
        raw.send(b"PING\r\n")
        assert raw.read_exactly(7) == b"+PONG\r\n"
        started = time.monotonic()
        assert raw.read_until_eof() == b""  # closed by the server
        assert time.monotonic() - started < 5
    assert client(server).info("stats")["timed_out_connections"] == 1


def test_auth_and_noauth(serve: Serve) -> None:
    server = serve("command", *BASE, "--requirepass", "hunter2")
    with pytest.raises(redis.AuthenticationError):
        client(server).ping()
    with pytest.raises(redis.AuthenticationError):
        client(server, password="wrong").ping()
    assert client(server, password="hunter2").ping() is True
    assert exchange(server.port, b"PING\r\n", expect=34) == b"-NOAUTH Authentication required.\r\n"


def test_rate_limit_gives_a_clear_error(serve: Serve) -> None:
    server = serve("command", *BASE, "--rate-limit", "5", "--rate-limit-burst", "5")
    pong, refusal = b"+PONG\r\n", b"-RATELIMIT rate limit of 5 commands/s exceeded\r\n"
    with RawClient.connect(server.port) as raw:
        raw.send(b"PING\r\n" * 20)
        lines = [line + b"\r\n" for line in raw.read_lines(20)]
    assert lines[:5] == [pong] * 5
    assert lines.count(refusal) >= 13  # at 5/s, at most a token or two refill meanwhile
    assert client(server).ping() is True  # another client has its own budget


def test_tls(serve: Serve, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_pem, key_pem, ca_pem = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_pem))
    cert.private_key_pem.write_to_path(str(key_pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    server = serve("command", *BASE, "--tls-cert", str(cert_pem), "--tls-key", str(key_pem))
    r = client(server, ssl=True, ssl_ca_certs=str(ca_pem))
    assert r.ping() is True
    assert r.echo("secret") == b"secret"
    # A plain-text client gets nothing useful from a TLS port, and the server keeps going.
    exchange(server.port, b"PING\r\n", timeout_s=5)
    context = ssl.create_default_context(cafile=str(ca_pem))
    with (
        socket.create_connection(server.listeners["command"]) as sock,
        context.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(b"PING\n")
        assert tls.recv(100) == b"PONG\n"


def test_garbage_and_oversize_do_not_hurt_other_clients(serve: Serve) -> None:
    server = serve("command", *BASE, "--max-bulk-bytes", "1000")
    r = client(server)
    assert r.ping() is True
    assert (
        exchange(server.port, b"*1\r\n$zz\r\n")
        == b"-ERR Protocol error: invalid bulk length b'zz'\r\n"
    )
    assert exchange(server.port, b"*2\r\n$4\r\nECHO\r\n$5000\r\n") == (
        b"-ERR Protocol error: invalid bulk length (5000 exceeds limit 1000)\r\n"
    )
    assert exchange(server.port, b"x" * 70000) == (
        b"-ERR Protocol error: inline request of 70000 bytes exceeds limit 65536\r\n"
    )
    assert exchange(server.port, b"*99999999999\r\n").startswith(
        b"-ERR Protocol error: invalid multibulk length"
    )
    unquoted = bytes(b for b in range(256) if b not in b"\"'")
    with RawClient.connect(server.port) as raw:
        # Binary noise without quotes: its lines are unknown commands, each refused; the
        # connection lives.
        raw.send(unquoted * 64 + b"\nPING\n")
        got = raw.read_until_done(lambda got: got.endswith(b"PONG\n"))
        assert b"ERR unknown command" in got
    with RawClient.connect(server.port) as raw:
        # With quotes, a line's quote does not close: a protocol error, as from Redis.
        raw.send(bytes(range(256)) * 64 + b"\nPING\n")
        got = raw.read_until_eof()
        assert b"ERR Protocol error: unbalanced quotes in request\n" in got
        assert not got.endswith(b"PONG\n")
    assert r.ping() is True
    assert r.echo("still here") == b"still here"
    assert r.info("stats")["protocol_errors"] == 5


def test_slow_reader_is_paused_and_others_are_served(serve: Serve) -> None:
    server = serve("command", *BASE)
    slow = socket.create_connection(("127.0.0.1", server.port))
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    request = b"*2\r\n$4\r\nECHO\r\n$1000\r\n" + b"x" * 1000 + b"\r\n"
    slow.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and sent < 50_000_000:
        try:
            sent += slow.send(request * 64)
        except BlockingIOError:
            break  # the server stopped reading us: backpressure works
    assert sent < 50_000_000, "server kept reading from a client that never reads"
    r = client(server)
    for _ in range(100):
        assert r.ping() is True
    slow.close()
    assert r.ping() is True


def test_sigterm_delivers_replies_in_flight(serve: Serve) -> None:
    server = serve("command", *BASE, "--threads", "2")
    replies: list[object] = []

    def slow_call() -> None:
        replies.append(call(client(server), "DEBUG", "SLEEP", "1"))

    worker = threading.Thread(target=slow_call)
    worker.start()
    r = client(server)
    deadline = time.monotonic() + 5
    while r.info("threads")["worker_busy"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.proc.send_signal(signal.SIGTERM)
    worker.join(10)
    assert replies == [b"OK"]
    assert server.proc.wait(10) == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(server.listeners["command"], timeout=1)


def test_shutdown_command_stops_the_server(serve: Serve) -> None:
    server = serve("command", *BASE)
    call(client(server), "SHUTDOWN")
    assert server.proc.wait(10) == 0


def test_metrics_and_health_over_http(serve: Serve) -> None:
    server = serve("command", *BASE)
    client(server).ping()
    host, port = server.listeners["metrics"]
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
        body = resp.read().decode()
    assert "postoffice_command_commands_total" in body
    assert "postoffice_command_connections_accepted_total 1.0" in body
    with urllib.request.urlopen(f"http://{host}:{port}/readyz", timeout=5) as resp:
        assert resp.status == 200


def test_config_file_and_environment(serve: Serve, tmp_path: Path) -> None:
    config = tmp_path / "command.toml"
    config.write_text("[command]\nthreads = 3\nmax_connections = 77\n")
    server = serve("command", *BASE, "--config", str(config))
    got = call(client(server), "CONFIG", "GET", "worker-threads", "maxclients")
    assert got == {b"worker-threads": b"3", b"maxclients": b"77"}


def test_bad_setting_is_a_clear_error(tmp_path: Path) -> None:
    from tests.integration.conftest import POSTOFFICE

    done = subprocess.run(
        [*POSTOFFICE, "command", "serve", "--threads", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "setting 'threads' must be between 1 and 256, got 0" in done.stderr


def _serve_on_busy_port(tmp_path: Path) -> tuple[socket.socket, subprocess.Popen[bytes], Path]:
    """A listening socket holding a port, and a command server told to use that port,
    returned once the server has logged its first failed bind."""
    from tests.integration.conftest import POSTOFFICE, env_without_postoffice

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    log = tmp_path / "busy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*POSTOFFICE, "command", "serve", "--port", str(port), "--no-metrics"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env_without_postoffice(),
        )
    deadline = time.monotonic() + 20
    while "bind failed" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "bind failed listener=command" in log.read_text()
    assert proc.poll() is None  # still alive, retrying
    return blocker, proc, log


def test_busy_port_is_retried_until_it_frees(tmp_path: Path) -> None:
    blocker, proc, log = _serve_on_busy_port(tmp_path)
    port = blocker.getsockname()[1]
    try:
        blocker.close()  # the port frees up: the retry succeeds
        deadline = time.monotonic() + 20
        while "listening listener=command" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert exchange(port, b"PING\r\n", expect=7) == b"+PONG\r\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_sigterm_while_waiting_for_a_busy_port_exits_cleanly(tmp_path: Path) -> None:
    blocker, proc, _ = _serve_on_busy_port(tmp_path)
    with blocker:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
