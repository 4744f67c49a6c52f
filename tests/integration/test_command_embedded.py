"""The command server with `--store-dir`: the store engine in its own process, driven by
redis-py, redis-cli and redis-benchmark, and answering as `--store HOST:PORT` does."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import hiredis
import pytest
import redis

from postoffice.core.resp import encode_command
from postoffice.store import Client, Store
from tests.integration.conftest import (
    POSTOFFICE,
    ServerProcess,
    env_without_postoffice,
    run_redis_benchmark_set_get,
)
from tests.integration.rawclient import RawClient

pytestmark = pytest.mark.integration

Serve = Callable[..., ServerProcess]
COMMAND = ("--port", "0", "--metrics-port", "0")
BIG = str(32 * 1024 * 1024)  # --max-bulk-bytes past the store's value limit


def connect(server: ServerProcess, **kwargs: object) -> redis.Redis:
    host, port = server.listeners["command"]
    return redis.Redis(host=host, port=port, socket_timeout=20, **kwargs)  # type: ignore[arg-type]


def embedded(serve: Serve, store_dir: Path, *extra: str) -> tuple[ServerProcess, redis.Redis]:
    command = serve("command", *COMMAND, "--store-dir", str(store_dir), *extra)
    return command, connect(command)


def remote(serve: Serve, tmp_path: Path, *extra: str) -> tuple[ServerProcess, redis.Redis]:
    data = tmp_path / "store-data"
    store = serve("store", "--port", "0", "--metrics-port", "0", "--data-dir", str(data))
    command = serve("command", *COMMAND, *extra, "--store", f"127.0.0.1:{store.port}")
    r = connect(command)
    deadline = time.monotonic() + 10
    while r.info("keyspace")["store_connected"] != 1:
        assert time.monotonic() < deadline, "the command server never reached the store"
        time.sleep(0.02)
    return command, r


def start(
    mode: str, serve: Serve, tmp_path: Path, *extra: str
) -> tuple[ServerProcess, redis.Redis]:
    if mode == "embedded":
        return embedded(serve, tmp_path / "store", *extra)
    return remote(serve, tmp_path, *extra)


MODES = pytest.mark.parametrize("mode", ["embedded", "remote"])


# -- the same answers in both modes -------------------------------------------------------

#: Every keyspace command, its edge cases and its errors; each reply is compared raw.
TRANSCRIPT: list[list[bytes]] = [
    [b"GET", b"a"],
    [b"SET", b"a", bytes(range(256))],
    [b"GET", b"a"],
    [b"SET", b"a", b""],
    [b"GET", b"a"],
    [b"MSET", b"b", b"2", b"c", b"3"],
    [b"MGET", b"a", b"b", b"nope", b"c"],
    [b"EXISTS", b"a", b"b", b"nope", b"a"],
    [b"DBSIZE"],
    [b"DEL", b"a", b"nope", b"b"],
    [b"DEL", b"nope"],
    [b"GET", b"a"],
    [b"DBSIZE"],
    [b"SET", b"x", b"1", b"EX", b"10"],
    [b"MSET", b"k"],
    [b"MSET", b"k", b"v", b"lonely"],
    [b"SET", b"", b"v"],
    [b"GET", b""],
    [b"SET", b"k" * 1021, b"v"],
    [b"GET", b"k" * 1021],
    [b"SET", b"k" * 1020, b"longest key"],
    [b"GET", b"k" * 1020],
    [b"SET", b"big", b"x" * (16 * 1024 * 1024 + 1)],
    [b"SET", b"max", b"x" * (16 * 1024 * 1024 - 1024)],  # fits one store frame too
    [b"EXISTS", b"max", b"big"],
    [b"MSET", b"ok", b"1", b"", b"2"],
    [b"MSET", b"ok", b"1", b"k" * 1021, b"2"],
    [b"MSET", b"ok", b"1", b"too", b"x" * (16 * 1024 * 1024 + 1)],
    [b"GET", b"ok"],
    [b"MGET", b"c", b""],
    [b"EXISTS", b"k" * 1021],
    [b"DEL", b""],
    [b"DEL", b"max"],
    *([b"SET", b"user:%03d" % i, b"v%d" % i] for i in range(25)),
    [b"SCAN", b"0"],
    [b"SCAN", b"1"],
    [b"SCAN", b"0", b"COUNT", b"7", b"MATCH", b"user:1*"],
    [b"SCAN", b"0", b"MATCH", b"user:00[0-2]", b"COUNT", b"100"],
    [b"SCAN", b"0", b"MATCH", b"c"],
    [b"SCAN", b"0", b"TYPE", b"hash"],
    [b"SCAN", b"0", b"COUNT", b"0"],
    [b"SCAN", b"0", b"COUNT", b"10001"],
    [b"SCAN", b"-1"],
    [b"SCAN", b"999999"],
    [b"SCAN", b"0", b"BOGUS", b"1"],
    [b"SCAN", b"0", b"MATCH", b"p" * 1100 + b"*"],
    [b"KEYS", b"*"],
    [b"DBSIZE"],
]


def _one_reply(got: bytes) -> bool:
    """Whether `got` holds one whole RESP reply."""
    reader = hiredis.Reader()
    reader.feed(got)
    return reader.gets() is not False


def transcript(port: int) -> list[bytes]:
    """Each TRANSCRIPT command's raw reply, sent one at a time."""
    replies = []
    with RawClient.connect(port, timeout_s=20) as client:
        for args in TRANSCRIPT:
            client.send(encode_command(args))
            replies.append(client.read_until_done(_one_reply))
    return replies


