"""Redis glob patterns (SCAN MATCH, CONFIG GET), matched in time linear in the subject.

Pure: bytes in, a Glob out; core layer, for the command server and every control port.
"""

# Design
# ------
# A glob is split at its stars into segments. Every element of a segment (a byte, `?`, or a
# `[...]` class) matches exactly one byte, so a segment has a fixed length and compiles to a
# regular expression without quantifiers, which cannot backtrack past its own length. The
# first segment must match at the start, the last at the end, and each middle one is found
# at its leftmost place after the one before: for fixed-length segments the leftmost place
# is never worse than a later one, so no star is ever retried (the naive recursive matcher,
# and translating the whole glob to one regex, retry them: exponential or quadratic).
#
# What a match costs is known before it runs (`Glob.cost`): the two anchored segments
# their length, a middle segment of literal bytes one pass over the subject (the regex
# engine's fast search), any other middle segment at most its length per byte of the
# subject. Callers bound the work of one command with it.

from __future__ import annotations

import re
from typing import Final, final

from postoffice.core.errors import PatternTooLongError

#: The longest pattern SCAN MATCH takes: a key is at most 1024 bytes, and each may need
#: its escape.
MAX_PATTERN_BYTES: Final = 2048
#: The longest CONFIG GET pattern: setting names are under 32 bytes, so this leaves room
#: to spare.
MAX_CONFIG_PATTERN_BYTES: Final = 256


_STAR: Final = 0x2A
_QUESTION: Final = 0x3F
_OPEN: Final = 0x5B
_CLOSE: Final = 0x5D
_BACKSLASH: Final = 0x5C
_CARET: Final = 0x5E
_DASH: Final = 0x2D


def _byte(value: int) -> bytes:
    return b"\\x%02x" % value


def _class(pattern: bytes, i: int) -> tuple[bytes, int]:
    """The regex of the class opening at `pattern[i]` (its `[`), and the index after it.

    Redis's rules: `^` first negates, `\\x` is x itself, `a-z` a range (either way round),
    `]` first closes an empty class, and an unterminated class runs to the pattern's end.
    """
    i += 1
    negate = i < len(pattern) and pattern[i] == _CARET
    if negate:
        i += 1
    items: list[bytes] = []
    while i < len(pattern) and pattern[i] != _CLOSE:
        if pattern[i] == _BACKSLASH and i + 1 < len(pattern):
            items.append(_byte(pattern[i + 1]))
            i += 2
        elif i + 2 < len(pattern) and pattern[i + 1] == _DASH:
            low, high = sorted((pattern[i], pattern[i + 2]))
            items.append(_byte(low) + b"-" + _byte(high))
            i += 3
        else:
            items.append(_byte(pattern[i]))
            i += 1
    i += 1  # past the "]" (or past the end)
    if not items:
        return (b"." if negate else b"(?!)"), i
    return b"[" + (b"^" if negate else b"") + b"".join(items) + b"]", i


@final
class _Segment:
    """A run of single-byte elements between stars."""

    __slots__ = ("length", "literal", "regex")

    def __init__(self, parts: list[bytes], literal: bool) -> None:
        self.length = len(parts)
        self.literal = literal
        self.regex = re.compile(b"".join(parts), re.DOTALL)


@final
class Glob:
    """A compiled Redis glob: `*`, `?`, `[abc]`, `[^abc]`, `[a-z]`, and `\\x` for x itself.

    Build one with `Glob.compile`; `matches(subject)` runs in time linear in the subject
    (for a pattern of bounded length), `cost(length)` bounds that work beforehand.
    """

    __slots__ = ("_head", "_middle", "_middle_cost", "_tail", "pattern", "prefix")

    def __init__(self, pattern: bytes) -> None:
        self.pattern = pattern
        segments: list[_Segment] = []
        parts: list[bytes] = []
        literal = True
        stars = 0
        prefix: bytes | None = None
        i = 0
        while i < len(pattern):
            byte = pattern[i]
            if byte == _STAR:
                segments.append(_Segment(parts, literal))
                parts, literal = [], True
                stars += 1
                i += 1
                continue
            if prefix is None and byte in (_QUESTION, _OPEN, _BACKSLASH):
                prefix = pattern[:i]
            if byte == _QUESTION:
                parts.append(b".")
                literal = False
                i += 1
            elif byte == _OPEN:
                regex, i = _class(pattern, i)
                parts.append(regex)
                literal = False
            elif byte == _BACKSLASH and i + 1 < len(pattern):
                parts.append(re.escape(pattern[i + 1 : i + 2]))
                i += 2
            else:
                parts.append(re.escape(pattern[i : i + 1]))
                i += 1
        segments.append(_Segment(parts, literal))
        if prefix is None:
            cut = pattern.find(b"*")
            prefix = pattern if cut < 0 else pattern[:cut]
        #: The pattern's literal start: every subject it matches begins with it.
        self.prefix = prefix
        self._head = segments[0]
        self._tail = segments[-1] if stars else None
        self._middle = [s for s in segments[1:-1] if s.length]  # "**" is "*"
        self._middle_cost = sum(1 if s.literal else s.length for s in self._middle)

    @classmethod
    def compile(cls, pattern: bytes, *, limit: int = MAX_PATTERN_BYTES) -> Glob:
        """The glob of `pattern`. Raises PatternTooLongError when it is longer than `limit`."""
        if len(pattern) > limit:
            raise PatternTooLongError(f"pattern of {len(pattern)} bytes exceeds limit {limit}")
        return cls(pattern)

    def __repr__(self) -> str:
        return f"<Glob {self.pattern[:40]!r} segments={len(self._middle) + 2}>"

    def cost(self, length: int) -> int:
        """An upper bound of the steps `matches` takes on a subject of `length` bytes."""
        tail = self._tail.length if self._tail is not None else 0
        return 1 + self._head.length + tail + length * self._middle_cost

    def matches(self, subject: bytes) -> bool:
        """Whether `subject` matches the whole pattern."""
        head, tail = self._head, self._tail
        if tail is None:
            return len(subject) == head.length and head.regex.match(subject) is not None
        end = len(subject) - tail.length
        if end < head.length or head.regex.match(subject) is None:
            return False
        if tail.regex.match(subject, end) is None:
            return False
        pos = head.length
        for segment in self._middle:
            found = segment.regex.search(subject, pos, end)
            if found is None:
                return False
            pos = found.end()
        return True


__all__ = ["MAX_CONFIG_PATTERN_BYTES", "MAX_PATTERN_BYTES", "Glob"]
