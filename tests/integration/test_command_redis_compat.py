"""The Redis keyspace commands with redis-py against real servers, in both keyspace modes:
embedded (--store-dir) and remote (--store); expiries kept across a restart."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.integration.conftest import ServerProcess

pytestmark = pytest.mark.integration

Serve = Callable[..., ServerProcess]
COMMAND = ("--port", "0", "--metrics-port", "0")


def connect(server: ServerProcess, db: int = 0) -> redis.Redis:
    host, port = server.listeners["command"]
    return redis.Redis(host=host, port=port, db=db, socket_timeout=10)


def remote(serve: Serve, tmp_path: Path) -> ServerProcess:
    data = str(tmp_path / "store-data")
    return serve("store", "--port", "0", "--metrics-port", "0", "--data-dir", data)


def linked(serve: Serve, store: ServerProcess) -> ServerProcess:
    command = serve("command", *COMMAND, "--store", f"127.0.0.1:{store.port}")
    r = connect(command)
    deadline = time.monotonic() + 10
    while r.info("keyspace")["store_connected"] != 1:
        assert time.monotonic() < deadline, "the command server never reached the store"
        time.sleep(0.02)
    return command


@pytest.fixture(params=["embedded", "remote"])
def command(request: pytest.FixtureRequest, serve: Serve, tmp_path: Path) -> ServerProcess:
    if request.param == "embedded":
        return serve("command", *COMMAND, "--store-dir", str(tmp_path / "keys"))
    return linked(serve, remote(serve, tmp_path))


@pytest.mark.timeout(60)
def test_string_commands_answer_as_redis_does(command: ServerProcess) -> None:
    r = connect(command)
    assert r.incr("n") == 1
    assert r.incrby("n", 9) == 10
    assert r.decr("n") == 9
    assert r.incrbyfloat("f", 10.5) == 10.5
    assert r.append("s", "ab") == 2
    assert r.strlen("s") == 2
    assert r.getset("s", "cd") == b"ab"
    assert r.getdel("s") == b"cd"
    assert r.setnx("s", "1") is True
    assert r.setnx("s", "2") is False
    assert r.set("s", "3", get=True) == b"1"
    assert r.set("t", "x", nx=True, px=60_000) is True
    assert 0 < r.pttl("t") <= 60_000
    assert r.rename("t", "u") is True
    assert r.type("u") == b"string"
    assert 0 < r.ttl("u") <= 60
    assert r.persist("u") is True
    assert r.ttl("u") == -1
    assert sorted(r.keys("*")) == [b"f", b"n", b"s", b"u"]
    r.set("big", "9223372036854775807")
    with pytest.raises(redis.ResponseError, match=r"^increment or decrement would overflow$"):
        r.incr("big")
    with pytest.raises(redis.ResponseError, match=r"^value is not an integer or out of range$"):
        r.incr("f")
    with pytest.raises(redis.ResponseError, match=r"^no such key$"):
        r.rename("none", "x")


@pytest.mark.timeout(60)
def test_databases_are_apart_and_an_expired_key_is_swept(command: ServerProcess) -> None:
    zero, nine = connect(command), connect(command, db=9)
    zero.set("k", "0")
    nine.set("k", "9")
    assert zero.get("k") == b"0"
    assert nine.get("k") == b"9"
    assert nine.dbsize() == 1
    assert nine.move("k", 3) is True
    assert nine.swapdb(3, 9) is True
    assert nine.get("k") == b"9"
    nine.flushdb()
    assert zero.get("k") == b"0"
    zero.set("short", "v", px=50)
    deadline = time.monotonic() + 5
    while zero.dbsize() != 1:  # the active sweep removes it without a read
        assert time.monotonic() < deadline, "the sweep never removed the expired key"
        time.sleep(0.05)
    assert zero.get("short") is None


@pytest.mark.timeout(60)
def test_a_pipelined_incr_is_atomic_and_ordered(command: ServerProcess) -> None:
    r = connect(command)
    pipe = r.pipeline(transaction=False)
    for _ in range(200):
        pipe.incr("count")
        pipe.get("count")
    replies = pipe.execute()
    assert replies[-2:] == [200, b"200"]
    assert replies[0::2] == list(range(1, 201))


@pytest.mark.timeout(90)
def test_an_expiry_survives_a_restart_in_both_modes(serve: Serve, tmp_path: Path) -> None:
    first = serve("command", *COMMAND, "--store-dir", str(tmp_path / "keys"))
    connect(first).set("k", "v", ex=600)
    first.stop()
    again = serve("command", *COMMAND, "--store-dir", str(tmp_path / "keys"))
    assert 590 < connect(again).ttl("k") <= 600
    again.stop()
    store = remote(serve, tmp_path)
    connect(linked(serve, store)).set("k", "v", ex=600)
    store.stop()
    store = serve("store", *store.args)
    assert 590 < connect(linked(serve, store)).ttl("k") <= 600


@pytest.mark.timeout(60)
def test_range_bit_copy_and_getex_commands_answer_as_redis_does(command: ServerProcess) -> None:
    r = connect(command)
    assert r.set("k", "Hello World") is True
    assert r.getrange("k", -5, -1) == b"World"
    assert r.setrange("k", 6, "Redis") == 11
    assert r.get("k") == b"Hello Redis"
    assert r.setbit("bits", 7, 1) == 0
    assert r.getbit("bits", 7) == 1
    assert r.get("bits") == b"\x01"
    assert r.msetnx({"a": "ohmytext", "b": "mynewtext"}) is True
    assert r.msetnx({"a": "x", "c": "y"}) is False
    assert r.lcs("a", "b") == b"mytext"
    assert r.getex("a", ex=100) == b"ohmytext"
    assert 0 < r.ttl("a") <= 100
    assert r.copy("a", "a2", destination_db="3") is True
    assert connect(command, db=3).ttl("a2") > 0
    assert r.getex("a", persist=True) == b"ohmytext"
    assert r.ttl("a") == -1
    assert r.object("encoding", "k") == b"raw"  # changed in place by SETRANGE, as Redis says
    pairs = {f"m{i}": str(i) for i in range(6000)}  # 12000 store operations: two batches
    assert r.mset(pairs) is True
    assert r.get("m5999") == b"5999"
    assert r.dbsize() == 6004


@pytest.mark.timeout(60)
def test_lists_and_sets_and_wrongtype_in_both_modes(command: ServerProcess) -> None:
    r = connect(command)
    assert r.rpush("l", "a", "b") == 2
    assert r.lpush("l", "z") == 3
    assert r.lrange("l", 0, -1) == [b"z", b"a", b"b"]
    assert r.sadd("s", "m", "n") == 2
    assert r.set("k", "v") is True
    assert r.mget("k", "l", "s") == [b"v", None, None]
    assert r.type("l") == b"list"
    assert r.type("s") == b"set"
    assert r.scan(0, count=100, _type="list")[1] == [b"l"]
    assert r.scan(0, count=100, _type="string")[1] == [b"k"]
    with pytest.raises(
        redis.ResponseError, match="Operation against a key holding the wrong kind of value"
    ):
        r.get("l")
    with pytest.raises(
        redis.ResponseError, match="Operation against a key holding the wrong kind of value"
    ):
        r.incr("s")
    assert r.rename("l", "l2") is True
    assert r.llen("l2") == 3
    assert r.set("l2", "plain") is True  # SET overwrites a list
    assert r.get("l2") == b"plain"
    assert r.type("l2") == b"string"
    with pytest.raises(
        redis.ResponseError, match="Operation against a key holding the wrong kind of value"
    ):
        r.rpop("l2")
    assert r.srem("s", "m", "n") == 2
    assert r.exists("s") == 0


@pytest.mark.timeout(60)
def test_hashes_and_sorted_sets_with_redis_py_in_both_modes(command: ServerProcess) -> None:
    r = connect(command)
    assert r.hset("h", mapping={"a": "1", "b": "2"}) == 2
    assert r.hget("h", "a") == b"1"
    assert r.hgetall("h") == {b"a": b"1", b"b": b"2"}
    assert r.hmget("h", "a", "zz") == [b"1", None]
    assert r.hincrby("h", "a", 5) == 6
    assert r.hdel("h", "b", "zz") == 1
    assert (r.hlen("h"), r.hexists("h", "a"), r.hkeys("h"), r.hvals("h")) == (
        1,
        True,
        [b"a"],
        [b"6"],
    )
    assert r.object("encoding", "h") == b"listpack"
    assert r.zadd("z", {"a": 1.5, "b": 0.1}) == 2
    assert r.zadd("z", {"a": 2}, incr=True) == 3.5
    assert r.zscore("z", "b") == 0.1
    assert r.zrange("z", 0, -1, withscores=True) == [(b"b", 0.1), (b"a", 3.5)]
    assert r.zincrby("z", 1, "b") == 1.1
    assert r.zcard("z") == 2
    assert r.zrem("z", "a") == 1
    assert r.type("z") == b"zset"
    assert r.scan(0, count=100, _type="zset")[1] == [b"z"]
    assert r.config_set("zset-max-ziplist-entries", 0) is True
    assert r.config_get("zset-max-listpack-entries") == {"zset-max-listpack-entries": "0"}
    r.zadd("big", {"m": 1})
    assert r.object("encoding", "big") == b"skiplist"
    assert r.copy("big", "big2") is True
    assert r.object("encoding", "big2") == b"skiplist"
    with pytest.raises(redis.ResponseError, match=r"^value is not a valid float$"):
        r.zadd("z", {"m": "x"})
    with pytest.raises(
        redis.ResponseError, match="Operation against a key holding the wrong kind of value"
    ):
        r.hget("z", "a")


@pytest.mark.timeout(60)
def test_a_sorted_set_in_resp3_answers_doubles(command: ServerProcess) -> None:
    host, port = command.listeners["command"]
    r = redis.Redis(host=host, port=port, protocol=3, socket_timeout=10)
    r.zadd("z", {"a": 1.5, "b": 2})
    assert r.zscore("z", "a") == 1.5
    assert r.zrange("z", 0, -1, withscores=True) == [[b"a", 1.5], [b"b", 2.0]]
    r.hset("h", "f", "v")
    assert r.hgetall("h") == {b"f": b"v"}


@pytest.mark.timeout(60)
def test_streams_and_consumer_groups_with_redis_py_in_both_modes(command: ServerProcess) -> None:
    r = connect(command)
    first = r.xadd("s", {"a": "1"})
    assert r.xadd("s", {"b": "2"}, id="9999999999999-0") == b"9999999999999-0"
    assert r.xlen("s") == 2
    assert r.xrange("s", count=1) == [(first, {b"a": b"1"})]
    with pytest.raises(redis.ResponseError, match="equal or smaller than the target stream top"):
        r.xadd("s", {"c": "3"}, id="1-1")
    assert r.xgroup_create("s", "g", id="0") is True
    with pytest.raises(redis.ResponseError, match="BUSYGROUP"):
        r.xgroup_create("s", "g", id="0")
    assert r.xreadgroup("g", "alice", {"s": ">"}, count=1) == [[b"s", [(first, {b"a": b"1"})]]]
    info = r.xinfo_stream("s", full=True)
    assert info["length"] == 2
    assert info["groups"][0]["pel-count"] == 1
    assert info["groups"][0]["consumers"][0]["name"] == b"alice"
    assert r.xack("s", "g", first) == 1
    assert r.xdel("s", first) == 1
    assert r.copy("s", "s2") is True
    assert r.xinfo_stream("s2")["max-deleted-entry-id"] == first
    assert r.type("s2") == b"stream"


@pytest.mark.timeout(60)
def test_a_string_changed_in_place_reads_raw_in_both_modes(command: ServerProcess) -> None:
    r = connect(command)
    r.set("k", 1234)
    assert r.object("encoding", "k") == b"int"
    assert r.setrange("k", 0, "2") == 4
    assert r.object("encoding", "k") == b"raw"
    assert r.get("k") == b"2234"
    assert r.mget("k", "missing") == [b"2234", None]
    assert r.scan(0, count=100, _type="string")[1] == [b"k"]
    r.set("k", 5)
    assert r.object("encoding", "k") == b"int"
