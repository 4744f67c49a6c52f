"""Tests for the pure parts of postoffice.command.keyspace: addresses, cursors, globs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postoffice.command.errors import CommandError
from postoffice.command.keyspace import (
    MAX_MATCH_STEPS,
    Answer,
    Cursors,
    PageMaker,
    cmd_scan,
    glob_matcher,
    literal_prefix,
)
from postoffice.command.remote import parse_address
from postoffice.core.resp import Array, Bulk, Glob, PatternTooLongError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7400", ("127.0.0.1", 7400)),
        ("localhost:1", ("localhost", 1)),
        ("[::1]:7400", ("::1", 7400)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["7400", ":7400", "host:", "host:0", "host:65536", "host:x"])
def test_parse_address_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        parse_address(text)


class TestCursors:
    def test_zero_starts_and_none_ends(self) -> None:
        cursors = Cursors()
        assert cursors.resolve(b"0") is None
        assert cursors.issue(None) == b"0"
        assert len(cursors) == 0

    def test_a_cursor_stands_for_its_start_key(self) -> None:
        cursors = Cursors()
        first = cursors.issue(b"user:\x00")
        second = cursors.issue(b"\xff" * 1025)
        assert first != second
        assert first.isdigit()
        assert int(second) < 2**64
        assert cursors.resolve(first) == b"user:\x00"
        assert cursors.resolve(second) == b"\xff" * 1025

    def test_oldest_cursors_are_forgotten_with_a_clear_error(self) -> None:
        cursors = Cursors(capacity=3)
        issued = [cursors.issue(bytes([i])) for i in range(5)]
        assert len(cursors) == 3
        with pytest.raises(CommandError, match="expired cursor"):
            cursors.resolve(issued[0])
        assert cursors.resolve(issued[4]) == b"\x04"

    @pytest.mark.parametrize("raw", [b"-1", b"abc", b"1" * 21, b"", b"99"])
    def test_garbage_cursors_are_refused(self, raw: bytes) -> None:
        with pytest.raises(CommandError, match="invalid"):
            Cursors().resolve(raw)

    @given(st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=20))
    def test_round_trip(self, starts: list[bytes]) -> None:
        cursors = Cursors()
        for start, cursor in [(s, cursors.issue(s)) for s in starts]:
            assert cursors.resolve(cursor) == start


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [(b"user:*", b"user:"), (b"*", b""), (b"a?c", b"a"), (b"x[ab]", b"x"), (b"a\\*b", b"a")],
)
def test_literal_prefix(pattern: bytes, prefix: bytes) -> None:
    assert literal_prefix(pattern) == prefix


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        (b"user:*", b"user:1", True),
        (b"user:*", b"users", False),
        (b"h?llo", b"hello", True),
        (b"h?llo", b"hllo", False),
        (b"h[ae]llo", b"hallo", True),
        (b"h[ae]llo", b"hillo", False),
        (b"h[^e]llo", b"hallo", True),
        (b"h[^e]llo", b"hello", False),
        (b"h[a-b]llo", b"hbllo", True),
        (b"a\\*b", b"a*b", True),
        (b"a\\*b", b"axb", False),
        (b"*", b"\x00\xff", True),
    ],
)
def test_glob_matcher_follows_redis_globs(pattern: bytes, key: bytes, matches: bool) -> None:
    assert glob_matcher(pattern)(key) is matches


class PagedKeyspace:
    """A keyspace whose SCAN hands its keys to the page maker: what cmd_scan does with them."""

    def __init__(self, keys: list[bytes]) -> None:
        self.keys = keys
        self.cursors = Cursors()

    def scan(
        self,
        prefix: bytes | None,
        start: bytes | None,
        limit: int,
        page: PageMaker,
        db: int = 0,
        *,
        kind: int | None = None,
    ) -> Answer:
        return page(self.keys[:limit], None)


class Database0:
    db = 0


class KeyspaceHolder:
    def __init__(self, keyspace: PagedKeyspace, max_reply_bytes: int = 64 << 20) -> None:
        self.keyspace = keyspace
        self.max_reply_bytes = max_reply_bytes


def scan(
    keyspace: PagedKeyspace, *args: bytes, max_reply_bytes: int = 64 << 20
) -> tuple[bytes, list[bytes]]:
    """SCAN's reply from `keyspace`: the next cursor's start key (b"" for 0), and the keys."""
    holder = KeyspaceHolder(keyspace, max_reply_bytes)
    reply = cmd_scan(holder, Database0(), [b"SCAN", *args])  # type: ignore[arg-type]  # a fake keyspace
    assert isinstance(reply, Array)
    assert reply.items is not None
    cursor, keys = reply.items
    assert isinstance(cursor, Bulk)
    assert isinstance(keys, Array)
    assert cursor.data is not None
    start = keyspace.cursors.resolve(bytes(cursor.data))
    return start or b"", [
        bytes(key.data) for key in keys.items or () if isinstance(key, Bulk) and key.data
    ]


def test_scan_refuses_a_pattern_over_the_limit() -> None:
    with pytest.raises(PatternTooLongError, match=r"^pattern of 4194304 bytes exceeds limit 2048$"):
        scan(PagedKeyspace([b"k"]), b"0", b"MATCH", b"*" * (4 << 20))


def test_scan_stops_matching_where_the_work_bound_is_reached() -> None:
    """A costly pattern examines only as many keys as MAX_MATCH_STEPS allows; the cursor
    resumes at the first key not examined, so the iteration still sees every key."""
    keys = [b"a" * 1020 + b"%04d" % i for i in range(100)]
    pattern = b"*" + b"[ab]" * 500 + b"c*"
    per_key = Glob.compile(pattern).cost(len(keys[0]))
    examined = MAX_MATCH_STEPS // per_key
    assert 0 < examined < 100
    start, shown = scan(PagedKeyspace(keys), b"0", b"MATCH", pattern, b"COUNT", b"100")
    assert shown == []
    assert start == keys[examined]


def test_scan_of_cheap_patterns_examines_the_whole_page() -> None:
    keys = [b"user:%05d:name" % i for i in range(10_000)]
    start, shown = scan(PagedKeyspace(keys), b"0", b"MATCH", b"*:0000?:*", b"COUNT", b"10000")
    assert start == b""
    assert shown == keys[:10]


def test_scan_page_ends_before_the_reply_limit() -> None:
    """A page whose keys would pass max-reply-bytes ends early; its cursor resumes at the
    first key left out."""
    keys = [b"k%04d" % i + b"x" * 1000 for i in range(1000)]
    start, shown = scan(PagedKeyspace(keys), b"0", b"COUNT", b"1000", max_reply_bytes=65536)
    assert 0 < len(shown) < 1000
    assert sum(len(k) + 16 for k in shown) <= 65536
    assert start == keys[len(shown)]
