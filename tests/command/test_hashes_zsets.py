"""Hashes and sorted sets on a real embedded engine: Redis's replies (RESP2 and RESP3
shapes), its errors, WRONGTYPE, their encodings by the CONFIG thresholds, and their kind
kept by COPY, RENAME and MOVE."""

from __future__ import annotations

import pytest

from postoffice.command.config import CommandConfig
from postoffice.command.encodings import EncodingLimits
from postoffice.command.hashes import decode_hash, encode_hash
from postoffice.command.ops import WRONG_TYPE
from postoffice.command.server import changed_config, config_pairs
from postoffice.command.zsets import decode_zset, encode_zset, parse_score
from postoffice.core.errors import ConfigError
from postoffice.core.resp import (
    NIL,
    OK,
    Array,
    Bulk,
    Double,
    Integer,
    Map,
    SimpleString,
    encode_resp,
    encode_resp3,
)
from tests.command.test_strings_expiry import Session, clock, keyspace, r

__all__ = ["clock", "keyspace", "r"]  # the fixtures, shared


def bulks(*items: str) -> Array:
    return Array(items=[Bulk(i.encode()) for i in items])


# -- hashes -----------------------------------------------------------------------------------


def test_hash_round_trips_through_its_stored_form() -> None:
    fields = {b"a": b"1", b"": b"\x00" * 70}
    assert decode_hash(encode_hash(1, fields)) == (1, fields)


def test_hset_counts_new_fields_and_the_reads_answer_as_redis(r: Session) -> None:
    assert r("HSET", "h", "a", "1", "b", "2") == Integer(value=2)
    assert r("HSET", "h", "a", "9", "c", "3") == Integer(value=1)
    assert r("HMSET", "h", "d", "4") == OK
    assert r("HSETNX", "h", "d", "x") == Integer(value=0)
    assert r("HSETNX", "h", "e", "5") == Integer(value=1)
    assert r("HGET", "h", "a") == Bulk(b"9")
    assert r("HGET", "h", "zz") == NIL
    assert r("HGET", "nope", "a") == NIL
    assert r("HMGET", "h", "b", "zz", "c") == Array(items=[Bulk(b"2"), NIL, Bulk(b"3")])
    assert r("HLEN", "h") == Integer(value=5)
    assert r("HEXISTS", "h", "c") == Integer(value=1)
    assert r("HEXISTS", "h", "zz") == Integer(value=0)
    assert r("HSTRLEN", "h", "a") == Integer(value=1)
    assert r("HKEYS", "h") == bulks("a", "b", "c", "d", "e")
    assert r("HVALS", "h") == bulks("9", "2", "3", "4", "5")
    everything = r("HGETALL", "h")
    assert isinstance(everything, Map)
    assert [(k, v) for k, v in everything.pairs][:2] == [
        (Bulk(b"a"), Bulk(b"9")),
        (Bulk(b"b"), Bulk(b"2")),
    ]
    assert encode_resp(r("HGETALL", "nope")) == b"*0\r\n"
    assert encode_resp3(r("HGETALL", "nope")) == b"%0\r\n"
    assert r("TYPE", "h") == SimpleString(text="hash")


def test_hdel_counts_and_deletes_an_emptied_hash(r: Session) -> None:
    r("HSET", "h", "a", "1", "b", "2")
    assert r("HDEL", "h", "a", "zz", "a") == Integer(value=1)
    assert r("HDEL", "h", "b") == Integer(value=1)
    assert r("EXISTS", "h") == Integer(value=0)
    assert r("HDEL", "h", "b") == Integer(value=0)


def test_hset_with_a_field_and_no_value_is_a_wrong_number_of_arguments(r: Session) -> None:
    assert r.error("HSET", "h", "a", "1", "b") == "wrong number of arguments for 'hset' command"


