"""Local payload preparation for the ingest client: name, hash, file id, Zstandard copy,
chunk plan, and reading each chunk's frame from it.

Ingest layer, blocking: the client runs `prepare` in a thread. Nothing here touches the
network; `plan_chunks` turns the server's STATUS into the indexes still to send.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

import xxhash
import zstandard

from postoffice.core.errors import StorageError, translate_os_error
from postoffice.ingest.errors import (
    ConflictError,
    IngestLimitError,
    IngestProtocolError,
)
from postoffice.ingest.messages import (
    FILE_ID_BYTES,
    MAX_CHUNKS,
    FileId,
    Status,
    UploadState,
    check_name,
    file_id_hex,
)
from postoffice.ingest.protocol import chunk_frame_parts

# Design
# ------
# `prepare(path)` (blocking) detects Zstandard by its magic. A plain file: hash its
# content (XXH3-128), derive the file id from name, content digest and chunk size, so a
# restarted client finds its earlier upload; compress into the work dir (hashing the
# output as it is written: the payload digest), or reuse the copy an earlier run left
# there. The hash comes first, in a pass of its own: it is the cache key, and far cheaper
# than the compression it may save. The compression pass hashes again, so a file changed
# in between is caught. Compression is deterministic (see _compress): the same file gives
# the same payload, hence the same chunks, after a restart. A .zst: hash its bytes (the
# payload digest, and the id's material); its content is not decompressed here, so its
# size and content digest are only known from the server's PUBLISHED (zstd's own frame
# checksum, when the file has one, vouches for the content there).

__all__ = [
    "PreparedFile",
    "chunk_count",
    "derive_file_id",
    "discard_work_copy",
    "is_zstd",
    "open_payload",
    "plan_chunks",
    "prepare",
    "read_chunk_frame",
    "upload_name",
    "work_root",
]

ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
ZSTD_LEVEL: Final = 3
FILE_ID_DOMAIN: Final = b"postoffice-ingest-v2\0"
WORK_SUBDIR: Final = "postoffice-ingest"
SUFFIX: Final = ".zst"

_IO_BYTES: Final = 1024 * 1024  # block size for hashing and compressing
#: A .zst payload up to this size is kept in memory by prepare(), so the upload does
#: not open and read the file again (small files are mostly that cost).
KEEP_BYTES: Final = 256 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class PreparedFile:
    """A file ready to upload: its identity and the Zstandard payload to send.

    `payload` is the user's own .zst (`owned` False) or our copy in the work dir (`owned`
    True: removed after the publish); `reused` says that copy was left by an earlier run.
    `payload_digest` is the XXH3-128 of the payload's bytes. `size` and `digest`
    (XXH3-128) are of the original content, known for a plain file; for a user's .zst
    they are None (the content is never decompressed on this side). `data` holds the
    payload's bytes when prepare() kept them (a small .zst), else None.
    """

    path: Path
    name: str
    file_id: FileId
    size: int | None
    digest: bytes | None
    payload: Path
    payload_size: int
    payload_digest: bytes
    chunk_size: int
    owned: bool
    reused: bool = False
    data: bytes | None = None

    @property
    def total(self) -> int:
        """Number of chunks."""
        return chunk_count(self.payload_size, self.chunk_size)

    def chunk_length(self, index: int) -> int:
        """Bytes in chunk `index` (the last one may be short, or empty for an empty payload)."""
        start = index * self.chunk_size
        return max(0, min(self.chunk_size, self.payload_size - start))


# --- pure helpers -------------------------------------------------------------------------


def derive_file_id(name: str, digest: bytes, chunk_size: int) -> FileId:
    """The upload's id: the same file (`digest` of its content, or of a .zst's bytes),
    name and chunk size always give the same id, so an interrupted upload is found again
    after a client restart."""
    material = b"".join(
        (FILE_ID_DOMAIN, name.encode("utf-8"), b"\0", digest, chunk_size.to_bytes(8, "big"))
    )
    return FileId(hashlib.sha256(material).digest()[:FILE_ID_BYTES])


def upload_name(path: Path, *, zstd: bool) -> str:
    """The name the file is published under: its own, minus `.zst` when it is Zstandard.

    Raises BadNameError for a name the server would refuse.
    """
    name = path.name
    if zstd and name.endswith(SUFFIX):
        name = name[: -len(SUFFIX)]
    return check_name(name)


def chunk_count(payload_size: int, chunk_size: int) -> int:
    """Chunks needed for `payload_size` bytes (at least one: an empty payload is one empty
    chunk). Raises IngestLimitError past the protocol's MAX_CHUNKS."""
    total = max(1, -(-payload_size // chunk_size))
    if total > MAX_CHUNKS:
        raise IngestLimitError(
            f"payload of {payload_size} bytes needs {total} chunks of {chunk_size}, "
            f"limit {MAX_CHUNKS}: use a larger chunk size"
        )
    return total


def plan_chunks(status: Status, *, total: int, size: int) -> tuple[int, ...]:
    """The indexes to send, given the server's STATUS for our upload.

    UNKNOWN or FAILED (the server dropped a failed upload's chunks): everything.
    ASSEMBLING or PUBLISHED: nothing. UPLOADING: the missing ranges; when none are
    missing, the last chunk again, as a nudge (the server answers a duplicate of a
    complete upload by starting its assembly, which helps one whose assembly was lost).
    Raises ConflictError when the server holds a different payload under our id, and
    IngestProtocolError for ranges outside 0..total-1.
    """
    match status.state:
        case UploadState.UNKNOWN | UploadState.FAILED:
            return tuple(range(total))
        case UploadState.ASSEMBLING | UploadState.PUBLISHED:
            return ()
        case UploadState.UPLOADING:
            pass
    if status.total != total or status.size != size:
        raise ConflictError(
            f"server holds upload {file_id_hex(status.file_id)} as {status.total} chunks of "
            f"{status.size} bytes in all, ours is {total} chunks of {size} bytes "
            "(another zstd build or .zst file? abort it on the control port)"
        )
    indexes: list[int] = []
    for first, last in status.missing:
        if not 0 <= first <= last < total:
            raise IngestProtocolError(f"status range {first}-{last} is outside 0..{total - 1}")
        indexes.extend(range(first, last + 1))
    return tuple(indexes) if indexes else (total - 1,)


# --- preparing a file (blocking: run in a thread) -----------------------------------------


def work_root(work_dir: Path | None = None) -> Path:
    """Where compressed copies wait for their upload: `<work_dir or tmp>/postoffice-ingest`."""
    return (work_dir if work_dir is not None else Path(tempfile.gettempdir())) / WORK_SUBDIR


def is_zstd(path: Path) -> bool:
    """True if the file starts with the Zstandard frame magic. Raises OSError."""
    with path.open("rb") as fh:
        return fh.read(len(ZSTD_MAGIC)) == ZSTD_MAGIC


def prepare(
    path: Path, *, chunk_size: int, work_dir: Path | None = None, name: str | None = None
) -> PreparedFile:
    """Hash `path`, derive its upload id, and find or make its Zstandard payload. Blocking.

    `name` overrides the name derived from the path (see upload_name).

    Raises BadNameError for a name the server would refuse, StorageError when a file
    cannot be read or written (or changed while it was read).
    """
    try:
        with path.open("rb", buffering=0) as fh:
            zstd = fh.read(len(ZSTD_MAGIC)) == ZSTD_MAGIC
            if zstd:
                # The id comes from the compressed bytes, which are what is sent: hashing
                # them is far cheaper than decompressing, and as stable across restarts.
                fh.seek(0)
                payload_size, payload_digest, kept = _hash_open(fh)
        if zstd:
            zst_name = check_name(name) if name is not None else upload_name(path, zstd=True)
            return PreparedFile(
                path=path,
                name=zst_name,
                file_id=derive_file_id(zst_name, payload_digest, chunk_size),
                size=None,
                digest=None,
                payload=path,
                payload_size=payload_size,
                payload_digest=payload_digest,
                chunk_size=chunk_size,
                owned=False,
                data=kept,
            )
        name = check_name(name) if name is not None else upload_name(path, zstd=False)
        size, digest = _hash_file(path)
        file_id = derive_file_id(name, digest, chunk_size)
        folder = work_root(work_dir)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = folder / f"{file_id_hex(file_id)}{SUFFIX}"
        sidecar = target.with_suffix(".json")
        cached = _cached(target, sidecar, digest)
        reused = cached is not None
        if cached is None:
            cached = _compress(path, target, sidecar, size=size, digest=digest)
        payload_size, payload_digest = cached
        return PreparedFile(
            path=path,
            name=name,
            file_id=file_id,
            size=size,
            digest=digest,
            payload=target,
            payload_size=payload_size,
            payload_digest=payload_digest,
            chunk_size=chunk_size,
            owned=True,
            reused=reused,
        )
    except OSError as exc:
        raise translate_os_error(exc, StorageError, f"prepare {path}") from exc


def _hash_file(path: Path) -> tuple[int, bytes]:
    """Size and XXH3-128 of a file's bytes."""
    with path.open("rb", buffering=0) as fh:
        size, digest, _ = _hash_open(fh)
    return size, digest


def _hash_open(fh: io.RawIOBase) -> tuple[int, bytes, bytes | None]:
    """Size and XXH3-128 of what is left to read in `fh`, and those bytes if they are at
    most KEEP_BYTES."""
    first = b""
    while len(first) <= KEEP_BYTES and (more := fh.read(KEEP_BYTES + 1 - len(first))):
        first += more
    if len(first) <= KEEP_BYTES:
        return len(first), xxhash.xxh3_128_digest(first), first
    digest = xxhash.xxh3_128(first)
    size = len(first)
    block = bytearray(_IO_BYTES)
    while got := fh.readinto(block):
        digest.update(memoryview(block)[:got])
        size += got
    return size, digest.digest(), None


def _cached(target: Path, sidecar: Path, digest: bytes) -> tuple[int, bytes] | None:
    """Size and digest of a compressed copy an earlier run left, if its sidecar vouches
    for it."""
    try:
        meta = json.loads(sidecar.read_text())
        actual = target.stat().st_size
    except (OSError, ValueError):
        return None
    if (
        isinstance(meta, dict)
        and meta.get("digest_original") == digest.hex()
        and meta.get("size") == actual
        and isinstance(meta.get("payload_digest"), str)
    ):
        try:
            return actual, bytes.fromhex(meta["payload_digest"])
        except ValueError:
            return None
    return None


class _HashingWriter:
    """A write() that hashes what it passes on: the compressed payload's digest."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.digest = xxhash.xxh3_128()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self._out.write(data)


def _compress(
    src: Path, target: Path, sidecar: Path, *, size: int, digest: bytes
) -> tuple[int, bytes]:
    """Compress `src` into `target` (through a private temp name), then write the sidecar;
    returns the payload's size and digest.

    Single-threaded level 3 with the content size pledged: the same input and library
    version always give the same bytes, which lets a restarted client resume.
    """
    compressor = zstandard.ZstdCompressor(
        level=ZSTD_LEVEL, write_checksum=True, write_content_size=True, threads=0
    )
    tmp = target.with_name(f"{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    content = xxhash.xxh3_128()
    seen = 0
    try:
        with src.open("rb") as fin, tmp.open("wb") as fout:
            hashing = _HashingWriter(fout)
            with compressor.stream_writer(
                hashing,  # type: ignore[arg-type]  # zstandard needs only write()
                size=size,
                closefd=False,
            ) as writer:
                while block := fin.read(_IO_BYTES):
                    content.update(block)
                    seen += len(block)
                    writer.write(block)
        if seen != size or content.digest() != digest:
            raise StorageError(f"{src} changed while it was read: restart the upload")
        payload_size = tmp.stat().st_size
        os.replace(tmp, target)
    except zstandard.ZstdError as exc:
        # The pledged size no longer matches: the file grew or shrank under us.
        raise StorageError(f"{src} changed while it was compressed: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    payload_digest = hashing.digest.digest()
    meta = {
        "size": payload_size,
        "payload_digest": payload_digest.hex(),
        "digest_original": digest.hex(),
        "original_size": size,
    }
    side_tmp = sidecar.with_name(f"{sidecar.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    side_tmp.write_text(json.dumps(meta))
    os.replace(side_tmp, sidecar)
    return payload_size, payload_digest


def discard_work_copy(prepared: PreparedFile) -> None:
    """Remove our compressed copy and its sidecar after the publish; a user's .zst stays."""
    if prepared.owned:
        prepared.payload.unlink(missing_ok=True)
        prepared.payload.with_suffix(".json").unlink(missing_ok=True)


# --- chunk frames (blocking: the client runs them in a thread) ---------------------------


def open_payload(path: Path) -> int:
    """Open the payload for reading chunks with read_chunk_frame; raises StorageError."""
    try:
        return os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise translate_os_error(exc, StorageError, f"open {path}") from exc


def read_chunk_frame(
    prepared: PreparedFile, fd: int, index: int, request_id: int
) -> tuple[bytes, bytes]:
    """Read chunk `index` and frame it: (frame head, data), written one after the other
    so the data is never copied. Blocking; raises StorageError."""
    length = prepared.chunk_length(index)
    offset = index * prepared.chunk_size
    if prepared.data is not None:  # kept in memory by prepare()
        head, _ = chunk_frame_parts(
            file_id=prepared.file_id,
            index=index,
            total=prepared.total,
            size=prepared.payload_size,
            name=prepared.name,
            payload_digest=prepared.payload_digest,
            data=prepared.data[offset : offset + length],
            request_id=request_id,
        )
        return head, prepared.data[offset : offset + length]
    parts: list[bytes] = []
    got = 0
    try:
        while got < length:
            block = os.pread(fd, length - got, offset + got)
            if not block:
                raise StorageError(
                    f"{prepared.payload} ended at {offset + got} bytes, "
                    f"expected {prepared.payload_size}"
                )
            parts.append(block)
            got += len(block)
    except OSError as exc:
        raise translate_os_error(exc, StorageError, f"read {prepared.payload}") from exc
    data = parts[0] if len(parts) == 1 else b"".join(parts) if parts else b""
    head, _ = chunk_frame_parts(
        file_id=prepared.file_id,
        index=index,
        total=prepared.total,
        size=prepared.payload_size,
        name=prepared.name,
        payload_digest=prepared.payload_digest,
        data=data,
        request_id=request_id,
    )
    return head, data
