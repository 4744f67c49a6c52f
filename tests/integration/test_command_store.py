"""The command server with `--store`: redis-py, redis-cli and redis-benchmark drive a real store."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from postoffice.store import Client as StoreClient
from tests.integration.conftest import ServerProcess, free_port_block, run_redis_benchmark_set_get
from tests.integration.rawclient import RawClient

pytestmark = pytest.mark.integration

Serve = Callable[..., ServerProcess]
COMMAND = ("--port", "0", "--metrics-port", "0")


def store_args(tmp_path: Path, port: int = 0, *extra: str) -> list[str]:
    data = tmp_path / "store-data"
    return ["--port", str(port), "--metrics-port", "0", "--data-dir", str(data), *extra]


def connect(server: ServerProcess, **kwargs: object) -> redis.Redis:
    host, port = server.listeners["command"]
    return redis.Redis(host=host, port=port, socket_timeout=10, **kwargs)  # type: ignore[arg-type]


def wait_linked(r: redis.Redis, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while r.info("keyspace")["store_connected"] != 1:
        assert time.monotonic() < deadline, "the command server never reached the store"
        time.sleep(0.02)


def pair(
    serve: Serve, tmp_path: Path, *command_args: str
) -> tuple[ServerProcess, ServerProcess, redis.Redis]:
    store = serve("store", *store_args(tmp_path))
    command = serve("command", *COMMAND, *command_args, "--store", f"127.0.0.1:{store.port}")
    r = connect(command)
    wait_linked(r)
    return store, command, r


def test_string_and_keyspace_commands_round_trip(serve: Serve, tmp_path: Path) -> None:
    _, _, r = pair(serve, tmp_path)
    every_byte = bytes(range(256))
    assert r.set("a", every_byte) is True
    assert r.get("a") == every_byte
    assert r.get("missing") is None
    assert r.set("a", b"") is True
    assert r.get("a") == b""
    assert r.mset({"b": "2", "c": "3"}) is True
    assert r.mget("a", "b", "nope", "c") == [b"", b"2", None, b"3"]
    assert r.exists("a", "b", "nope", "a") == 3
    assert r.dbsize() == 3
    assert r.delete("a", "nope", "b") == 2
    assert r.get("a") is None
    assert r.dbsize() == 1
    info = r.info("keyspace")
    assert info["store_connected"] == 1
    assert info["store_requests"] > 0


def test_scan_walks_every_key_once_with_match_and_count(serve: Serve, tmp_path: Path) -> None:
    _, _, r = pair(serve, tmp_path)
    keys = {f"user:{i:03d}".encode() for i in range(250)} | {b"other", b"\x00zero", b"\xffhigh"}
    for key in keys:
        r.set(key, b"v")
    assert set(r.scan_iter(count=7)) == keys
    assert sorted(r.scan_iter(count=7)) == sorted(keys)  # each key exactly once
    assert set(r.scan_iter(match="user:1*", count=13)) == {
        k for k in keys if k.startswith(b"user:1")
    }
    assert set(r.scan_iter(match="*her")) == {b"other"}
    assert set(r.scan_iter(match="user:00[0-2]")) == {b"user:000", b"user:001", b"user:002"}
    assert list(r.scan_iter(match="other")) == [b"other"]
    assert list(r.scan_iter(_type="hash")) == []
    cursor, page = r.scan(0, count=5)
    assert cursor != 0
    assert len(page) == 5
    with pytest.raises(redis.ResponseError, match="expired cursor"):
        r.scan(12345)
    with pytest.raises(redis.ResponseError, match="invalid cursor"):
        r.execute_command("SCAN", "-1")  # type: ignore[no-untyped-call]
    with pytest.raises(redis.ResponseError, match="COUNT must be"):
        r.scan(0, count=0)


def test_pipelined_writes_are_read_back_in_order(serve: Serve, tmp_path: Path) -> None:
    """A pipelined SET then GET of the same key sees the write, for thousands of keys."""
    _, _, r = pair(serve, tmp_path)
    pipe = r.pipeline(transaction=False)
    for i in range(3000):
        pipe.set(f"k{i % 50}", f"v{i}")
        pipe.get(f"k{i % 50}")
    replies = pipe.execute()
    assert replies[0::2] == [True] * 3000
    assert replies[1::2] == [f"v{i}".encode() for i in range(3000)]


def test_other_commands_keep_their_place_among_store_replies(serve: Serve, tmp_path: Path) -> None:
    _, _, r = pair(serve, tmp_path)
    pipe = r.pipeline(transaction=False)
    pipe.set("x", "1")
    pipe.echo("between")
    pipe.get("x")
    pipe.execute_command("CLIENT", "SETNAME", "piper")  # type: ignore[no-untyped-call]
    pipe.execute_command("SET", "x", "2", "BOGUS")  # type: ignore[no-untyped-call]
    pipe.get("x")
    pipe.ping()
    results = pipe.execute(raise_on_error=False)
    assert results[:4] == [True, b"between", b"1", b"OK"]
    assert isinstance(results[4], redis.ResponseError)
    assert "syntax error" in str(results[4])
    assert results[5:] == [b"1", True]


def wait_expiries_known(r: redis.Redis, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while r.info("keyspace")["store_expiries_known"] != 1:
        assert time.monotonic() < deadline, "the command server never read the store's expiries"
        time.sleep(0.02)


def test_a_get_of_a_key_whose_expiry_has_not_passed_is_one_store_request(
    serve: Serve, tmp_path: Path
) -> None:
    """The expiries are known in memory, so GET reads no expiry key beside the value."""
    store, _, r = pair(serve, tmp_path)
    wait_expiries_known(r)
    assert r.set("plain", "1") is True
    assert r.set("later", "2", px=600_000) is True
    with StoreClient("127.0.0.1", store.port, timeout_s=10) as counter:
        before = counter.stats()["requests_get"]
        pipe = r.pipeline(transaction=False)
        for _ in range(200):
            pipe.get("plain")
            pipe.get("later")
            pipe.get("missing")
        assert pipe.execute() == [b"1", b"2", None] * 200
        got = counter.stats()["requests_get"]
    assert isinstance(before, int)
    assert got == before + 600


def test_an_expiry_set_before_the_command_server_started_is_known_to_it(
    serve: Serve, tmp_path: Path
) -> None:
    store = serve("store", *store_args(tmp_path))
    address = f"127.0.0.1:{store.port}"
    first = connect(serve("command", *COMMAND, "--store", address))
    wait_linked(first)
    assert first.set("soon", "v", px=600_000) is True
    second = connect(serve("command", *COMMAND, "--store", address))
    wait_linked(second)
    wait_expiries_known(second)
    assert second.info("keyspace")["store_expiries"] == 1
    assert second.get("soon") == b"v"
    assert 0 < second.pttl("soon") <= 600_000


def test_without_a_store_the_commands_say_how_to_get_one(serve: Serve) -> None:
    r = connect(serve("command", *COMMAND))
    with pytest.raises(redis.ResponseError, match="no store is configured"):
        r.get("a")
    assert r.ping() is True
    assert r.info("keyspace") == {"store": "none"}


def test_values_over_the_store_limit_are_refused_and_the_link_survives(
    serve: Serve, tmp_path: Path
) -> None:
    _, _, r = pair(serve, tmp_path, "--max-bulk-bytes", str(32 * 1024 * 1024))
    with pytest.raises(redis.ResponseError, match="value"):
        r.set("big", b"x" * (16 * 1024 * 1024 + 1))
    with pytest.raises(redis.ResponseError, match="key"):
        r.set(b"k" * 1025, b"v")
    assert r.set("small", b"y") is True
    assert r.get("small") == b"y"


def test_store_down_gives_tryagain_then_reconnects_without_losing_writes(
    serve: Serve, tmp_path: Path
) -> None:
    port = free_port_block(1)
    command = serve("command", *COMMAND, "--store", f"127.0.0.1:{port}")
    r = connect(command)
    with pytest.raises(redis.ResponseError, match=r"^store at 127\.0\.0\.1:\d+ unavailable"):
        r.get("a")
    assert r.ping() is True  # everything else keeps working
    store = serve("store", *store_args(tmp_path, port, "--durability", "always"))
    wait_linked(r)
    for i in range(200):
        assert r.set(f"k{i}", f"v{i}") is True

    store.proc.send_signal(signal.SIGKILL)
    store.proc.wait()
    deadline = time.monotonic() + 10
    while r.info("keyspace")["store_connected"] == 1:  # the link notices the loss
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with pytest.raises(redis.ResponseError, match="unavailable"):
        r.get("k0")

    serve("store", *store_args(tmp_path, port, "--durability", "always"))
    wait_linked(r)
    assert r.mget([f"k{i}" for i in range(200)]) == [f"v{i}".encode() for i in range(200)]
    assert r.info("keyspace")["store_reconnects"] >= 1


def test_a_client_vanishing_with_store_replies_in_flight(serve: Serve, tmp_path: Path) -> None:
    _, command, r = pair(serve, tmp_path)
    _, port = command.listeners["command"]
    burst = b"".join(
        b"*3\r\n$3\r\nSET\r\n$4\r\nk%03d\r\n$1\r\nv\r\n" % (i % 1000) for i in range(3000)
    )
    for _ in range(5):
        with RawClient.connect(port) as client:
            client.send(burst)
            client.sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
    assert r.set("after", "ok") is True
    assert r.get("after") == b"ok"
    assert r.dbsize() >= 1


def test_slow_reader_with_many_gets_in_flight_is_paused_not_dropped(
    serve: Serve, tmp_path: Path
) -> None:
    _, command, r = pair(serve, tmp_path)
    value = b"v" * 10_000
    r.set("big", value)
    _, port = command.listeners["command"]
    n = 2000  # 20 MB of replies, far beyond socket buffers
    with RawClient.connect(port, timeout_s=20) as client:
        client.send(b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n" * n)
        time.sleep(0.5)  # the server must stop reading, not buffer without bound
        assert r.ping() is True  # others are served meanwhile
        expected = (b"$10000\r\n" + value + b"\r\n") * n
        got = client.read_exactly(len(expected))
    assert got == expected


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli not installed")
def test_redis_cli_sets_gets_and_scans(serve: Serve, tmp_path: Path) -> None:
    _, command, r = pair(serve, tmp_path)
    _, port = command.listeners["command"]

    def cli(*args: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-p", str(port), *args], capture_output=True, timeout=20, check=True
        )
        return done.stdout.decode()

    assert cli("SET", "greeting", "hello") == "OK\n"
    assert cli("GET", "greeting") == "hello\n"
    for i in range(30):
        r.set(f"scan:{i}", "x")
    keys = cli("--scan", "--pattern", "scan:*").split()
    assert sorted(keys) == sorted(f"scan:{i}" for i in range(30))
    assert cli("DBSIZE") == "31\n"


@pytest.mark.skipif(shutil.which("redis-benchmark") is None, reason="redis-benchmark missing")
def test_redis_benchmark_set_get_drives_the_store(serve: Serve, tmp_path: Path) -> None:
    _, command, r = pair(serve, tmp_path)
    _, port = command.listeners["command"]
    run_redis_benchmark_set_get(port, r)