def test_hincrby_adds_and_refuses_what_redis_refuses(r: Session) -> None:
    assert r("HINCRBY", "h", "n", "5") == Integer(value=5)
    assert r("HINCRBY", "h", "n", "-7") == Integer(value=-2)
    assert r("HGET", "h", "n") == Bulk(b"-2")
    assert r.error("HINCRBY", "h", "n", "x") == "value is not an integer or out of range"
    r("HSET", "h", "s", "abc")
    assert r.error("HINCRBY", "h", "s", "1") == "hash value is not an integer"
    r("HSET", "h", "big", str((1 << 63) - 1))
    assert r.error("HINCRBY", "h", "big", "1") == "increment or decrement would overflow"


def test_hash_encoding_grows_past_the_thresholds_and_stays_grown(r: Session) -> None:
    r("HSET", "small", "tmp", "17179869184")
    assert r("OBJECT", "ENCODING", "small") == Bulk(b"listpack")
    r("HSET", "long", "f", "x" * 65)
    assert r("OBJECT", "ENCODING", "long") == Bulk(b"hashtable")
    r("HDEL", "long", "f")
    r.server.encoding_limits = EncodingLimits(hash_max_entries=2)
    r("HSET", "many", "a", "1", "b", "2")
    assert r("OBJECT", "ENCODING", "many") == Bulk(b"listpack")
    r("HSET", "many", "c", "3")
    assert r("OBJECT", "ENCODING", "many") == Bulk(b"hashtable")
    r("HDEL", "many", "c", "b")
    assert r("OBJECT", "ENCODING", "many") == Bulk(b"hashtable")  # never converted back
    r.server.encoding_limits = EncodingLimits(hash_max_entries=0)
    r("HSET", "none", "a", "1")
    assert r("OBJECT", "ENCODING", "none") == Bulk(b"hashtable")


# -- sorted sets ------------------------------------------------------------------------------


def test_zset_round_trips_through_its_stored_form_in_score_order() -> None:
    members = {b"b": 2.0, b"a": 2.0, b"c": -1.5}
    header, decoded = decode_zset(encode_zset(0, members))
    assert header == 0
    assert list(decoded.items()) == [(b"c", -1.5), (b"a", 2.0), (b"b", 2.0)]


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"1.5", 1.5),
        (b"-3e2", -300.0),
        (b"inf", float("inf")),
        (b"-inf", float("-inf")),
        (b"+inf", float("inf")),
        (b"0x10", 16.0),
    ],
)
def test_a_score_is_read_as_strtod_reads_it(raw: bytes, value: float) -> None:
    assert parse_score(raw) == value


@pytest.mark.parametrize("raw", [b"", b"abc", b"nan", b" 1", b"1 ", b"1_0", b"1.5.5"])
def test_a_score_that_is_not_a_float_is_refused(raw: bytes) -> None:
    with pytest.raises(Exception, match=r"^value is not a valid float$"):
        parse_score(raw)


def test_zadd_zscore_zcard_zrange_answer_as_redis(r: Session) -> None:
    assert r("ZADD", "z", "1.5", "a", "0.1", "b", "inf", "c") == Integer(value=3)
    assert r("ZADD", "z", "2", "a") == Integer(value=0)
    assert r("ZSCORE", "z", "b") == Double(value=0.1)
    assert encode_resp(Double(value=0.1)) == b"$19\r\n0.10000000000000001\r\n"
    assert encode_resp3(Double(value=float("inf"))) == b",inf\r\n"
    assert r("ZSCORE", "z", "zz") == NIL
    assert r("ZCARD", "z") == Integer(value=3)
    assert r("ZCARD", "nope") == Integer(value=0)
    assert r("ZRANGE", "z", 0, -1) == bulks("b", "a", "c")
    assert r("ZRANGE", "z", 0, 1, "WITHSCORES") == Array(
        items=[Bulk(b"b"), Double(value=0.1), Bulk(b"a"), Double(value=2.0)]
    )
    assert r("ZRANGE", "z", 0, 0, "REV") == bulks("c")
    assert r("ZREVRANGE", "z", 0, 1) == bulks("c", "a")
    assert r("ZRANGE", "z", 5, 10) == bulks()
    assert r("ZRANGE", "nope", 0, -1) == bulks()
    assert r("TYPE", "z") == SimpleString(text="zset")


