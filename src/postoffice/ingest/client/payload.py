"""Local payload preparation for the ingest client: name, hash, file id, Zstandard copy,
chunk plan, and reading each chunk's frame from it.

Ingest layer, blocking: the client runs `prepare` in a thread. Nothing here touches the
network; `plan_chunks` turns the server's STATUS into the indexes still to send.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import io
import json
import os
import secrets
import tempfile
import threading
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
    MAX_CHUNK_BYTES,
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
#
# FRAMED payloads: a plain file is compressed as one zstd frame per chunk_size bytes of
# content, each recording its content size (written on threads: zstd drops the GIL), so
# the server can decompress every chunk apart, on all its cores (docs/protocols/ingest.md,
# "FRAMED chunks"); each chunk is then one frame, and its content offset is known. The
# sidecar keeps the frame table for a restarted client. A file whose frames would break
# the server's chunk-length rule (past 16 chunks, each but the last at least 16 KiB: a
# very compressible file) is compressed as one frame instead, and sent as before. A .zst
# made of several frames that all record their content size (what this client writes,
# or `zstd` in several runs) is sent FRAMED as it is, one frame per chunk.

__all__ = [
    "FrameSpan",
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
#: The server's default minimum chunk length past SMALL_CHUNKS chunks (a FRAMED cut that
#: breaks it falls back to one frame).
MIN_CHUNK_BYTES: Final = 16 * 1024
SMALL_CHUNKS: Final = 16
#: Room left in a chunk for zstd's worst case on incompressible content (a block header
#: per 128 KiB, the frame header and checksum), so a frame fits MAX_CHUNK_BYTES.
_FRAME_SLACK: Final = 64 * 1024
_ZSTD_CONTENT_UNKNOWN: Final = (1 << 64) - 1
#: A .zst payload up to this size is kept in memory by prepare(), so the upload does
#: not open and read the file again (small files are mostly that cost).
KEEP_BYTES: Final = 256 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class FrameSpan:
    """One frame of a FRAMED payload: its bytes in the payload, and its output's offset
    and length in the content."""

    offset: int
    length: int
    content_offset: int
    content_length: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PreparedFile:
    """A file ready to upload: its identity and the Zstandard payload to send.

    `payload` is the user's own .zst (`owned` False) or our copy in the work dir (`owned`
    True: removed after the publish); `reused` says that copy was left by an earlier run.
    `payload_digest` is the XXH3-128 of the payload's bytes. `size` and `digest`
    (XXH3-128) are of the original content, known for a plain file; for a user's .zst
    they are None (the content is never decompressed on this side). `data` holds the
    payload's bytes when prepare() kept them (a small .zst), else None. `frames` is the
    frame table of a FRAMED payload (one chunk per frame; `content_size` the whole
    content's length), else None: chunks are then `chunk_size` slices of the payload.
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
    frames: tuple[FrameSpan, ...] | None = None
    content_size: int | None = None

    @property
    def total(self) -> int:
        """Number of chunks."""
        if self.frames is not None:
            return len(self.frames)
        return chunk_count(self.payload_size, self.chunk_size)

    def chunk_offset(self, index: int) -> int:
        """Where chunk `index` starts in the payload."""
        if self.frames is not None:
            return self.frames[index].offset
        return index * self.chunk_size

    def chunk_length(self, index: int) -> int:
        """Bytes in chunk `index` (the last one may be short, or empty for an empty payload)."""
        if self.frames is not None:
            return self.frames[index].length
        start = index * self.chunk_size
        return max(0, min(self.chunk_size, self.payload_size - start))


# --- pure helpers -------------------------------------------------------------------------


def derive_file_id(name: str, digest: bytes, chunk_size: int, *, framed: bool = False) -> FileId:
    """The upload's id: the same file (`digest` of its content, or of a .zst's bytes),
    name, chunk size and way of cutting (FRAMED or not) always give the same id, so an
    interrupted upload is found again after a client restart."""
    material = b"".join(
        (
            FILE_ID_DOMAIN,
            name.encode("utf-8"),
            b"\0",
            digest,
            chunk_size.to_bytes(8, "big"),
            b"framed" if framed else b"",
        )
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
    path: Path,
    *,
    chunk_size: int,
    work_dir: Path | None = None,
    name: str | None = None,
    framed: bool = True,
) -> PreparedFile:
    """Hash `path`, derive its upload id, and find or make its Zstandard payload. Blocking.

    `name` overrides the name derived from the path (see upload_name). With `framed`, a
    plain file is compressed as one frame per `chunk_size` bytes of content and a .zst of
    several frames with content sizes is sent one frame per chunk (FRAMED), unless the
    cut would break the server's chunk-length rule; without it, one frame cut in
    `chunk_size` slices.

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
            spans = _frame_table(path, payload_size) if framed and kept is None else None
            return PreparedFile(
                path=path,
                name=zst_name,
                file_id=derive_file_id(
                    zst_name, payload_digest, chunk_size, framed=spans is not None
                ),
                size=None,
                digest=None,
                payload=path,
                payload_size=payload_size,
                payload_digest=payload_digest,
                chunk_size=chunk_size,
                owned=False,
                data=kept,
                frames=spans,
                content_size=None if spans is None else _content_end(spans),
            )
        name = check_name(name) if name is not None else upload_name(path, zstd=False)
        size, digest = _hash_file(path)
        block = min(chunk_size, MAX_CHUNK_BYTES - _FRAME_SLACK)
        # A file of one block is one chunk however it is compressed: keep it one frame.
        framed = framed and size > block
        file_id = derive_file_id(name, digest, chunk_size, framed=framed)
        folder = work_root(work_dir)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = folder / f"{file_id_hex(file_id)}{SUFFIX}"
        sidecar = target.with_suffix(".json")
        cached = _cached(target, sidecar, digest)
        reused = cached is not None
        if cached is None and framed:
            cached = _compress_framed(path, target, sidecar, size=size, digest=digest, block=block)
        if cached is None:
            cached = _compress(path, target, sidecar, size=size, digest=digest)
        payload_size, payload_digest, spans = cached
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
            frames=spans,
            content_size=None if spans is None else size,
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


_Compressed = tuple[int, bytes, tuple[FrameSpan, ...] | None]
"""A compressed copy's size, payload digest and frame table (None: not FRAMED)."""


def _cached(target: Path, sidecar: Path, digest: bytes) -> _Compressed | None:
    """Size, digest and frames of a compressed copy an earlier run left, if its sidecar
    vouches for it."""
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
            spans = _spans_from(meta.get("frames"), actual)
            return actual, bytes.fromhex(meta["payload_digest"]), spans
        except ValueError:
            return None
    return None


def _spans_from(table: object, payload_size: int) -> tuple[FrameSpan, ...] | None:
    """The frame table a sidecar keeps ([[length, content length], ...]), checked against
    the payload's size; None when there is none. Raises ValueError for a bad one."""
    if table is None:
        return None
    if not isinstance(table, list) or not table:
        raise ValueError("bad frame table")
    spans = []
    offset = content = 0
    for entry in table:
        if not (
            isinstance(entry, list)
            and len(entry) == 2
            and all(isinstance(v, int) and v >= 0 for v in entry)
        ):
            raise ValueError("bad frame table")
        spans.append(
            FrameSpan(
                offset=offset, length=entry[0], content_offset=content, content_length=entry[1]
            )
        )
        offset += entry[0]
        content += entry[1]
    if offset != payload_size:
        raise ValueError("frame table does not add up to the payload")
    return tuple(spans)


def _content_end(spans: tuple[FrameSpan, ...]) -> int:
    last = spans[-1]
    return last.content_offset + last.content_length


def _cut_fits(lengths: list[int]) -> bool:
    """Whether chunks of these lengths pass the server's default chunk-length rule."""
    if any(length > MAX_CHUNK_BYTES for length in lengths):
        return False
    return len(lengths) <= SMALL_CHUNKS or min(lengths[:-1]) >= MIN_CHUNK_BYTES


class _HashingWriter:
    """A write() that hashes what it passes on: the compressed payload's digest."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.digest = xxhash.xxh3_128()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self._out.write(data)


def _compress(src: Path, target: Path, sidecar: Path, *, size: int, digest: bytes) -> _Compressed:
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
    _write_sidecar(sidecar, payload_size, payload_digest, digest, size, None)
    return payload_size, payload_digest, None


def _write_sidecar(
    sidecar: Path,
    payload_size: int,
    payload_digest: bytes,
    digest: bytes,
    size: int,
    spans: tuple[FrameSpan, ...] | None,
) -> None:
    meta: dict[str, object] = {
        "size": payload_size,
        "payload_digest": payload_digest.hex(),
        "digest_original": digest.hex(),
        "original_size": size,
    }
    if spans is not None:
        meta["frames"] = [[span.length, span.content_length] for span in spans]
    side_tmp = sidecar.with_name(f"{sidecar.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    side_tmp.write_text(json.dumps(meta))
    os.replace(side_tmp, sidecar)


def _compress_framed(
    src: Path, target: Path, sidecar: Path, *, size: int, digest: bytes, block: int
) -> _Compressed | None:
    """Compress `src` into `target` as one frame per `block` bytes of content, each with
    its content size and checksum, on threads; returns its size, digest and frames, or
    None (nothing written) when the frames would break the chunk-length rule.

    Each frame depends only on its block, so the bytes are the same in every run.
    """
    threads = max(1, min(8, len(os.sched_getaffinity(0))))
    local = threading.local()

    def compress(data: bytes) -> bytes:
        compressor = getattr(local, "compressor", None)
        if compressor is None:
            compressor = local.compressor = zstandard.ZstdCompressor(
                level=ZSTD_LEVEL, write_checksum=True, write_content_size=True, threads=0
            )
        return compressor.compress(data)

    tmp = target.with_name(f"{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    content = xxhash.xxh3_128()
    hashing = xxhash.xxh3_128()
    spans: list[FrameSpan] = []
    offset = seen = 0
    try:
        with (
            src.open("rb") as fin,
            tmp.open("wb") as fout,
            concurrent.futures.ThreadPoolExecutor(threads) as pool,
        ):
            pending: collections.deque[tuple[int, concurrent.futures.Future[bytes]]] = (
                collections.deque()
            )

            def drain(keep: int) -> None:
                nonlocal offset
                while len(pending) > keep:
                    length, future = pending.popleft()
                    frame = future.result()
                    hashing.update(frame)
                    fout.write(frame)
                    spans.append(
                        FrameSpan(
                            offset=offset,
                            length=len(frame),
                            content_offset=spans[-1].content_offset + spans[-1].content_length
                            if spans
                            else 0,
                            content_length=length,
                        )
                    )
                    offset += len(frame)

            while data := fin.read(block):
                content.update(data)
                seen += len(data)
                pending.append((len(data), pool.submit(compress, data)))
                drain(2 * threads)
            drain(0)
        if seen != size or content.digest() != digest:
            raise StorageError(f"{src} changed while it was read: restart the upload")
        if not spans or not _cut_fits([span.length for span in spans]):
            return None
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    payload_digest = hashing.digest()
    table = tuple(spans)
    _write_sidecar(sidecar, offset, payload_digest, digest, size, table)
    return offset, payload_digest, table


def _frame_table(path: Path, payload_size: int) -> tuple[FrameSpan, ...] | None:
    """The frames of a .zst when it can go FRAMED: two or more zstd frames, each with its
    content size, cut as the chunk-length rule allows; else None (it goes as one stream).
    Reads only the frame and block headers."""
    spans: list[FrameSpan] = []
    content = 0
    with path.open("rb", buffering=0) as fh:
        fd = fh.fileno()
        offset = 0
        while offset < payload_size:
            head = os.pread(fd, 18, offset)
            if len(head) < 6 or head[:4] != ZSTD_MAGIC:
                return None  # skippable frames, garbage: the server judges it as a stream
            descriptor = head[4]
            single = descriptor >> 5 & 1
            size_bytes = (single, 2, 4, 8)[descriptor >> 6]
            if not size_bytes:
                return None  # no content size
            dict_bytes = (0, 1, 2, 4)[descriptor & 3]
            field = 5 + (1 - single) + dict_bytes
            frame_content = int.from_bytes(head[field : field + size_bytes], "little")
            if size_bytes == 2:
                frame_content += 256
            if frame_content == _ZSTD_CONTENT_UNKNOWN:
                return None
            at = offset + field + size_bytes
            while True:
                block = os.pread(fd, 3, at)
                if len(block) < 3:
                    return None  # truncated
                value = int.from_bytes(block, "little")
                kind, length = value >> 1 & 3, value >> 3
                at += 3 + (1 if kind == 1 else length)
                if value & 1:
                    break
            if descriptor & 0x04:
                at += 4  # the content checksum
            if at > payload_size:
                return None
            spans.append(
                FrameSpan(
                    offset=offset,
                    length=at - offset,
                    content_offset=content,
                    content_length=frame_content,
                )
            )
            content += frame_content
            offset = at
    if len(spans) < 2 or not _cut_fits([span.length for span in spans]):
        return None
    return tuple(spans)


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
    offset = prepared.chunk_offset(index)
    content_size = prepared.content_size if prepared.frames is not None else None
    content_offset = prepared.frames[index].content_offset if prepared.frames is not None else 0
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
            content_size=content_size,
            content_offset=content_offset,
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
        content_size=content_size,
        content_offset=content_offset,
    )
    return head, data
