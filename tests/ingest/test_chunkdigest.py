"""Tests for postoffice.ingest.chunkdigest: what the chunk digest covers, bytes only."""

from __future__ import annotations

import pytest
import xxhash

from postoffice.ingest.chunkdigest import (
    CHUNK_FIELDS,
    chunk_fields,
    digest_for,
    new_chunk,
    verify_chunk,
)
from postoffice.ingest.errors import BadNameError, ChecksumError, IngestProtocolError
from postoffice.ingest.messages import Chunk, FileId

FID_HEX = "00112233445566778899aabbccddeeff"
FID = FileId(bytes.fromhex(FID_HEX))
PAYLOAD_DIGEST_HEX = "ffeeddccbbaa99887766554433221100"
PAYLOAD_DIGEST = bytes.fromhex(PAYLOAD_DIGEST_HEX)
# File id, index 1, total 2, size 34, name length 9, payload digest, spelled out by hand.
FIELDS_HEX = f"{FID_HEX} 00000001 00000002 0000000000000022 0009 {PAYLOAD_DIGEST_HEX}"


def test_fields_are_the_50_bytes_the_payload_starts_with() -> None:
    fields, name = chunk_fields(
        file_id=FID, index=1, total=2, size=34, name="hello.txt", payload_digest=PAYLOAD_DIGEST
    )
    assert CHUNK_FIELDS.size == 50
    assert fields == bytes.fromhex(FIELDS_HEX)
    assert name == b"hello.txt"


def test_digest_covers_fields_name_and_data() -> None:
    expected = xxhash.xxh3_128_digest(bytes.fromhex(FIELDS_HEX) + b"hello.txt" + b"data")
    got = digest_for(
        file_id=FID,
        index=1,
        total=2,
        size=34,
        name="hello.txt",
        payload_digest=PAYLOAD_DIGEST,
        data=b"data",
    )
    assert got == expected


def test_new_chunk_verifies_and_any_changed_field_does_not() -> None:
    chunk = new_chunk(
        file_id=FID,
        index=1,
        total=2,
        size=34,
        name="hello.txt",
        payload_digest=PAYLOAD_DIGEST,
        data=b"data",
    )
    verify_chunk(chunk)
    for changed in (
        {"data": b"datb"},
        {"index": 0},
        {"total": 3},
        {"size": 35},
        {"name": "hello.txu"},
        {"file_id": FileId(bytes(16))},
        {"payload_digest": bytes(16)},
    ):
        fields = {
            "file_id": chunk.file_id,
            "index": chunk.index,
            "total": chunk.total,
            "size": chunk.size,
            "name": chunk.name,
            "payload_digest": chunk.payload_digest,
            "data": chunk.data,
            **changed,
        }
        bad = Chunk(digest=chunk.digest, **fields)  # type: ignore[arg-type]  # the dict's values
        with pytest.raises(ChecksumError, match=r"^chunk digest mismatch: header [0-9a-f]{12}"):
            verify_chunk(bad)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"name": "a\udcff"}, BadNameError, r"^name 'a\\udcff' is not encodable as utf-8$"),
        ({"file_id": b"short"}, IngestProtocolError, r"^file id of 5 bytes, expected 16$"),
        ({"index": 2**32}, IngestProtocolError, r"^cannot encode chunk: "),
        ({"size": -1}, IngestProtocolError, r"^cannot encode chunk: "),
        (
            {"payload_digest": bytes(15)},
            IngestProtocolError,
            r"^payload digest of 15 bytes, expected 16$",
        ),
    ],
)
def test_fields_out_of_the_layout_are_refused(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    fields: dict[str, object] = {
        "file_id": FID,
        "index": 0,
        "total": 1,
        "size": 0,
        "name": "a",
        "payload_digest": PAYLOAD_DIGEST,
    }
    with pytest.raises(error, match=message):
        chunk_fields(**{**fields, **kwargs})  # type: ignore[arg-type]  # the dict's values
