"""The keyspace commands on a real embedded engine with a fake wall clock: Redis's replies,
its error wording, expiry edge cases, the 16 databases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from postoffice.command.commands import LOOKUP
from postoffice.command.embedded import EmbeddedKeyspace
from postoffice.command.encodings import EncodingLimits
from postoffice.command.errors import CommandError
from postoffice.command.keyspace import Durable
from postoffice.command.layout import decode_key, encode_key
from postoffice.command.strings import format_float, parse_int
from postoffice.core.resp import NIL, OK, Array, Bulk, Integer, Reply, SimpleString


class Clock:
    def __init__(self) -> None:
        self.ms = 1_700_000_000_000

    def __call__(self) -> int:
        return self.ms


@dataclass
class Client:
    db: int = 0
    protocol: int = 2


class Server:
    def __init__(self, keyspace: EmbeddedKeyspace) -> None:
        self.keyspace = keyspace
        self.max_reply_bytes = 1 << 20
        self.encoding_limits = EncodingLimits()


class Session:
    def __init__(self, keyspace: EmbeddedKeyspace) -> None:
        self.server = Server(keyspace)
        self.client = Client()

    def __call__(self, *args: bytes | str | int) -> Reply:
        raw = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        spec = LOOKUP[raw[0].upper()]
        assert spec.arity_ok(len(raw))
        answer = spec.handler(self.server, self.client, raw)  # type: ignore[arg-type]  # fakes
        if isinstance(answer, Durable):
            return answer.reply
        assert isinstance(answer, Reply)
        return answer

    def error(self, *args: bytes | str | int) -> str:
        with pytest.raises(CommandError) as caught:
            self(*args)
        return str(caught.value)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def keyspace(tmp_path: Path, clock: Clock) -> AsyncIterator[EmbeddedKeyspace]:
    keyspace = EmbeddedKeyspace(tmp_path / "store", "never", now_ms=clock)
    await keyspace.start()
    yield keyspace
    await keyspace.close()


@pytest.fixture
def r(keyspace: EmbeddedKeyspace) -> Session:
    return Session(keyspace)


def test_layout_keeps_database_0_keys_as_they_are_and_escapes_a_leading_nul() -> None:
    assert encode_key(0, b"foo") == b"foo"
    assert encode_key(0, b"\x00x") == b"\x00\x00\x00x"
    assert encode_key(9, b"foo") == b"\x00\x09foo"
    for db, key in ((0, b"foo"), (0, b"\x00x"), (9, b"foo"), (15, b"\x00")):
        assert decode_key(encode_key(db, key)) == (db, key)


@pytest.mark.parametrize(
    ("raw", "ok"),
    [
        (b"0", True),
        (b"-1", True),
        (b"9223372036854775807", True),
        (b"01", False),
        (b" 1", False),
        (b"+1", False),
        (b"-0", False),
        (b"9223372036854775808", False),
        (b"", False),
    ],
)
def test_integers_are_read_as_redis_reads_them(raw: bytes, ok: bool) -> None:
    if ok:
        assert parse_int(raw) == int(raw)
    else:
        with pytest.raises(CommandError, match=r"^value is not an integer or out of range$"):
            parse_int(raw)


def test_floats_reply_in_plain_decimal() -> None:
    assert format_float(10.5 + 0.1) == b"10.6"
    assert format_float(3.0) == b"3"
    assert format_float(1e20) == b"100000000000000000000"


async def test_incr_family_and_its_errors(r: Session) -> None:
    assert r("INCR", "n") == Integer(value=1)
    assert r("INCRBY", "n", 41) == Integer(value=42)
    assert r("DECRBY", "n", 2) == Integer(value=40)
    assert r("DECR", "n") == Integer(value=39)
    r("SET", "big", "9223372036854775807")
    assert r.error("INCR", "big") == "increment or decrement would overflow"
    r("SET", "s", " 1")
    assert r.error("INCR", "s") == "value is not an integer or out of range"
    assert r.error("INCRBY", "n", "x") == "value is not an integer or out of range"
    assert r("INCRBYFLOAT", "f", "10.5") == Bulk(b"10.5")
    assert r("INCRBYFLOAT", "f", "0.1") == Bulk(b"10.6")
    assert r.error("INCRBYFLOAT", "f", "nan") == "value is not a valid float"
    r("SET", "huge", "1.7e308")
    assert r.error("INCRBYFLOAT", "huge", "1.7e308") == "increment would produce NaN or Infinity"


async def test_string_commands(r: Session) -> None:
    assert r("APPEND", "a", "hello") == Integer(value=5)
    assert r("APPEND", "a", " world") == Integer(value=11)
    assert r("STRLEN", "a") == Integer(value=11)
    assert r("STRLEN", "none") == Integer(value=0)
    assert r("GETSET", "a", "x") == Bulk(b"hello world")
    assert r("GETDEL", "a") == Bulk(b"x")
    assert r("GET", "a") == NIL
    assert r("SETNX", "a", "1") == Integer(value=1)
    assert r("SETNX", "a", "2") == Integer(value=0)
    assert r("SET", "a", "3", "XX", "GET") == Bulk(b"1")
    assert r("SET", "b", "3", "XX") == NIL
    assert r("SET", "a", "4", "NX") == NIL
    assert r.error("SET", "a", "1", "NX", "XX") == "syntax error"
    assert r.error("SET", "a", "1", "EX", "10", "PX", "5") == "syntax error"
    assert r.error("SET", "a", "1", "EX", "0") == "invalid expire time in 'set' command"
    assert r.error("SETEX", "a", "-1", "v") == "invalid expire time in 'setex' command"
    assert r("TYPE", "a") == SimpleString(text="string")
    assert r("TYPE", "zz") == SimpleString(text="none")


async def test_an_expired_key_is_never_returned(r: Session, clock: Clock) -> None:
    assert r("SET", "k", "v", "PX", 100) == OK
    assert r("PTTL", "k") == Integer(value=100)
    assert r("TTL", "k") == Integer(value=0)  # Redis rounds 0.1 s to the nearest second
    clock.ms += 99
    assert r("GET", "k") == Bulk(b"v")
    clock.ms += 1
    assert r("GET", "k") == NIL
    assert r("EXISTS", "k") == Integer(value=0)
    assert r("TTL", "k") == Integer(value=-2)
    assert r("MGET", "k") == Array(items=[NIL])
    assert r("KEYS", "*") == Array(items=())


async def test_expire_options_ttl_persist_and_keepttl(r: Session, clock: Clock) -> None:
    r("SET", "k", "v")
    assert r("TTL", "k") == Integer(value=-1)
    assert r("EXPIRE", "k", 100, "XX") == Integer(value=0)
    assert r("EXPIRE", "k", 100, "NX") == Integer(value=1)
    assert r("EXPIRE", "k", 50, "GT") == Integer(value=0)
    assert r("EXPIRE", "k", 50, "LT") == Integer(value=1)
    assert r("TTL", "k") == Integer(value=50)
    assert r.error("EXPIRE", "k", 1, "NX", "XX") == (
        "NX and XX, GT or LT options at the same time are not compatible"
    )
    assert r.error("EXPIRE", "k", 1, "GT", "LT") == (
        "GT and LT options at the same time are not compatible"
    )
    assert r.error("EXPIRE", "k", "9223372036854775807") == (
        "invalid expire time in 'expire' command"
    )
    assert r("INCR", "n") == Integer(value=1)
    r("EXPIRE", "n", 10)
    r("INCR", "n")
    assert r("TTL", "n") == Integer(value=10)  # INCR keeps the expiry
    r("SET", "n", "5", "KEEPTTL")
    assert r("TTL", "n") == Integer(value=10)
    r("SET", "n", "6")
    assert r("TTL", "n") == Integer(value=-1)  # a plain SET drops it
    assert r("PERSIST", "k") == Integer(value=1)
    assert r("PERSIST", "k") == Integer(value=0)
    assert r("PEXPIREAT", "k", clock.ms + 2000) == Integer(value=1)
    assert r("PEXPIRETIME", "k") == Integer(value=clock.ms + 2000)
    assert r("EXPIRE", "k", -1) == Integer(value=1)  # a past deadline deletes
    assert r("EXISTS", "k") == Integer(value=0)


async def test_the_sweep_removes_expired_keys_a_bounded_sample_at_a_time(
    r: Session, keyspace: EmbeddedKeyspace, clock: Clock
) -> None:
    for i in range(100):
        r("SET", f"k{i}", "v", "PX", 10)
    r("SET", "forever", "v")
    clock.ms += 10
    assert keyspace.dbsize() == Integer(value=101)  # as Redis: counted until removed
    removed = keyspace.sweep()
    assert 0 < removed <= 16 * 20
    while keyspace.sweep():
        pass
    assert keyspace.dbsize() == Integer(value=1)


async def test_expiries_survive_a_restart(tmp_path: Path, clock: Clock) -> None:
    first = EmbeddedKeyspace(tmp_path / "s", "always", now_ms=clock)
    await first.start()
    Session(first)("SET", "k", "v", "EX", 100)
    await first.close()
    second = EmbeddedKeyspace(tmp_path / "s", "always", now_ms=clock)
    await second.start()
    try:
        assert Session(second)("TTL", "k") == Integer(value=100)
        clock.ms += 100_000
        assert Session(second)("GET", "k") == NIL
    finally:
        await second.close()


async def test_databases_select_move_swapdb_flushdb(r: Session) -> None:
    r("SET", "a", "0")
    assert r("SELECT", 9) == OK
    assert r("GET", "a") == NIL
    r("SET", "a", "9", "EX", 100)
    assert r("DBSIZE") == Integer(value=1)
    assert r.error("SELECT", 16) == "DB index is out of range"
    assert r.error("SELECT", "x") == "value is not an integer or out of range"
    assert r("MOVE", "a", 0) == Integer(value=0)  # exists there
    assert r.error("MOVE", "a", 9) == "source and destination objects are the same"
    assert r("RENAME", "a", "b") == OK
    assert r("MOVE", "b", 3) == Integer(value=1)
    assert r("SWAPDB", 3, 0) == OK
    r.client.db = 0
    assert r("GET", "b") == Bulk(b"9")
    assert r("TTL", "b") == Integer(value=100)  # the expiry went with it
    r.client.db = 3
    assert r("GET", "a") == Bulk(b"0")
    assert r.error("SWAPDB", "x", 1) == "invalid first DB index"
    assert r.error("RENAME", "none", "x") == "no such key"
    assert r("FLUSHDB") == OK
    assert r("DBSIZE") == Integer(value=0)
    r.client.db = 0
    assert r("KEYS", "*") == Array(items=(Bulk(b"b"),))
    assert r("RANDOMKEY") == Bulk(b"b")
    assert r("FLUSHALL") == OK
    assert r("RANDOMKEY") == NIL
    assert r.error("FLUSHALL", "LATER") == "syntax error"


async def test_the_sweep_reaches_a_new_key_soon_after_many_expiring_keys_were_flushed(
    r: Session, keyspace: EmbeddedKeyspace, clock: Clock
) -> None:
    """Keys deleted since a round began do not fill its samples (and hold back new ones)."""
    for i in range(2000):
        r("SET", f"old{i}", "v", "EX", 3600)
    keyspace.sweep()  # a round begins over the 2000
    r("FLUSHALL")
    r("SET", "new", "v", "PX", 10)
    clock.ms += 10
    cycles = 0
    while keyspace.dbsize() != Integer(value=0):
        cycles += 1
        assert cycles <= 3, "the expired key was not reached within 3 sweeps"
        keyspace.sweep()