def test_both_modes_answer_every_keyspace_command_byte_for_byte(
    serve: Serve, tmp_path: Path
) -> None:
    """The same commands against `--store-dir` and `--store` give the same raw replies."""
    ours, _ = embedded(serve, tmp_path / "store", "--max-bulk-bytes", BIG)
    theirs, _ = remote(serve, tmp_path, "--max-bulk-bytes", BIG)
    got = transcript(ours.listeners["command"][1])
    expected = transcript(theirs.listeners["command"][1])
    for args, mine, peer in zip(TRANSCRIPT, got, expected, strict=True):
        assert mine == peer, f"{[a[:20] for a in args]}: {mine[:200]!r} != {peer[:200]!r}"
    # And the answers are the right ones, not just equal.

    def reply(*args: bytes) -> bytes:
        return got[TRANSCRIPT.index(list(args))]

    assert reply(b"MGET", b"a", b"b", b"nope", b"c") == (
        b"*4\r\n$0\r\n\r\n$1\r\n2\r\n$-1\r\n$1\r\n3\r\n"
    )
    assert reply(b"EXISTS", b"a", b"b", b"nope", b"a") == b":3\r\n"
    assert reply(b"DEL", b"a", b"nope", b"b") == b":2\r\n"
    assert reply(b"SET", b"", b"v") == b"-ERR put key is empty\r\n"
    # 1020: the store's 1024 less a database's two-byte prefix and its expiry key's two.
    assert reply(b"SET", b"k" * 1021, b"v") == b"-ERR put key of 1021 bytes exceeds limit 1020\r\n"
    assert reply(b"GET", b"k" * 1021) == b"-ERR get key of 1021 bytes exceeds limit 1020\r\n"
    assert reply(b"SET", b"k" * 1020, b"longest key") == b"+OK\r\n"
    assert reply(b"GET", b"k" * 1020) == b"$11\r\nlongest key\r\n"
    assert reply(b"SET", b"big", b"x" * (16 * 1024 * 1024 + 1)) == (
        b"-ERR put value of 16777217 bytes exceeds limit 16777216\r\n"
    )
    assert reply(b"EXISTS", b"max", b"big") == b":1\r\n"
    assert reply(b"GET", b"ok") == b"$-1\r\n"  # no refused MSET wrote anything
    assert reply(b"SCAN", b"999999").startswith(b"-ERR invalid or expired cursor")
    assert reply(b"SET", b"x", b"1", b"EX", b"10") == b"+OK\r\n"
    assert got[-1] == b":28\r\n"  # c, x, the longest key, 25 users


@MODES
def test_scan_walks_every_key_once(mode: str, serve: Serve, tmp_path: Path) -> None:
    _, r = start(mode, serve, tmp_path)
    keys = {f"user:{i:03d}".encode() for i in range(250)} | {b"other", b"\x00zero", b"\xffhigh"}
    for key in keys:
        r.set(key, b"v")
    assert sorted(r.scan_iter(count=7)) == sorted(keys)  # each key exactly once
    assert set(r.scan_iter(match="user:1*", count=13)) == {
        k for k in keys if k.startswith(b"user:1")
    }
    assert list(r.scan_iter(match="other")) == [b"other"]
    assert r.dbsize() == len(keys)


@MODES
def test_pipelined_writes_are_read_back_in_order(mode: str, serve: Serve, tmp_path: Path) -> None:
    _, r = start(mode, serve, tmp_path)
    pipe = r.pipeline(transaction=False)
    for i in range(3000):
        pipe.set(f"k{i % 50}", f"v{i}")
        pipe.get(f"k{i % 50}")
        if i % 500 == 0:
            pipe.delete(f"k{i % 50}")
            pipe.exists(f"k{i % 50}")
            pipe.echo("between")
    replies = pipe.execute()
    expected: list[object] = []
    for i in range(3000):
        expected += [True, f"v{i}".encode()]
        if i % 500 == 0:
            expected += [1, 0, b"between"]
    assert replies == expected


