"""The chunk digest: XXH3-128 over a CHUNK's fields, name and data; computed and checked.

Ingest layer, pure (no I/O). protocol.py carries it in the CHUNK frame it covers.
"""

from __future__ import annotations

import struct
from typing import Final

import xxhash

from postoffice.ingest.errors import BadNameError, ChecksumError, IngestProtocolError
from postoffice.ingest.messages import DIGEST_BYTES, DIGEST_SHOWN, FILE_ID_BYTES, Chunk, FileId

__all__ = [
    "CHUNK_FIELDS",
    "FRAMED_FIELDS",
    "chunk_digest",
    "chunk_fields",
    "digest_for",
    "new_chunk",
    "verify_chunk",
]

CHUNK_FIELDS: Final = struct.Struct(">16sIIQH16s")
"""What a CHUNK payload starts with and the digest covers first: file id, index, total,
size, name length and payload digest (50 bytes)."""

FRAMED_FIELDS: Final = struct.Struct(">QQ")
"""What a FRAMED CHUNK carries after its digest, and the digest covers next: the content
size (the whole decompressed file) and this chunk's content offset (16 bytes)."""


def chunk_fields(
    *,
    file_id: bytes,
    index: int,
    total: int,
    size: int,
    name: str,
    payload_digest: bytes,
    content_size: int | None = None,
    content_offset: int = 0,
) -> tuple[bytes, bytes]:
    """Return (the fields the digest covers before the name, the UTF-8 name) of a CHUNK:
    the CHUNK_FIELDS bytes, followed for a FRAMED chunk (`content_size` not None) by its
    FRAMED_FIELDS.

    Checks only what the layout can carry. Raises BadNameError for a name UTF-8 cannot
    encode, IngestProtocolError for a wrong-sized file id or payload digest or a field
    out of range.
    """
    try:
        name_bytes = name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadNameError(f"name {name!r} is not encodable as utf-8") from exc
    # struct's "16s" pads or truncates silently; a wrong-sized id must fail instead.
    if len(file_id) != FILE_ID_BYTES:
        raise IngestProtocolError(f"file id of {len(file_id)} bytes, expected {FILE_ID_BYTES}")
    if len(payload_digest) != DIGEST_BYTES:
        raise IngestProtocolError(
            f"payload digest of {len(payload_digest)} bytes, expected {DIGEST_BYTES}"
        )
    try:
        fields = CHUNK_FIELDS.pack(file_id, index, total, size, len(name_bytes), payload_digest)
        if content_size is not None:
            fields += FRAMED_FIELDS.pack(content_size, content_offset)
    except struct.error as exc:
        raise IngestProtocolError(f"cannot encode chunk: {exc}") from exc
    return fields, name_bytes


def chunk_digest(fields: bytes, name: bytes, data: bytes | bytearray | memoryview) -> bytes:
    """XXH3-128 (seed 0, canonical bytes) of a CHUNK payload without its digest field:
    the 50 bytes of file id, index, total, size, name length and payload digest (and a
    FRAMED chunk's 16 bytes of content size and offset), the name, the data."""
    hasher = xxhash.xxh3_128(fields)
    hasher.update(name)
    hasher.update(data)
    return hasher.digest()


def digest_for(
    *,
    file_id: bytes,
    index: int,
    total: int,
    size: int,
    name: str,
    payload_digest: bytes,
    data: bytes | memoryview,
    content_size: int | None = None,
    content_offset: int = 0,
) -> bytes:
    """The chunk digest a CHUNK with these fields and data must carry."""
    fields, name_bytes = chunk_fields(
        file_id=file_id,
        index=index,
        total=total,
        size=size,
        name=name,
        payload_digest=payload_digest,
        content_size=content_size,
        content_offset=content_offset,
    )
    return chunk_digest(fields, name_bytes, data)


def new_chunk(
    *,
    file_id: FileId,
    index: int,
    total: int,
    size: int,
    name: str,
    payload_digest: bytes,
    data: bytes | memoryview,
    content_size: int | None = None,
    content_offset: int = 0,
) -> Chunk:
    """A Chunk with the digest its fields and data call for (FRAMED when `content_size`
    is given)."""
    digest = digest_for(
        file_id=file_id,
        index=index,
        total=total,
        size=size,
        name=name,
        payload_digest=payload_digest,
        data=data,
        content_size=content_size,
        content_offset=content_offset,
    )
    return Chunk(
        file_id=file_id,
        index=index,
        total=total,
        size=size,
        name=name,
        payload_digest=payload_digest,
        digest=digest,
        data=data,
        content_size=content_size,
        content_offset=content_offset,
    )


def verify_chunk(chunk: Chunk) -> None:
    """Check that a chunk's fields and data hash to the digest it names; raises
    ChecksumError.

    protocol.decode() does it unless told not to: a server decodes on its event loop and verifies
    on its I/O threads, where hashing megabytes neither blocks the loop nor holds the GIL.
    """
    actual = digest_for(
        file_id=chunk.file_id,
        index=chunk.index,
        total=chunk.total,
        size=chunk.size,
        name=chunk.name,
        payload_digest=chunk.payload_digest,
        data=chunk.data,
        content_size=chunk.content_size,
        content_offset=chunk.content_offset,
    )
    if actual != chunk.digest:
        raise ChecksumError(
            f"chunk digest mismatch: header {chunk.digest.hex()[:DIGEST_SHOWN]}..., "
            f"payload {actual.hex()[:DIGEST_SHOWN]}..."
        )
