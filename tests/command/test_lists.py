"""Lists and sets, and the type tags beside them, on a real embedded engine: WRONGTYPE for
a string command on them, TYPE, their kind kept by RENAME, MOVE, COPY and a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from postoffice.command.embedded import EmbeddedKeyspace
from postoffice.command.lists import decode_items, encode_items
from postoffice.command.ops import WRONG_TYPE
from postoffice.core.resp import NIL, OK, Array, Bulk, Integer, SimpleString
from tests.command.test_strings_expiry import Clock, Session, clock, keyspace, r

__all__ = ["clock", "keyspace", "r"]  # the fixtures, shared


def bulks(*items: str) -> Array:
    return Array(items=[Bulk(i.encode()) for i in items])


def test_items_round_trip_through_their_encoding() -> None:
    items = [b"", b"a", b"\x00\xff" * 300]
    assert decode_items(encode_items(items)) == items


def test_push_range_len_and_pop(r: Session) -> None:
    assert r("RPUSH", "l", "a", "b") == Integer(value=2)
    assert r("LPUSH", "l", "x", "y") == Integer(value=4)
    assert r("LRANGE", "l", 0, -1) == bulks("y", "x", "a", "b")
    assert r("LRANGE", "l", -2, 10) == bulks("a", "b")
    assert r("LRANGE", "l", 3, 1) == bulks()
    assert r("LLEN", "l") == Integer(value=4)
    assert r("LPOP", "l") == Bulk(b"y")
    assert r("RPOP", "l", 2) == bulks("b", "a")
    assert r("RPOP", "l") == Bulk(b"x")
    assert r("EXISTS", "l") == Integer(value=0)  # emptied: gone, as in Redis
    assert r("LPOP", "l") == NIL
    assert r("LPOP", "l", 1) == Array(items=None)
    assert r.error("LPOP", "l", -1) == "value is out of range, must be positive"


def test_sets_add_once_and_answer_membership(r: Session) -> None:
    assert r("SADD", "s", "a", "b", "a") == Integer(value=2)
    assert r("SADD", "s", "b") == Integer(value=0)
    assert r("SCARD", "s") == Integer(value=2)
    assert r("SMEMBERS", "s") == bulks("a", "b")
    assert r("SISMEMBER", "s", "a") == Integer(value=1)
    assert r("SRANDMEMBER", "s") in (Bulk(b"a"), Bulk(b"b"))
    reply = r("SRANDMEMBER", "s", -5)
    assert isinstance(reply, Array)
    assert reply.items is not None
    assert len(reply.items) == 5
    assert r("SRANDMEMBER", "nope") == NIL
    assert r("SREM", "s", "a", "zz") == Integer(value=1)
    assert r("SREM", "s", "b") == Integer(value=1)
    assert r("TYPE", "s") == SimpleString(text="none")


@pytest.mark.parametrize(
    "command",
    [
        ("GET", "l"),
        ("INCR", "l"),
        ("APPEND", "l", "x"),
        ("SETRANGE", "l", 0, "x"),
        ("SETBIT", "l", 0, 1),
        ("GETEX", "l"),
        ("SET", "l", "v", "GET"),
        ("SADD", "l", "m"),
        ("STRLEN", "l"),
    ],
)
def test_a_string_or_set_command_on_a_list_is_wrongtype(
    r: Session, command: tuple[object, ...]
) -> None:
    r("RPUSH", "l", "a")
    assert r.error(*command) == WRONG_TYPE  # type: ignore[arg-type]
    assert r("LRANGE", "l", 0, -1) == bulks("a")


def test_set_overwrites_a_list_and_mget_reads_it_as_nil(r: Session) -> None:
    r("RPUSH", "l", "a")
    r("SADD", "s", "m")
    r("SET", "k", "v")
    assert r("MGET", "k", "l", "s") == Array(items=[Bulk(b"v"), NIL, NIL])
    assert r("TYPE", "l") == SimpleString(text="list")
    assert r("TYPE", "s") == SimpleString(text="set")
    assert r("SET", "l", "now a string") == OK
    assert r("TYPE", "l") == SimpleString(text="string")
    assert r("GET", "l") == Bulk(b"now a string")
    assert r.error("LLEN", "l") == WRONG_TYPE


def test_rename_move_copy_keep_the_kind_and_expiry(r: Session) -> None:
    r("RPUSH", "l", "a", "b")
    r("EXPIRE", "l", 100)
    assert r("RENAME", "l", "m") == OK
    assert r("TTL", "m") == Integer(value=100)
    assert r("COPY", "m", "c", "DB", 2) == Integer(value=1)
    assert r("MOVE", "m", 3) == Integer(value=1)
    for db in (2, 3):
        r("SELECT", db)
        (key,) = [k for k in ("c", "m") if r("EXISTS", k) == Integer(value=1)]
        assert r("LRANGE", key, 0, -1) == bulks("a", "b")
        assert r("TYPE", key) == SimpleString(text="list")


async def test_the_kind_survives_a_restart(tmp_path: Path, clock: Clock) -> None:
    first = EmbeddedKeyspace(tmp_path / "store", "never", now_ms=clock)
    await first.start()
    Session(first)("RPUSH", "l", "a")
    await first.close()
    again = EmbeddedKeyspace(tmp_path / "store", "never", now_ms=clock)
    await again.start()
    try:
        r = Session(again)
        assert r.error("GET", "l") == WRONG_TYPE
        assert r("LRANGE", "l", 0, -1) == bulks("a")
        assert r("DBSIZE") == Integer(value=1)
    finally:
        await again.close()


def test_object_encoding_names_redis_7_0s_list_and_set_encodings(r: Session) -> None:
    r("RPUSH", "l", "a")
    r("SADD", "ints", "1", "-2", "3")
    r("SADD", "mixed", "1", "a")
    r("SADD", "many", *range(513))
    assert [r("OBJECT", "ENCODING", k) for k in ("l", "ints", "mixed", "many")] == [
        Bulk(b"quicklist"),
        Bulk(b"intset"),
        Bulk(b"hashtable"),
        Bulk(b"hashtable"),
    ]


def test_scan_type_shows_only_keys_of_that_kind(r: Session) -> None:
    r("SET", "str", "v")
    r("RPUSH", "lst", "a")
    r("SADD", "st", "m")

    def keys(kind: str) -> list[bytes]:
        reply = r("SCAN", 0, "COUNT", 100, "TYPE", kind)
        assert isinstance(reply, Array)
        assert reply.items is not None
        page = reply.items[1]
        assert isinstance(page, Array)
        assert page.items is not None
        return sorted(
            bytes(item.data) for item in page.items if isinstance(item, Bulk) and item.data
        )

    assert keys("string") == [b"str"]
    assert keys("LIST") == [b"lst"]
    assert keys("set") == [b"st"]
    assert keys("hash") == []


def test_srandmember_refuses_more_repeated_members_than_its_limit(r: Session) -> None:
    r("SADD", "s", "m")
    assert r.error("SRANDMEMBER", "s", -100_001) == (
        "count of 100001 repeated members exceeds limit 100000"
    )
    reply = r("SRANDMEMBER", "s", -3)
    assert reply == bulks("m", "m", "m")
