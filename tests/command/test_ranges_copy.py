"""GETEX, MSETNX, GETRANGE/SETRANGE/SUBSTR, GETBIT/SETBIT, LCS, COPY, OBJECT ENCODING and a
large MSET on a real embedded engine with a fake wall clock: Redis's replies and errors."""

from __future__ import annotations

import pytest

from postoffice.command.ranges import MAX_LCS_CELLS, substring
from postoffice.core.resp import NIL, OK, Array, Bulk, Integer, Reply, SimpleString
from postoffice.store import MAX_BATCH_OPS, MAX_VALUE_BYTES
from tests.command.test_strings_expiry import Clock, Session, clock, keyspace, r

__all__ = ["clock", "keyspace", "r"]  # the fixtures, shared


def ints(*values: int) -> Reply:
    return Array(items=tuple(Integer(value=v) for v in values))


class TestGetex:
    def test_returns_the_value_and_sets_each_kind_of_expiry(self, r: Session, clock: Clock) -> None:
        r("SET", "k", "v")
        assert r("GETEX", "k", "EX", 10) == Bulk(b"v")
        assert r("PTTL", "k") == Integer(value=10_000)
        assert r("GETEX", "k", "px", 500) == Bulk(b"v")
        assert r("PTTL", "k") == Integer(value=500)
        assert r("GETEX", "k", "EXAT", clock.ms // 1000 + 20) == Bulk(b"v")
        assert r("TTL", "k") == Integer(value=20)
        assert r("GETEX", "k", "PXAT", clock.ms + 7) == Bulk(b"v")
        assert r("PTTL", "k") == Integer(value=7)

    def test_persist_removes_the_expiry_and_no_option_keeps_it(self, r: Session) -> None:
        r("SET", "k", "v", "EX", 10)
        assert r("GETEX", "k") == Bulk(b"v")
        assert r("TTL", "k") == Integer(value=10)
        assert r("GETEX", "k", "PERSIST") == Bulk(b"v")
        assert r("TTL", "k") == Integer(value=-1)

    def test_a_deadline_already_past_deletes_the_key(self, r: Session, clock: Clock) -> None:
        r("SET", "k", "v")
        assert r("GETEX", "k", "PXAT", clock.ms - 1) == Bulk(b"v")
        assert r("GET", "k") == NIL

    def test_missing_key_is_nil(self, r: Session) -> None:
        assert r("GETEX", "nope", "EX", 10) == NIL
        assert r("EXISTS", "nope") == Integer(value=0)

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (("bogus",), "syntax error"),
            (("EX",), "syntax error"),
            (("EX", 1, "PX", 1), "syntax error"),
            (("PERSIST", "EX", 1), "syntax error"),
            (("EX", 0), "invalid expire time in 'getex' command"),
            (("EX", 10_000_000_000_000_000), "invalid expire time in 'getex' command"),
            (("EX", "ten"), "value is not an integer or out of range"),
        ],
    )
    def test_bad_options_are_refused_before_anything_changes(
        self, r: Session, args: tuple[object, ...], message: str
    ) -> None:
        r("SET", "k", "v")
        assert r.error("GETEX", "k", *args) == message  # type: ignore[arg-type]
        assert r("TTL", "k") == Integer(value=-1)


class TestMsetnx:
    def test_sets_all_when_none_exists(self, r: Session) -> None:
        assert r("MSETNX", "a", "1", "b", "2", "a", "3") == Integer(value=1)
        assert r("MGET", "a", "b") == Array(items=[Bulk(b"3"), Bulk(b"2")])

    def test_sets_none_when_one_exists(self, r: Session) -> None:
        r("SET", "b", "old")
        assert r("MSETNX", "a", "1", "b", "2") == Integer(value=0)
        assert r("MGET", "a", "b") == Array(items=[NIL, Bulk(b"old")])

    def test_odd_arguments_are_refused(self, r: Session) -> None:
        assert r.error("MSETNX", "a", "1", "b") == "wrong number of arguments for 'msetnx' command"