def test_zrange_withscores_in_resp3_is_pairs(r: Session) -> None:
    r("ZADD", "z", "1", "a", "2", "b")
    r.client.protocol = 3
    assert r("ZRANGE", "z", 0, -1, "WITHSCORES") == Array(
        items=[
            Array(items=(Bulk(b"a"), Double(value=1.0))),
            Array(items=(Bulk(b"b"), Double(value=2.0))),
        ]
    )


def test_zrange_by_score_and_lex_with_limit(r: Session) -> None:
    r("ZADD", "z", "1", "a", "2", "b", "3", "c", "4", "d")
    assert r("ZRANGE", "z", "2", "(4", "BYSCORE") == bulks("b", "c")
    assert r("ZRANGEBYSCORE", "z", "-inf", "+inf", "LIMIT", 1, 2) == bulks("b", "c")
    assert r("ZRANGE", "z", "(4", "1", "BYSCORE", "REV") == bulks("c", "b", "a")
    assert r("ZRANGE", "z", "1", "4", "BYSCORE", "LIMIT", -1, 2) == bulks()
    r("ZADD", "l", "0", "a", "0", "b", "0", "c")
    assert r("ZRANGE", "l", "[b", "+", "BYLEX") == bulks("b", "c")
    assert r("ZRANGE", "l", "-", "(b", "BYLEX") == bulks("a")
    assert r("ZRANGE", "l", "+", "-", "BYLEX", "REV", "LIMIT", 0, 2) == bulks("c", "b")


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (
            ("ZADD", "z", "NX", "XX", "1", "a"),
            "XX and NX options at the same time are not compatible",
        ),
        (
            ("ZADD", "z", "GT", "LT", "1", "a"),
            "GT, LT, and/or NX options at the same time are not compatible",
        ),
        (
            ("ZADD", "z", "GT", "NX", "1", "a"),
            "GT, LT, and/or NX options at the same time are not compatible",
        ),
        (
            ("ZADD", "z", "INCR", "1", "a", "2", "b"),
            "INCR option supports a single increment-element pair",
        ),
        (("ZADD", "z", "NX", "1"), "syntax error"),
        (("ZADD", "z", "abc", "a"), "value is not a valid float"),
        (("ZINCRBY", "z", "abc", "a"), "value is not a valid float"),
        (
            ("ZRANGE", "z", "0", "1", "LIMIT", "0", "1"),
            "syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX",
        ),
        (("ZRANGE", "z", "a", "b", "BYSCORE"), "min or max is not a float"),
        (("ZRANGE", "z", "a", "b", "BYLEX"), "min or max not valid string range item"),
        (
            ("ZRANGE", "z", "-", "+", "BYLEX", "WITHSCORES"),
            "syntax error, WITHSCORES not supported in combination with BYLEX",
        ),
        (("ZRANGE", "z", "x", "1"), "value is not an integer or out of range"),
        (("ZRANGE", "z", "0", "1", "BOGUS"), "syntax error"),
        (("ZREVRANGE", "z", "0", "1", "REV"), "syntax error"),
    ],
)
def test_zset_commands_refuse_as_redis_does(
    r: Session, command: tuple[str, ...], message: str
) -> None:
    assert r.error(*command) == message


