"""Redis globs (postoffice.core.resp.globs): Redis's rules, linear cost, the length limit."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postoffice.core.resp import MAX_PATTERN_BYTES, Glob, PatternTooLongError


def redis_match(pattern: bytes, subject: bytes) -> bool:
    """Redis's own recursive matcher (util.c stringmatchlen), transcribed as the oracle:
    exponential at worst, fine for the short inputs it is given here."""
    p = s = 0
    while p < len(pattern) and s <= len(subject):
        c = pattern[p]
        if c == ord("*"):
            while p + 1 < len(pattern) and pattern[p + 1] == ord("*"):
                p += 1
            if p + 1 == len(pattern):
                return True
            return any(
                redis_match(pattern[p + 1 :], subject[i:]) for i in range(s, len(subject) + 1)
            )
        if s == len(subject):
            return False
        if c == ord("?"):
            s += 1
        elif c == ord("["):
            p += 1
            negate = p < len(pattern) and pattern[p] == ord("^")
            if negate:
                p += 1
            hit = False
            while p < len(pattern) and pattern[p] != ord("]"):
                if pattern[p] == ord("\\") and p + 1 < len(pattern):
                    p += 1
                    hit = hit or pattern[p] == subject[s]
                elif p + 2 < len(pattern) and pattern[p + 1] == ord("-"):
                    low, high = sorted((pattern[p], pattern[p + 2]))
                    hit = hit or low <= subject[s] <= high
                    p += 2
                else:
                    hit = hit or pattern[p] == subject[s]
                p += 1
            p = min(p, len(pattern) - 1)  # an unterminated class: Redis steps back onto its end
            if hit == negate:
                return False
            s += 1
        else:
            if c == ord("\\") and p + 1 < len(pattern):
                p += 1
            if pattern[p] != subject[s]:
                return False
            s += 1
        p += 1
    while p < len(pattern) and pattern[p] == ord("*"):
        p += 1
    return p == len(pattern) and s == len(subject)


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        (b"", b"", True),
        (b"", b"a", False),
        (b"*", b"", True),
        (b"a*b*c", b"aXbYc", True),
        (b"a*b*c", b"aXcYb", False),
        (b"*ab*ab", b"abab", True),
        (b"*ab*ab", b"abxab", True),
        (b"*?", b"", False),
        (b"[]a]", b"]", False),  # "]" first closes an empty class: it matches nothing
        (b"[^]", b"x", True),
        (b"[z-a]", b"m", True),  # a range either way round
        (b"[a\\]]", b"]", True),
        (b"[abc", b"b", True),  # an unterminated class runs to the end
        (b"a\\", b"a\\", True),  # a lone backslash at the end is itself
        (b"\\?", b"?", True),
        (b"\\?", b"x", False),
        (b"h[^e]llo", b"h\nllo", True),
        (b"*\x00*", b"a\x00b", True),
    ],
)
def test_follows_redis_rules(pattern: bytes, subject: bytes, expected: bool) -> None:
    assert redis_match(pattern, subject) is expected
    assert Glob.compile(pattern).matches(subject) is expected


_alphabet = st.sampled_from(list(b"ab*?[]^-\\"))
_patterns = st.lists(_alphabet, max_size=10).map(bytes)
_subjects = st.lists(st.sampled_from(list(b"ab]^-\\*?[")), max_size=10).map(bytes)


@given(_patterns, _subjects)
@settings(max_examples=2000)
def test_matches_as_redis_does(pattern: bytes, subject: bytes) -> None:
    assert Glob.compile(pattern).matches(subject) is redis_match(pattern, subject)


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [(b"user:*", b"user:"), (b"*", b""), (b"a?c", b"a"), (b"x[ab]", b"x"), (b"a\\*b", b"a")],
)
def test_prefix_is_the_literal_start(pattern: bytes, prefix: bytes) -> None:
    assert Glob.compile(pattern).prefix == prefix


def test_a_pattern_over_the_limit_is_refused() -> None:
    Glob.compile(b"*" * MAX_PATTERN_BYTES)
    with pytest.raises(PatternTooLongError, match=r"^pattern of 4194304 bytes exceeds limit 2048$"):
        Glob.compile(b"*" * (4 << 20))
    with pytest.raises(PatternTooLongError, match=r"^pattern of 9 bytes exceeds limit 8$"):
        Glob.compile(b"*" * 9, limit=8)


PATHOLOGICAL = [
    b"*a" * 1000 + b"b",
    b"*?" * 1000 + b"b",
    b"*" + b"[ab]" * 500 + b"c*",
    b"[" * MAX_PATTERN_BYTES,
    b"a*" * 1000 + b"*b",
]


@pytest.mark.parametrize("pattern", PATHOLOGICAL, ids=lambda p: repr(p[:12]))
def test_pathological_patterns_cost_what_cost_says(pattern: bytes) -> None:
    """Compiling and matching a longest key take a few ms, and the bound `cost` gives
    covers the steps (one step is a few ns of the regex engine)."""
    subject = b"a" * 1024
    started = time.thread_time()
    glob = Glob.compile(pattern)
    glob.matches(subject)
    elapsed = time.thread_time() - started
    assert elapsed < 0.05 + glob.cost(len(subject)) * 50e-9
    assert glob.cost(len(subject)) <= 1024 * MAX_PATTERN_BYTES + 2 * MAX_PATTERN_BYTES