class TestRanges:
    @pytest.mark.parametrize(
        ("start", "end", "expected"),
        [
            (0, 3, b"Hell"),
            (0, -1, b"Hello World"),
            (-4, -1, b"orld"),
            (5, 3, b""),
            (5, 5000, b" World"),
            (-5000, 10000, b"Hello World"),
            (-1, -5, b""),
        ],
    )
    def test_getrange_reads_as_redis_does(self, start: int, end: int, expected: bytes) -> None:
        assert substring(b"Hello World", start, end) == expected

    def test_getrange_and_substr_of_a_key(self, r: Session) -> None:
        assert r("GETRANGE", "nope", 0, -1) == Bulk(b"")
        r("SET", "k", "1234")
        assert r("GETRANGE", "k", -3, -1) == Bulk(b"234")
        assert r("SUBSTR", "k", 0, 1) == Bulk(b"12")
        assert r("GETRANGE", "k", 0, 4294967297) == Bulk(b"1234")
        assert r.error("GETRANGE", "k", "a", 1) == "value is not an integer or out of range"

    def test_setrange_pads_with_nul_and_keeps_the_expiry(self, r: Session) -> None:
        assert r("SETRANGE", "k", 1, "foo") == Integer(value=4)
        assert r("GET", "k") == Bulk(b"\0foo")
        r("SET", "s", "foo", "EX", 100)
        assert r("SETRANGE", "s", 4, "bar") == Integer(value=7)
        assert r("GET", "s") == Bulk(b"foo\0bar")
        assert r("SETRANGE", "s", 0, "b") == Integer(value=7)
        assert r("GET", "s") == Bulk(b"boo\0bar")
        assert r("TTL", "s") == Integer(value=100)

    def test_setrange_of_nothing_creates_nothing(self, r: Session) -> None:
        assert r("SETRANGE", "k", 0, "") == Integer(value=0)
        assert r("EXISTS", "k") == Integer(value=0)
        r("SET", "k", "foo")
        assert r("SETRANGE", "k", 10, "") == Integer(value=3)
        assert r("GET", "k") == Bulk(b"foo")

    def test_setrange_refuses_a_negative_or_too_large_offset(self, r: Session) -> None:
        assert r.error("SETRANGE", "k", -1, "x") == "offset is out of range"
        too_big = "string exceeds maximum allowed size (proto-max-bulk-len)"
        assert r.error("SETRANGE", "k", MAX_VALUE_BYTES, "x") == too_big
        assert r.error("SETRANGE", "k", 9223372036854775807, "x") == too_big
        assert r("EXISTS", "k") == Integer(value=0)


class TestBits:
    def test_setbit_returns_the_old_bit_and_grows_the_value(self, r: Session) -> None:
        assert r("SETBIT", "k", 1, 1) == Integer(value=0)
        assert r("GET", "k") == Bulk(bytes([0b01000000]))
        r("SET", "k", "@")
        assert r("SETBIT", "k", 2, 1) == Integer(value=0)
        assert r("SETBIT", "k", 1, 0) == Integer(value=1)
        assert r("GET", "k") == Bulk(bytes([0b00100000]))
        assert r("SETBIT", "k", 17, 1) == Integer(value=0)
        assert r("GET", "k") == Bulk(bytes([0b00100000, 0, 0b01000000]))

    def test_getbit_reads_zero_past_the_end(self, r: Session) -> None:
        assert r("GETBIT", "nope", 0) == Integer(value=0)
        r("SET", "k", "1")  # 0b00110001
        bits = [r("GETBIT", "k", i) for i in range(10)]
        assert bits == [Integer(value=b) for b in (0, 0, 1, 1, 0, 0, 0, 1, 0, 0)]

    @pytest.mark.parametrize(
        ("offset", "bit", "message"),
        [
            (-1, 1, "bit offset is not an integer or out of range"),
            (MAX_VALUE_BYTES * 8, 1, "bit offset is not an integer or out of range"),
            ("x", 1, "bit offset is not an integer or out of range"),
            (0, 2, "bit is not an integer or out of range"),
            (0, "on", "bit is not an integer or out of range"),
        ],
    )
    def test_setbit_refuses_bad_arguments(
        self, r: Session, offset: object, bit: object, message: str
    ) -> None:
        assert r.error("SETBIT", "k", offset, bit) == message  # type: ignore[arg-type]


