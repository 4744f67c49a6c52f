"""MULTI/EXEC, BLPOP/BRPOP and quoted inline lines against real servers, with redis-py
and raw sockets, in both keyspace modes: embedded (--store-dir) and remote (--store)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.integration.conftest import ServerProcess
from tests.integration.rawclient import RawClient

pytestmark = pytest.mark.integration

Serve = Callable[..., ServerProcess]
COMMAND = ("--port", "0", "--metrics-port", "0")


def connect(server: ServerProcess, protocol: int = 2) -> redis.Redis:
    host, port = server.listeners["command"]
    return redis.Redis(host=host, port=port, socket_timeout=10, protocol=protocol)


@pytest.fixture(params=["embedded", "remote"])
def command(request: pytest.FixtureRequest, serve: Serve, tmp_path: Path) -> ServerProcess:
    if request.param == "embedded":
        return serve("command", *COMMAND, "--store-dir", str(tmp_path / "keys"))
    store = serve(
        "store", "--port", "0", "--metrics-port", "0", "--data-dir", str(tmp_path / "data")
    )
    server = serve("command", *COMMAND, "--store", f"127.0.0.1:{store.port}")
    r = connect(server)
    deadline = time.monotonic() + 10
    while r.info("keyspace")["store_connected"] != 1:
        assert time.monotonic() < deadline, "the command server never reached the store"
        time.sleep(0.02)
    return server


def blocked_clients(r: redis.Redis) -> int:
    return sum(1 for c in r.client_list() if c["flags"] == "b")


def wait_blocked(r: redis.Redis, count: int) -> None:
    deadline = time.monotonic() + 10
    while blocked_clients(r) != count:
        assert time.monotonic() < deadline, f"never {count} blocked clients"
        time.sleep(0.01)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_py_transaction_pipeline(command: ServerProcess, protocol: int) -> None:
    r = connect(command, protocol)
    with r.pipeline(transaction=True) as pipe:
        pipe.set("k", "0")
        pipe.incrbyfloat("k", 1.5)
        pipe.get("k")
        pipe.rpush("l", "a", "b")
        pipe.lpop("l")
        pipe.get("missing")
        pipe.blpop(["empty"], timeout=0)
        assert pipe.execute() == [True, 1.5, b"1.5", 2, b"a", None, None]
    assert r.lrange("l", 0, -1) == [b"b"]


@pytest.mark.timeout(60)
def test_redis_py_sees_execabort_and_a_failed_command(command: ServerProcess) -> None:
    r = connect(command)
    r.set("s", "text")
    with r.pipeline(transaction=True) as pipe:
        pipe.set("t", "1")
        pipe.incr("s")
        pipe.get("t")
        with pytest.raises(redis.ResponseError, match="value is not an integer"):
            pipe.execute()
    assert r.get("t") == b"1"  # no rollback, as in Redis
    with RawClient.connect(command.port) as raw:
        raw.send(b"MULTI\r\nSET u 1\r\nNOSUCH\r\nEXEC\r\nGET u\r\n")
        assert raw.read_lines(5) == [
            b"+OK",
            b"+QUEUED",
            b"-ERR unknown command 'NOSUCH', with args beginning with: ",
            b"-EXECABORT Transaction discarded because of previous errors.",
            b"$-1",
        ]


@pytest.mark.timeout(120)
def test_no_reader_sees_a_transaction_half_done(command: ServerProcess) -> None:
    """One client moves 1 from a to b in transactions; another reads both at once, again
    and again: the sum never changes."""
    r = connect(command)
    r.mset({"a": 1000, "b": 0})
    stop = threading.Event()
    errors: list[str] = []

    def mover() -> None:
        w = connect(command)
        with w.pipeline(transaction=True) as pipe:
            for _ in range(300):
                pipe.decr("a")
                pipe.incr("b")
                pipe.execute()
        stop.set()

    thread = threading.Thread(target=mover)
    thread.start()
    reads = 0
    try:
        while not stop.is_set() and reads < 20_000:
            a, b = r.mget("a", "b")
            reads += 1
            if int(a or 0) + int(b or 0) != 1000:
                errors.append(f"a={a!r} b={b!r}")
    finally:
        thread.join(60)
    assert not errors
    assert r.mget("a", "b") == [b"700", b"300"]


@pytest.mark.timeout(60)
def test_blpop_is_served_in_the_order_clients_blocked(command: ServerProcess) -> None:
    r = connect(command)
    got: dict[int, object] = {}

    def waiter(i: int) -> None:
        got[i] = connect(command).blpop(["q"], timeout=20)

    threads = []
    for i in range(3):
        threads.append(threading.Thread(target=waiter, args=(i,)))
        threads[-1].start()
        wait_blocked(r, i + 1)  # so the order they block in is known
    assert r.rpush("q", "a", "b") == 2
    wait_blocked(r, 1)
    assert r.rpush("q", "c") == 1
    for thread in threads:
        thread.join(20)
    assert got == {0: (b"q", b"a"), 1: (b"q", b"b"), 2: (b"q", b"c")}
    assert r.exists("q") == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", [2, 3])
def test_blpop_times_out_with_nil(command: ServerProcess, protocol: int) -> None:
    r = connect(command, protocol)
    started = time.monotonic()
    assert r.brpop(["nothing"], timeout=0.3) is None
    assert 0.25 <= time.monotonic() - started < 5
    assert blocked_clients(r) == 0


@pytest.mark.timeout(60)
def test_a_client_closed_while_blocked_takes_no_item(command: ServerProcess) -> None:
    r = connect(command)
    with RawClient.connect(command.port) as raw:
        raw.send(b"*3\r\n$5\r\nBLPOP\r\n$1\r\nk\r\n$1\r\n0\r\n")
        wait_blocked(r, 1)
    wait_blocked(r, 0)
    assert r.rpush("k", "v") == 1
    assert r.lrange("k", 0, -1) == [b"v"]


@pytest.mark.timeout(60)
def test_pipelined_blocking_pops_then_pushes(command: ServerProcess) -> None:
    """Redis's regression test for blocking ops and pipelining, with real sockets."""
    r = connect(command)
    proto = b"*3\r\n$5\r\nBLPOP\r\n$6\r\nnolist\r\n$1\r\n0\r\n"
    with RawClient.connect(command.port) as raw:
        raw.send(proto + proto)
        wait_blocked(r, 1)
        assert r.rpush("nolist", "a") == 1
        assert raw.read_exactly(23) == b"*2\r\n$6\r\nnolist\r\n$1\r\na\r\n"
        wait_blocked(r, 1)
        assert r.rpush("nolist", "b") == 1
        assert raw.read_exactly(23) == b"*2\r\n$6\r\nnolist\r\n$1\r\nb\r\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("end", "reply"), [(b"\r\n", b"+OK\r\n$3\r\na b\r\n"), (b"\n", b"OK\na b\n")]
)
def test_quoted_inline_lines_and_unbalanced_quotes(
    command: ServerProcess, end: bytes, reply: bytes
) -> None:
    with RawClient.connect(command.port) as raw:
        raw.send(b"SET \"q k\" 'a b'" + end + b'GET "q\\x20k"' + end)
        assert raw.read_exactly(len(reply)) == reply
        raw.send(b'set """test-key""" test-value' + end + b"ping" + end)
        rest = raw.read_until_eof()
    assert b"Protocol error: unbalanced quotes in request" in rest
    assert b"PONG" not in rest