@pytest.mark.parametrize("durability", ["always", "interval"])
def test_info_says_where_the_keys_are(serve: Serve, tmp_path: Path, durability: str) -> None:
    _, r = embedded(serve, tmp_path / "store", "--durability", durability)
    r.mset({"a": "1", "b": "2"})
    info = r.info("keyspace")
    assert info["store"] == "embedded"
    assert info["store_dir"] == str(tmp_path / "store")
    assert info["store_durability"] == durability
    assert info["store_keys"] == 2


# -- durability and crashes ---------------------------------------------------------------


def test_kill_9_right_after_acknowledged_sets_loses_none_of_them(
    serve: Serve, tmp_path: Path
) -> None:
    """Five rounds: a burst of SETs (pipelined and not), every OK read, then SIGKILL."""
    store_dir = tmp_path / "store"
    acknowledged: dict[bytes, bytes] = {}
    for round_ in range(5):
        command, r = embedded(serve, store_dir)
        others = [connect(command) for _ in range(3)]
        pipe = r.pipeline(transaction=False)
        for i in range(2000):
            pipe.set(b"r%d-p%d" % (round_, i), b"v%d" % (round_ * 7919 + i))
        assert pipe.execute() == [True] * 2000
        acknowledged.update(
            (b"r%d-p%d" % (round_, i), b"v%d" % (round_ * 7919 + i)) for i in range(2000)
        )
        for n, other in enumerate(others):
            for i in range(50):
                key = b"r%d-c%d-%d" % (round_, n, i)
                assert other.set(key, b"x%d" % i) is True
                acknowledged[key] = b"x%d" % i
        assert r.mset({b"r%d-m" % round_: b"batch"}) is True
        acknowledged[b"r%d-m" % round_] = b"batch"
        command.proc.send_signal(signal.SIGKILL)
        command.proc.wait()
    _, r = embedded(serve, store_dir)
    keys = list(acknowledged)
    for at in range(0, len(keys), 1000):
        chunk = keys[at : at + 1000]
        assert r.mget(chunk) == [acknowledged[k] for k in chunk]
    assert r.dbsize() == len(acknowledged)


@pytest.mark.parametrize("durability", ["always", "interval", "never"])
def test_kill_9_mid_load_keeps_every_acknowledged_set(
    serve: Serve, tmp_path: Path, durability: str
) -> None:
    """Four clients pipeline SETs as fast as they can; SIGKILL lands while they do. Every
    SET whose OK a client read is there after the restart: under `always` its fsync came
    first, and in every mode its write(2) did (a killed process loses no page cache)."""
    store_dir = tmp_path / "store"
    command, _ = embedded(serve, store_dir, "--durability", durability)
    _, port = command.listeners["command"]
    acknowledged: dict[bytes, bytes] = {}
    lock = threading.Lock()
    ended: list[str] = []

    def load(n: int) -> None:
        with RawClient.connect(port, timeout_s=20) as client:
            try:
                for at in range(0, 10_000_000, 64):  # bounded: the kill comes long before
                    keys = [b"c%d-%07d" % (n, i) for i in range(at, at + 64)]
                    client.send(b"".join(encode_command([b"SET", k, b"v" + k]) for k in keys))
                    for key in keys:
                        assert client.read_exactly(5) == b"+OK\r\n"
                        with lock:
                            acknowledged[key] = b"v" + key
            except (EOFError, OSError) as exc:  # the server is gone
                ended.append(type(exc).__name__)

    clients = [threading.Thread(target=load, args=(n,), daemon=True) for n in range(4)]
    for client in clients:
        client.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 20_000:
        assert time.monotonic() < deadline, f"only {len(acknowledged)} SETs answered in 30 s"
        time.sleep(0.01)
    command.proc.send_signal(signal.SIGKILL)
    command.proc.wait(10)
    for client in clients:
        client.join(20)
        assert not client.is_alive()
    assert len(ended) == 4  # each client was cut off mid-load, none finished
    with lock:
        expected = dict(acknowledged)
    _, r = embedded(serve, store_dir, "--durability", durability)
    keys = list(expected)
    for at in range(0, len(keys), 1000):
        chunk = keys[at : at + 1000]
        assert r.mget(chunk) == [expected[k] for k in chunk]


