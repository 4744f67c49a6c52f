"""Hypothesis strategies shared by the test modules."""

from __future__ import annotations

from hypothesis import strategies as st

#: Command arguments: arbitrary bytes, short enough to keep examples fast.
arg_bytes = st.binary(min_size=0, max_size=64)

#: A whole command: a name and a few arguments.
command_args = st.lists(arg_bytes, min_size=1, max_size=8)

#: Inline-safe words: printable, no whitespace (inline commands split on whitespace), no
#: quote character (a quote starts Redis's quoting).
inline_word = (
    st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="\"'"),
        min_size=1,
        max_size=16,
    )
    .map(lambda s: s.lstrip("*") or "x")  # a line starting with `*` is a RESP array
    .map(str.encode)
)


def cut_points(data: bytes) -> list[tuple[bytes, bytes]]:
    """Every way to split `data` in two."""
    return [(data[:i], data[i:]) for i in range(len(data) + 1)]