@pytest.mark.timeout(90)
def test_under_workers_a_push_through_another_worker_serves_the_blocked(
    serve: Serve, tmp_path: Path
) -> None:
    """The blocked client is a raw socket (redis-py would retry a read that timed out, on
    a connection that may reach the other worker)."""
    store = serve("store", "--port", "0", "--metrics-port", "0", "--data-dir", str(tmp_path / "s"))
    server = serve("command", *COMMAND, "--workers", "2", "--store", f"127.0.0.1:{store.port}")
    deadline = time.monotonic() + 30
    pusher = connect(server)
    while True:  # each worker reaches the store in its own time
        try:
            pusher.set("ready", "1")
            break
        except redis.ResponseError:
            assert time.monotonic() < deadline, "the worker never reached the store"
            time.sleep(0.05)
    pusher_worker = (int(pusher.client_id()) - 1) % 2  # worker i hands out ids i+1, i+1+N
    while True:
        raw = RawClient.connect(server.port)
        raw.send(b"CLIENT ID\r\n")
        if (int(raw.read_until(b"\r\n")[1:-2]) - 1) % 2 != pusher_worker:
            break
        raw.close()
        assert time.monotonic() < deadline, "connections reached only one worker"
    with raw:
        raw.send(b"BLPOP w 5\r\n")
        wait_blocked(pusher, 1)
        started = time.monotonic()
        assert pusher.rpush("w", "v") == 1
        assert raw.read_exactly(18) == b"*2\r\n$1\r\nw\r\n$1\r\nv\r\n"
        assert time.monotonic() - started < 3  # its own look, not the timeout


@pytest.mark.timeout(60)
def test_the_idle_timeout_closes_an_idle_client_but_not_a_blocked_one(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve("command", *COMMAND, "--store-dir", str(tmp_path / "k"), "--idle-timeout", "0.5")
    with RawClient.connect(server.port) as blocked, RawClient.connect(server.port) as idle:
        idle.send(b"PING\r\n")
        assert idle.read_exactly(7) == b"+PONG\r\n"
        blocked.send(b"BLPOP k 3\r\n")
        started = time.monotonic()
        assert idle.read_until_eof(timeout_s=5) == b""  # closed by the idle timeout
        assert blocked.read_exactly(5, timeout_s=10) == b"*-1\r\n"  # its own timeout
        assert time.monotonic() - started >= 2.5
        blocked.send(b"PING\r\n")
        assert blocked.read_exactly(7) == b"+PONG\r\n"