def test_sigterm_drains_owed_replies_and_closes_the_store(serve: Serve, tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    command, _ = embedded(serve, store_dir)
    _, port = command.listeners["command"]
    n = 3000
    burst = b"".join(encode_command([b"SET", b"k%05d" % i, b"v%d" % i]) for i in range(n))
    with RawClient.connect(port, timeout_s=20) as client:
        client.send(burst)
        got = client.read_exactly(5)  # the server is answering: the burst is in
        command.proc.send_signal(signal.SIGTERM)
        got += client.read_until_eof()
    # Commands still unread when the drain began are not run; every one that ran is
    # answered, and only then does the connection close.
    answered, rest = divmod(len(got), len(b"+OK\r\n"))
    assert rest == 0
    assert got == b"+OK\r\n" * answered
    assert 0 < answered <= n
    assert command.proc.wait(20) == 0
    assert "store closed" in command.log()
    with Store.open(store_dir) as store:  # the lock is free, and the close was clean
        assert not store.recovery.index_rebuilt
        assert store.recovery.replayed_records == 0
        assert len(store) == answered
        assert store.get(b"k%05d" % (answered - 1)) == b"v%d" % (answered - 1)


# -- one directory, one process -----------------------------------------------------------


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*POSTOFFICE, *args],
        capture_output=True,
        timeout=30,
        cwd=tmp_path,
        env=env_without_postoffice(),
        check=False,
    )


def test_a_store_server_and_an_embedded_store_never_share_a_directory(
    serve: Serve, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    store = serve("store", "--port", "0", "--metrics-port", "0", "--data-dir", str(data))
    ready = tmp_path / "command.ready.json"
    done = run_cli(
        tmp_path,
        *("command", "serve", *COMMAND, "--store-dir", str(data / "store")),
        *("--ready-file", str(ready)),
    )
    assert done.returncode == 1
    locked = f"cannot open the store: store {data / 'store'} is already open in another process"
    assert f"Error: {locked}" in done.stderr.decode()
    assert "Traceback" not in done.stderr.decode()
    # whoever waits on the ready file (the director, the dashboard) learns why
    assert json.loads(ready.read_text())["error"] == locked
    store.stop()

    command, r = embedded(serve, data / "store")
    r.set("mine", "1")
    ready = tmp_path / "store.ready.json"
    done = run_cli(
        tmp_path,
        *("store", "serve", "--port", "0", "--metrics-port", "0", "--data-dir", str(data)),
        *("--ready-file", str(ready)),
    )
    assert done.returncode == 1
    assert f"Error: {locked}" in done.stderr.decode()
    assert "Traceback" not in done.stderr.decode()
    assert json.loads(ready.read_text())["error"] == locked
    assert r.get("mine") == b"1"  # the holder is unharmed
    assert command.stop() == 0
    # Once the command server is gone, a store server serves the same keys.
    store = serve("store", "--port", "0", "--metrics-port", "0", "--data-dir", str(data))
    with Client("127.0.0.1", store.port) as client:
        assert client.get(b"mine") == b"1"


def test_store_and_store_dir_are_mutually_exclusive(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "command", "serve", "--store", "127.0.0.1:7400", "--store-dir", "d")
    assert done.returncode == 2
    assert "--store and --store-dir are mutually exclusive" in done.stderr.decode()
    done = run_cli(
        tmp_path, "command", "serve", "--store", "127.0.0.1:7400", "--durability", "always"
    )
    assert done.returncode == 2
    assert "--durability applies only with --store-dir" in done.stderr.decode()
    helped = run_cli(tmp_path, "command", "serve", "--help").stdout.decode()
    assert "--store-dir DIR" in helped
    assert "--durability" in helped


# -- real Redis tools ---------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli not installed")
def test_redis_cli_sets_gets_and_scans(serve: Serve, tmp_path: Path) -> None:
    command, r = embedded(serve, tmp_path / "store")
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
    assert sorted(cli("--scan", "--pattern", "scan:*").split()) == sorted(
        f"scan:{i}" for i in range(30)
    )
    assert cli("DBSIZE") == "31\n"
    assert cli("DEL", "greeting", "scan:0", "nope") == "2\n"


@pytest.mark.skipif(shutil.which("redis-benchmark") is None, reason="redis-benchmark missing")
@pytest.mark.parametrize("durability", ["always", "interval"])
def test_redis_benchmark_set_get_drives_the_embedded_store(
    serve: Serve, tmp_path: Path, durability: str
) -> None:
    command, r = embedded(serve, tmp_path / "store", "--durability", durability)
    _, port = command.listeners["command"]
    run_redis_benchmark_set_get(port, r)