RNA1 = b"CACCTTCCCAGGTAACAAACCAACCAACTTTCGATCTCTTGTAGATCTGTTCTCTAAACGAACTTTAAAATCTGTGTGG"
RNA2 = b"ATTAAAGGTTTATACCTTCCCAGGTAACAAACCAACCAACTTTCGATCTCTTGTAGATCTGTTCTCTAAACGAACTTTAAAATCT"


class TestLcs:
    def test_the_subsequence_and_its_length(self, r: Session) -> None:
        r("MSET", "a", "ohmytext", "b", "mynewtext")
        assert r("LCS", "a", "b") == Bulk(b"mytext")
        assert r("LCS", "a", "b", "LEN") == Integer(value=6)
        assert r("LCS", "a", "nope") == Bulk(b"")

    def test_idx_lists_the_matches_from_the_end(self, r: Session) -> None:
        r("MSET", "a", "ohmytext", "b", "mynewtext")
        matches = Array(
            items=(
                Array(items=(ints(4, 7), ints(5, 8))),
                Array(items=(ints(2, 3), ints(0, 1))),
            )
        )
        assert r("LCS", "a", "b", "IDX") == Array(
            items=(Bulk(b"matches"), matches, Bulk(b"len"), Integer(value=6))
        )
        only_long = Array(items=(Array(items=(ints(4, 7), ints(5, 8), Integer(value=4))),))
        assert r("LCS", "a", "b", "IDX", "MINMATCHLEN", 4, "WITHMATCHLEN") == Array(
            items=(Bulk(b"matches"), only_long, Bulk(b"len"), Integer(value=6))
        )

    def test_a_long_common_run(self, r: Session) -> None:
        r("MSET", "a", RNA1, "b", RNA2)
        reply = r("LCS", "a", "b")
        assert isinstance(reply, Bulk)
        assert bytes(reply.data or b"").startswith(b"ACCTTCCCAGG")

    def test_errors(self, r: Session) -> None:
        assert r.error("LCS", "a", "b", "LEN", "IDX") == (
            "If you want both the length and indexes, please just use IDX."
        )
        assert r.error("LCS", "a", "b", "BOGUS") == "syntax error"
        r("MSET", "a", "x" * 2000, "b", "y" * 2001)
        assert r.error("LCS", "a", "b") == (
            f"LCS of 2000 and 2001 bytes needs 4006002 cells, over the limit of {MAX_LCS_CELLS}"
        )


class TestCopy:
    def test_copies_the_value_and_its_expiry_within_and_across_databases(self, r: Session) -> None:
        r("SET", "k", "v", "EX", 100)
        assert r("COPY", "k", "n") == Integer(value=1)
        assert r("GET", "n") == Bulk(b"v")
        assert r("TTL", "n") == Integer(value=100)
        assert r("COPY", "k", "n", "DB", 10) == Integer(value=1)
        r("SELECT", 10)
        assert r("GET", "n") == Bulk(b"v")
        r("SET", "n", "changed")
        r("SELECT", 0)
        assert r("GET", "n") == Bulk(b"v")

    def test_an_existing_destination_is_kept_unless_replace(self, r: Session) -> None:
        r("MSET", "k", "new", "n", "old")
        assert r("COPY", "k", "n") == Integer(value=0)
        assert r("GET", "n") == Bulk(b"old")
        assert r("COPY", "k", "n", "REPLACE") == Integer(value=1)
        assert r("GET", "n") == Bulk(b"new")
        assert r("TTL", "n") == Integer(value=-1)
        assert r("COPY", "nope", "n", "REPLACE") == Integer(value=0)

    def test_errors(self, r: Session) -> None:
        assert r.error("COPY", "k", "k") == "source and destination objects are the same"
        assert r.error("COPY", "k", "n", "DB", "x") == "value is not an integer or out of range"
        assert r.error("COPY", "k", "n", "DB", 16) == "DB index is out of range"
        assert r.error("COPY", "k", "n", "BOGUS") == "syntax error"


