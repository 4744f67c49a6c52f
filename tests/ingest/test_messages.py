"""Tests for postoffice.ingest.messages: the message values, names, file ids and ranges."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postoffice.ingest.errors import BadNameError, IngestProtocolError
from postoffice.ingest.messages import (
    MAX_CHUNKS,
    Chunk,
    FileId,
    check_name,
    file_id_hex,
    missing_ranges,
    parse_file_id,
    ranges,
)

FID_HEX = "00112233445566778899aabbccddeeff"
FID = FileId(bytes.fromhex(FID_HEX))
DIGEST = bytes(range(16))


def test_chunk_repr_shows_data_length_not_bytes() -> None:
    chunk = Chunk(
        file_id=FID,
        index=1,
        total=2,
        size=34,
        name="hello.txt",
        payload_digest=DIGEST[::-1],
        digest=DIGEST,
        data=bytes(17),
    )
    assert repr(chunk) == (
        f"Chunk(file_id={FID_HEX}, index=1, total=2, size=34, name='hello.txt', "
        f"payload_digest={DIGEST[::-1].hex()[:12]}..., digest={DIGEST.hex()[:12]}..., "
        "data=<17 bytes>)"
    )


# --- names and ids --------------------------------------------------------------------

GOOD_NAMES = [
    "a",
    "report.csv",
    "archive.tar.zst",
    "two words.txt",
    "tr\u00e8s-bien \u6587\u4ef6.log",
    "a.",
    "x" * 255,
    "\u00e9" * 127,  # 254 bytes
    "-rf",
    "file..name",
    "\U0001f4e6.bin",
]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_name_is_returned(name: str) -> None:
    assert check_name(name) == name


HOSTILE_NAMES = [
    ("", r"^name is empty$"),
    ("x" * 256, r"^name of 256 bytes exceeds limit 255$"),
    ("\u00e9" * 128, r"^name of 256 bytes exceeds limit 255$"),
    (".", r"^name '\.' is reserved$"),
    ("..", r"^name '\.\.' is reserved$"),
    ("../../etc/passwd", r"^name '\.\./\.\./etc/passwd' contains path separator '/'$"),
    ("/etc/passwd", r"^name '/etc/passwd' contains path separator '/'$"),
    ("a/b", r"^name 'a/b' contains path separator '/'$"),
    ("..\\boot.ini", r"^name '\.\.\\\\boot\.ini' contains path separator '\\\\'$"),
    ("a\x00b", r"^name 'a\\x00b' contains control character 0x00$"),
    ("a\nb", r"^name 'a\\nb' contains control character 0x0a$"),
    ("a\x1fb", r"^name 'a\\x1fb' contains control character 0x1f$"),
    ("a\x7fb", r"^name 'a\\x7fb' contains control character 0x7f$"),
    ("a\x9bb", r"^name 'a\\x9bb' contains control character 0x9b$"),
    (".bashrc", r"^name '\.bashrc' starts with '\.'$"),
    (".a.b.tmp", r"^name '\.a\.b\.tmp' starts with '\.'$"),
    (" a", r"^name ' a' has leading or trailing whitespace$"),
    ("a ", r"^name 'a ' has leading or trailing whitespace$"),
    ("\u3000a", r"^name '\\u3000a' has leading or trailing whitespace$"),
    ("a\udcff", r"^name 'a\\udcff' is not encodable as utf-8$"),
]


@pytest.mark.parametrize(("name", "message"), HOSTILE_NAMES)
def test_hostile_name_is_refused(name: str, message: str) -> None:
    with pytest.raises(BadNameError, match=message):
        check_name(name)


def test_file_id_hex_round_trip() -> None:
    assert file_id_hex(FID) == FID_HEX
    assert parse_file_id(FID_HEX) == FID
    assert parse_file_id(FID_HEX.upper()) == FID


@pytest.mark.parametrize("text", ["", FID_HEX[:-1], FID_HEX + "0", "g" * 32, " " + FID_HEX[1:]])
def test_bad_file_id_text_is_refused(text: str) -> None:
    with pytest.raises(IngestProtocolError, match=r"^file id '.*' is not 32 hex characters$"):
        parse_file_id(text)


# --- ranges ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("indexes", "expected"),
    [
        ([], ()),
        ([0], ((0, 0),)),
        ([0, 1, 2], ((0, 2),)),
        ([0, 2, 4], ((0, 0), (2, 2), (4, 4))),
        ([5, 3, 4, 9, 3], ((3, 5), (9, 9))),
        (range(10, 20), ((10, 19),)),
        ([7, 1, 2, 8, 3], ((1, 3), (7, 8))),
    ],
)
def test_ranges(indexes: list[int], expected: tuple[tuple[int, int], ...]) -> None:
    assert ranges(indexes) == expected


@pytest.mark.parametrize(
    ("committed", "total", "expected"),
    [
        ([], 0, ()),
        ([], 1, ((0, 0),)),
        ([], 5, ((0, 4),)),
        ([0, 1, 2, 3, 4], 5, ()),
        ([1, 3], 5, ((0, 0), (2, 2), (4, 4))),
        ([0, 4], 5, ((1, 3),)),
        ([2, 2, 0], 4, ((1, 1), (3, 3))),
        ([4, 9], 5, ((0, 3),)),
        ([MAX_CHUNKS - 1], MAX_CHUNKS, ((0, MAX_CHUNKS - 2),)),
    ],
)
def test_missing_ranges(
    committed: list[int], total: int, expected: tuple[tuple[int, int], ...]
) -> None:
    assert missing_ranges(committed, total) == expected


@given(st.sets(st.integers(0, 200)), st.integers(0, 200))
def test_missing_ranges_agree_with_ranges_of_the_complement(
    committed: set[int], total: int
) -> None:
    assert missing_ranges(committed, total) == ranges(set(range(total)) - committed)
