"""Streams on a real embedded engine with a fake clock: XADD's ids and errors, XRANGE,
XDEL, consumer groups (XGROUP, XREADGROUP, XACK) and XINFO STREAM [FULL] in Redis 7.0's
shape, with the counters (entries-read, lag) Redis keeps."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from postoffice.command.errors import BusyGroupError, NoGroupError
from postoffice.command.streams import Group, Pending, Stream, decode_stream, encode_stream
from postoffice.core.resp import NIL, OK, Array, Bulk, Integer, Map, Reply, SimpleString
from tests.command.test_strings_expiry import Clock, Session, clock, keyspace, r

__all__ = ["clock", "keyspace", "r"]  # the fixtures, shared


def entry(sid: str, *fields: str) -> Array:
    return Array(items=(Bulk(sid.encode()), Array(items=[Bulk(f.encode()) for f in fields])))


def items(reply: Reply) -> Sequence[Reply]:
    assert isinstance(reply, Array)
    assert reply.items is not None
    return reply.items


def as_dict(reply: Reply) -> dict[str, Reply]:
    assert isinstance(reply, Map)
    out: dict[str, Reply] = {}
    for key, value in reply.pairs:
        assert isinstance(key, Bulk)
        assert isinstance(key.data, bytes)
        out[key.data.decode()] = value
    return out


def test_a_stream_round_trips_through_its_stored_form() -> None:
    stream = Stream(
        entries={(1, 0): b"\x00\x00\x00\x01a", (2, 5): b""},
        last_id=(2, 5),
        max_deleted=(1, 1),
        first_id=(1, 0),
        entries_added=3,
        groups={
            b"g": Group(
                last_id=(1, 0),
                entries_read=-1,
                pending={(1, 0): Pending(consumer=b"c", delivered_at=7, deliveries=2)},
                consumers={b"c": 9},
            )
        },
    )
    assert decode_stream(encode_stream(stream)) == stream


def test_an_entry_appended_to_a_stored_stream_encodes_as_one_decoded_first() -> None:
    stored = encode_stream(Stream(entries={(1, 0): b"a", (2, 0): b"b"}, last_id=(2, 0)))
    lazy, eager = decode_stream(stored), decode_stream(stored)
    assert eager.entries  # decoded before the append
    for stream in (lazy, eager):
        stream.append((3, 0), b"c")
    assert lazy.length == eager.length == 3
    assert encode_stream(lazy) == encode_stream(eager)
    assert list(decode_stream(encode_stream(lazy)).entries) == [(1, 0), (2, 0), (3, 0)]


def test_xadd_makes_ids_from_the_clock_and_refuses_going_back(r: Session, clock: Clock) -> None:
    clock.ms = 1000
    assert r("XADD", "s", "*", "a", "1") == Bulk(b"1000-0")
    assert r("XADD", "s", "*", "a", "2") == Bulk(b"1000-1")
    clock.ms = 999  # a clock going back still gives growing ids
    assert r("XADD", "s", "*", "a", "3") == Bulk(b"1000-2")
    assert r("XADD", "s", "2000-*", "a", "4") == Bulk(b"2000-0")
    assert r("XADD", "s", "2000-*", "a", "5") == Bulk(b"2000-1")
    assert r("XADD", "s", "3000", "a", "6") == Bulk(b"3000-0")
    not_greater = "The ID specified in XADD is equal or smaller than the target stream top item"
    assert r.error("XADD", "s", "3000", "a", "7") == not_greater
    assert r.error("XADD", "s", "2999-*", "a", "7") == not_greater
    assert (
        r.error("XADD", "t", "0-0", "a", "1") == "The ID specified in XADD must be greater than 0-0"
    )
    assert (
        r.error("XADD", "t", "abc", "a", "1")
        == "Invalid stream ID specified as stream command argument"
    )
    assert (
        r.error("XADD", "t", "*", "a", "1", "b") == "wrong number of arguments for 'xadd' command"
    )
    assert r("XADD", "t", "NOMKSTREAM", "*", "a", "1") == NIL
    assert r("EXISTS", "t") == Integer(value=0)
    assert r("XLEN", "s") == Integer(value=6)
    assert r("TYPE", "s") == SimpleString(text="stream")
    assert r("OBJECT", "ENCODING", "s") == Bulk(b"stream")


def test_xadd_trims_by_maxlen_and_minid(r: Session) -> None:
    for i in range(1, 6):
        r("XADD", "s", str(i), "n", str(i))
    assert r("XADD", "s", "MAXLEN", "3", "6", "n", "6") == Bulk(b"6-0")
    assert r("XRANGE", "s", "-", "+") == Array(
        items=[entry("4-0", "n", "4"), entry("5-0", "n", "5"), entry("6-0", "n", "6")]
    )
    r("XADD", "s", "MINID", "~", "6", "LIMIT", "10", "7", "n", "7")
    assert r("XLEN", "s") == Integer(value=2)
    assert (
        r.error("XADD", "s", "MAXLEN", "1", "LIMIT", "5", "*", "n", "1")
        == "syntax error, LIMIT cannot be used without the special ~ option"
    )


def test_xrange_bounds_count_and_reverse(r: Session) -> None:
    for sid in ("1-1", "1-2", "2-0", "3-0"):
        r("XADD", "s", sid, "f", sid)
    assert r("XRANGE", "s", "1", "1") == Array(
        items=[entry("1-1", "f", "1-1"), entry("1-2", "f", "1-2")]
    )
    assert r("XRANGE", "s", "(1-1", "(3-0") == Array(
        items=[entry("1-2", "f", "1-2"), entry("2-0", "f", "2-0")]
    )
    assert r("XRANGE", "s", "-", "+", "COUNT", "1") == Array(items=[entry("1-1", "f", "1-1")])
    assert r("XRANGE", "s", "-", "+", "COUNT", "0") == Array(items=None)
    assert r("XREVRANGE", "s", "+", "-", "COUNT", "2") == Array(
        items=[entry("3-0", "f", "3-0"), entry("2-0", "f", "2-0")]
    )
    assert r("XRANGE", "nope", "-", "+") == Array(items=[])


def test_xdel_counts_and_keeps_the_largest_deleted_id(r: Session) -> None:
    for sid in ("1", "2", "3"):
        r("XADD", "s", sid, "f", "v")
    assert r("XDEL", "s", "2-0", "9-0") == Integer(value=1)
    assert r("XDEL", "s", "1-0") == Integer(value=1)
    info = as_dict(r("XINFO", "STREAM", "s"))
    assert info["length"] == Integer(value=1)
    assert info["max-deleted-entry-id"] == Bulk(b"2-0")
    assert info["recorded-first-entry-id"] == Bulk(b"3-0")
    assert info["entries-added"] == Integer(value=3)
    assert info["first-entry"] == entry("3-0", "f", "v")
    assert r("XDEL", "s", "3-0") == Integer(value=1)
    assert r("EXISTS", "s") == Integer(value=1)  # a stream emptied by XDEL stays, as Redis's
    assert as_dict(r("XINFO", "STREAM", "s"))["first-entry"] == NIL


def test_xgroup_errors_are_redis_s(r: Session) -> None:
    r("XADD", "s", "1", "f", "v")
    assert r("XGROUP", "CREATE", "s", "g", "0") == OK
    with pytest.raises(BusyGroupError, match=r"^Consumer Group name already exists$"):
        r("XGROUP", "CREATE", "s", "g", "$")
    with pytest.raises(NoGroupError, match=r"^No such consumer group 'x' for key name 's'$"):
        r("XGROUP", "SETID", "s", "x", "0")
    assert r.error("XGROUP", "CREATE", "nope", "g", "0").startswith(
        "The XGROUP subcommand requires the key to exist."
    )
    assert r("XGROUP", "CREATE", "new", "g", "$", "MKSTREAM") == OK
    assert r("XLEN", "new") == Integer(value=0)
    with pytest.raises(NoGroupError, match=r"^No such key 's' or consumer group 'x' in XREADGROUP"):
        r("XREADGROUP", "GROUP", "x", "c", "STREAMS", "s", ">")
    assert r("XGROUP", "DESTROY", "s", "g") == Integer(value=1)
    assert r("XGROUP", "DESTROY", "s", "g") == Integer(value=0)


def test_xreadgroup_delivers_once_keeps_pending_and_replays_history(
    r: Session, clock: Clock
) -> None:
    for sid in ("1", "2", "3"):
        r("XADD", "s", sid, "f", sid)
    r("XGROUP", "CREATE", "s", "g", "0")
    clock.ms = 5000
    # RESP2: an array of [key, entries] pairs, as Redis's (RESP3: a map, below)
    assert r("XREADGROUP", "GROUP", "g", "alice", "COUNT", "1", "STREAMS", "s", ">") == Array(
        items=[Array(items=(Bulk(b"s"), Array(items=[entry("1-0", "f", "1")])))]
    )
    r.client.protocol = 3
    assert r("XREADGROUP", "GROUP", "g", "bob", "NOACK", "STREAMS", "s", ">") == Map(
        pairs=[(Bulk(b"s"), Array(items=[entry("2-0", "f", "2"), entry("3-0", "f", "3")]))]
    )
    assert r("XREADGROUP", "GROUP", "g", "bob", "STREAMS", "s", ">") == Array(items=None)
    r("XDEL", "s", "1-0")
    history = Array(items=(Bulk(b"1-0"), Array(items=None)))
    assert r("XREADGROUP", "GROUP", "g", "alice", "STREAMS", "s", "0") == Map(
        pairs=[(Bulk(b"s"), Array(items=[history]))]
    )
    assert r("XACK", "s", "g", "1-0", "2-0") == Integer(value=1)
    group = as_dict(items(as_dict(r("XINFO", "STREAM", "s", "FULL"))["groups"])[0])
    assert group["pel-count"] == Integer(value=0)
    assert group["last-delivered-id"] == Bulk(b"3-0")


def test_xinfo_full_counts_reads_and_lag_as_redis_does(r: Session, clock: Clock) -> None:
    """The scenario of Redis's "COPY basic usage for stream-cgroups", checked against
    what redis-server 7.0.15 answers."""
    for sid, name in zip(range(100, 106), "abcefg", strict=True):
        r("XADD", "x", str(sid), name, "1")
    r("XGROUP", "CREATE", "x", "g1", "0")
    r("XGROUP", "CREATE", "x", "g2", "0")
    clock.ms = 7000
    r("XREADGROUP", "GROUP", "g1", "Alice", "COUNT", "1", "STREAMS", "x", ">")
    r("XREADGROUP", "GROUP", "g1", "Bob", "COUNT", "1", "STREAMS", "x", ">")
    r("XREADGROUP", "GROUP", "g1", "Bob", "NOACK", "COUNT", "1", "STREAMS", "x", ">")
    r("XREADGROUP", "GROUP", "g2", "Charlie", "COUNT", "4", "STREAMS", "x", ">")
    info = as_dict(r("XINFO", "STREAM", "x", "FULL"))
    g2 = as_dict(items(info["groups"])[1])
    assert (g2["entries-read"], g2["lag"]) == (Integer(value=4), Integer(value=2))
    r("XGROUP", "SETID", "x", "g1", "101-0")
    r("XREADGROUP", "GROUP", "g1", "Dave", "COUNT", "3", "STREAMS", "x", ">")
    r("XDEL", "x", "103")
    full = r("XINFO", "STREAM", "x", "FULL")
    assert r("COPY", "x", "newx") == Integer(value=1)
    assert r("XINFO", "STREAM", "newx", "FULL") == full
    info = as_dict(full)
    assert info["length"] == Integer(value=5)
    assert info["last-generated-id"] == Bulk(b"105-0")
    assert info["max-deleted-entry-id"] == Bulk(b"103-0")
    g1, g2 = (as_dict(g) for g in items(info["groups"]))
    assert (g1["last-delivered-id"], g1["entries-read"], g1["lag"]) == (Bulk(b"104-0"), NIL, NIL)
    assert g1["pel-count"] == Integer(value=5)
    assert (g2["entries-read"], g2["lag"]) == (Integer(value=4), NIL)
    consumers = [as_dict(c)["name"] for c in items(g1["consumers"])]
    assert consumers == [Bulk(b"Alice"), Bulk(b"Bob"), Bulk(b"Dave")]
    assert items(g1["pending"])[0] == Array(
        items=(Bulk(b"100-0"), Bulk(b"Alice"), Integer(value=7000), Integer(value=1))
    )


def test_xinfo_of_a_missing_key_or_another_kind(r: Session) -> None:
    assert r.error("XINFO", "STREAM", "nope") == "no such key"
    r("SET", "k", "v")
    assert r.error("XLEN", "k") == "Operation against a key holding the wrong kind of value"
    assert (
        r.error("XADD", "k", "*", "a", "1")
        == "Operation against a key holding the wrong kind of value"
    )