def test_object_encoding_names_what_redis_would(r: Session) -> None:
    r("MSET", "i", "-555", "e", "x" * 44, "w", "x" * 45, "z", "007")
    assert [r("OBJECT", "ENCODING", k) for k in ("i", "e", "w", "z", "nope")] == [
        Bulk(b"int"),
        Bulk(b"embstr"),
        Bulk(b"raw"),
        Bulk(b"embstr"),
        NIL,
    ]
    assert r.error("OBJECT", "FREQ", "i").startswith("unknown subcommand")


def test_mset_of_more_pairs_than_one_store_batch_writes_them_all(r: Session) -> None:
    pairs = [str(x) for i in range(MAX_BATCH_OPS + 1) for x in (f"k{i}", f"v{i}")]
    assert r("MSET", *pairs) == OK
    assert r("DBSIZE") == Integer(value=MAX_BATCH_OPS + 1)
    assert r("GET", f"k{MAX_BATCH_OPS}") == Bulk(f"v{MAX_BATCH_OPS}".encode())


def test_ping_with_more_than_a_message_is_refused(r: Session) -> None:
    assert r.error("PING", "x", "y") == "wrong number of arguments for 'ping' command"


def test_object_refcount_is_one_for_a_key_and_nil_for_none(r: Session) -> None:
    r("SET", "k", "1")
    assert r("OBJECT", "REFCOUNT", "k") == Integer(value=1)
    assert r("OBJECT", "REFCOUNT", "nope") == NIL


def test_an_expire_whose_milliseconds_pass_64_bits_is_refused_as_redis_does(r: Session) -> None:
    r("SET", "k", "v")
    assert r.error("EXPIRE", "k", -9223372036854776) == "invalid expire time in 'expire' command"
    assert r.error("EXPIRE", "k", -9999999999999999) == "invalid expire time in 'expire' command"
    assert r("TTL", "k") == Integer(value=-1)


class TestRawAfterAnInPlaceChange:
    """Redis calls a string changed in place "raw" whatever its bytes; the type tag
    remembers it until a plain write replaces the value."""

    def test_setrange_of_an_integer_reads_raw_and_stays_a_string(self, r: Session) -> None:
        r("SET", "k", "1234")
        assert r("OBJECT", "ENCODING", "k") == Bulk(b"int")
        assert r("SETRANGE", "k", 0, "2") == Integer(value=4)
        assert r("OBJECT", "ENCODING", "k") == Bulk(b"raw")
        assert r("GET", "k") == Bulk(b"2234")
        assert r("MGET", "k") == Array(items=[Bulk(b"2234")])
        assert r("TYPE", "k") == SimpleString(text="string")
        assert r("SCAN", 0, "TYPE", "string") == Array(
            items=(Bulk(b"0"), Array(items=(Bulk(b"k"),)))
        )
        assert r("STRLEN", "k") == Integer(value=4)
        assert r("RENAME", "k", "k2") == OK
        assert r("OBJECT", "ENCODING", "k2") == Bulk(b"raw")
        assert r("INCR", "k2") == Integer(value=2235)
        assert r("OBJECT", "ENCODING", "k2") == Bulk(b"int")

    def test_append_and_setbit_make_raw_and_set_makes_it_plain_again(self, r: Session) -> None:
        r("APPEND", "new", "12")  # a new key is encoded as SET would
        assert r("OBJECT", "ENCODING", "new") == Bulk(b"int")
        r("APPEND", "new", "3")
        assert r("OBJECT", "ENCODING", "new") == Bulk(b"raw")
        r("SETBIT", "bits", 1, 1)
        assert r("OBJECT", "ENCODING", "bits") == Bulk(b"raw")
        r("SET", "bits", "7")
        assert r("OBJECT", "ENCODING", "bits") == Bulk(b"int")
        r("SETRANGE", "k", 0, "")  # writes nothing, so nothing changes
        assert r("EXISTS", "k") == Integer(value=0)