def test_zadd_options_and_zincrby(r: Session) -> None:
    r("ZADD", "z", "5", "a")
    assert r("ZADD", "z", "NX", "9", "a", "1", "b") == Integer(value=1)
    assert r("ZSCORE", "z", "a") == Double(value=5.0)
    assert r("ZADD", "z", "XX", "7", "a", "1", "c") == Integer(value=0)
    assert r("ZSCORE", "z", "a") == Double(value=7.0)
    assert r("ZSCORE", "z", "c") == NIL
    assert r("ZADD", "z", "GT", "CH", "6", "a", "8", "b") == Integer(value=1)
    assert r("ZADD", "z", "LT", "CH", "6", "a") == Integer(value=1)
    assert r("ZADD", "z", "INCR", "2.5", "a") == Double(value=8.5)
    assert r("ZADD", "z", "INCR", "NX", "1", "a") == NIL
    assert r("ZADD", "z", "INCR", "GT", "-1", "a") == NIL
    assert r("ZADD", "nope", "XX", "1", "a") == Integer(value=0)
    assert r("ZADD", "nope", "XX", "INCR", "1", "a") == NIL
    assert r("EXISTS", "nope") == Integer(value=0)
    assert r("ZINCRBY", "z", "1", "new") == Double(value=1.0)
    assert r("ZINCRBY", "z", "-0.5", "new") == Double(value=0.5)
    r("ZADD", "z", "inf", "top")
    assert r.error("ZINCRBY", "z", "-inf", "top") == "resulting score is not a number (NaN)"


def test_zrem_counts_and_deletes_an_emptied_zset(r: Session) -> None:
    r("ZADD", "z", "1", "a", "2", "b")
    assert r("ZREM", "z", "a", "zz") == Integer(value=1)
    assert r("ZREM", "z", "b") == Integer(value=1)
    assert r("EXISTS", "z") == Integer(value=0)


def test_zset_encoding_follows_the_thresholds(r: Session) -> None:
    r("ZADD", "small", "123", "foobar")
    assert r("OBJECT", "ENCODING", "small") == Bulk(b"listpack")
    r("ZADD", "long", "1", "m" * 65)
    assert r("OBJECT", "ENCODING", "long") == Bulk(b"skiplist")
    r.server.encoding_limits = EncodingLimits(zset_max_entries=0)
    r("ZADD", "none", "1", "a")
    assert r("OBJECT", "ENCODING", "none") == Bulk(b"skiplist")
    r("COPY", "none", "copied")
    assert r("OBJECT", "ENCODING", "copied") == Bulk(b"skiplist")


@pytest.mark.parametrize(
    "command",
    [
        ("GET", "k"),
        ("LPUSH", "k", "x"),
        ("HSET", "k", "f", "v"),
        ("HGET", "k", "f"),
        ("ZADD", "k", "1", "m"),
        ("ZSCORE", "k", "m"),
        ("ZRANGE", "k", "0", "-1"),
    ],
)
def test_a_command_on_the_wrong_kind_is_wrongtype(r: Session, command: tuple[str, ...]) -> None:
    kind = "HSET" if command[0].startswith("Z") else "ZADD"
    r(kind, "k", *(("f", "v") if kind == "HSET" else ("1", "m")))
    assert r.error(*command) == WRONG_TYPE


def test_copy_rename_and_move_keep_the_kind(r: Session) -> None:
    r("HSET", "h", "a", "1")
    r("ZADD", "z", "1", "a")
    assert r("COPY", "h", "h2") == Integer(value=1)
    assert r("RENAME", "z", "z2") == OK
    assert r("MOVE", "z2", "3") == Integer(value=1)
    r("HSET", "h", "b", "2")  # the copy is independent
    assert r("HGETALL", "h2") == Map(pairs=[(Bulk(b"a"), Bulk(b"1"))])
    r("SELECT", "3")
    assert r("TYPE", "z2") == SimpleString(text="zset")
    assert r("ZSCORE", "z2", "a") == Double(value=1.0)


def test_config_sets_the_encoding_thresholds_by_either_name() -> None:
    config = CommandConfig()
    assert config.encoding_limits == EncodingLimits()
    changed = changed_config(
        config, [("zset-max-ziplist-entries", "0"), ("hash-max-listpack-value", "10")]
    )
    assert changed.encoding_limits == EncodingLimits(zset_max_entries=0, hash_max_value=10)
    shown = dict(config_pairs(changed))
    assert shown["zset-max-listpack-entries"] == shown["zset-max-ziplist-entries"] == "0"
    assert shown["hash-max-ziplist-value"] == "10"
    with pytest.raises(ConfigError, match=r"^setting 'zset_max_listpack_entries' must be"):
        changed_config(config, [("zset-max-listpack-entries", "-1")])
