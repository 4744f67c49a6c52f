"""An upload's patch directory on disk: its layout, its state in memory (Payload), and
reading it back after a crash (recover). ChunkStore (storage.py) keeps the live ones.

Ingest layer, blocking file I/O, called from ChunkStore on worker threads.
"""

# Design
# ------
# Layout (docs/protocols/ingest.md): patches_dir/<file id hex>/ holds meta.json (name,
# total, size, created, and a FRAMED upload's content size: written once, by the first
# chunk), patch_<i>.bin (chunk i as received) and ids.list ("<index> <digest hex>\n" per
# committed chunk, the chunk's XXH3-128 digest; "<index> <digest hex> <content offset>\n"
# for a FRAMED upload, whose assembly needs each chunk's offset after a restart too).
# meta.json is written atomically (unique tmp, fsync, rename, fsync the directory).
# A patch is written in place and fsynced, then its ids.list line appended:
# the line is the commit, so a patch torn by a crash has no line and is dropped, and
# needs no tmp name. "Last update" is ids.list's mtime, set to the chunk's `now` on each
# append, so it survives restarts without rewriting meta.json. (Lines of the first
# version carried a 64-hex SHA-256: recover() drops them as unparsable, and their chunks
# are sent again.)
#
# recover() repairs what a crash leaves in one directory: a patch without an ids.list
# line (crash between write and append; never acknowledged) is deleted and the client
# re-sends it; an ids.list line that is torn, unparsable, out of range, repeated or
# without its patch is dropped with a warning and ids.list rewritten, so the next append
# starts on a clean line; *.tmp files are deleted, and so is a directory holding nothing
# else; a directory whose meta.json is missing or unreadable raises
# UnreadablePayloadError, and ChunkStore leaves it for an operator.

from __future__ import annotations

import json
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from postoffice.ingest.durable import atomic_write, os_errors
from postoffice.ingest.errors import BadNameError, UnreadablePayloadError
from postoffice.ingest.messages import (
    DIGEST_BYTES,
    MAX_CHUNKS,
    FileId,
    check_name,
    file_id_hex,
    missing_ranges,
)

__all__ = [
    "IDS_LIST",
    "META_JSON",
    "Payload",
    "PayloadInfo",
    "UnreadablePayloadError",
    "append_id",
    "encode_meta",
    "recover",
]

log = logging.getLogger(__name__)

META_JSON: Final = "meta.json"
IDS_LIST: Final = "ids.list"

_PATCH: Final = re.compile(r"patch_(0|[1-9][0-9]{0,9})\.bin")
_ID_LINE: Final = re.compile(rb"(0|[1-9][0-9]{0,9}) ([0-9a-f]{32})(?: (0|[1-9][0-9]{0,19}))?\n")


@dataclass(frozen=True, slots=True, kw_only=True)
class PayloadInfo:
    """A snapshot of one payload being uploaded; `created`/`updated` are wall-clock seconds."""

    file_id: FileId
    name: str
    total: int
    size: int
    committed: frozenset[int]
    created: float
    updated: float
    #: XXH3-128 of the whole payload, as its chunks declare it (None: a payload stored
    #: by an earlier version, which did not declare one).
    payload_digest: bytes | None = None
    #: A FRAMED upload's decompressed size, as its chunks declare it; None: not FRAMED.
    content_size: int | None = None

    @property
    def missing(self) -> tuple[tuple[int, int], ...]:
        """Inclusive (first, last) ranges of the indexes not yet committed, in order."""
        return missing_ranges(self.committed, self.total)

    @property
    def complete(self) -> bool:
        """Whether every index 0..total-1 is committed."""
        return len(self.committed) == self.total


@dataclass(slots=True, eq=False)
class Payload:
    """The mutable state of one payload, kept by ChunkStore.

    Fields that snapshots read change only under the ChunkStore's `_lock`; `ids_bytes`
    and `ids_dirty` belong to the holder of `op_lock`.
    """

    file_id: FileId
    path: Path
    name: str = ""
    total: int = 0
    size: int = 0
    payload_digest: bytes | None = None
    content_size: int | None = None  # FRAMED uploads only
    created: float = 0.0
    updated: float = 0.0
    chunks: dict[int, bytes] = field(default_factory=dict)  # index -> digest of the chunk
    offsets: dict[int, int] = field(default_factory=dict)  # FRAMED: index -> content offset
    received: int = 0  # bytes in committed patches
    reserved: int = 0  # bytes of patches being written right now
    writing: dict[int, tuple[bytes, threading.Event]] = field(default_factory=dict)
    ids_bytes: int = 0  # length of ids.list's valid content
    ids_dirty: bool = False  # a failed append may have left bytes past ids_bytes
    ids_broken: str = ""  # an ids.list fsync failed: why; no more commits until a restart
    meta_written: bool = False
    removed: bool = False
    op_lock: threading.Lock = field(default_factory=threading.Lock)
    # index -> the bytes of a committed chunk kept for the streaming assembler (under
    # ChunkStore's `_lock`; see its design note)
    resident: dict[int, bytes | memoryview] = field(default_factory=dict)

    @property
    def hex_id(self) -> str:
        """The file id as 32 hex chars: the directory's name."""
        return file_id_hex(self.file_id)

    def snapshot(self) -> PayloadInfo:
        """An immutable copy of what a reader may see (take it under ChunkStore's lock)."""
        return PayloadInfo(
            file_id=self.file_id,
            name=self.name,
            total=self.total,
            size=self.size,
            committed=frozenset(self.chunks),
            created=self.created,
            updated=self.updated,
            payload_digest=self.payload_digest,
            content_size=self.content_size,
        )


def encode_meta(
    *,
    hex_id: str,
    name: str,
    total: int,
    size: int,
    payload_digest: bytes,
    created: float,
    content_size: int | None = None,
) -> bytes:
    """The bytes of a new payload's meta.json (read back by recover)."""
    meta: dict[str, object] = {
        "file_id": hex_id,
        "name": name,
        "total": total,
        "size": size,
        "payload_digest": payload_digest.hex(),
        "created": created,
    }
    if content_size is not None:
        meta["content_size"] = content_size
    return json.dumps(meta, ensure_ascii=False).encode()


def recover(file_id: FileId, path: Path, *, fsync: bool) -> Payload | None:
    """Read one payload directory back after a restart and repair what a crash left.

    Returns None for a directory that held only *.tmp files (it is removed). Raises
    UnreadablePayloadError (meta.json missing or bad) and OSError.
    """
    names = []
    for name in os.listdir(path):
        if name.endswith(".tmp"):
            os.unlink(path / name)
        else:
            names.append(name)
    if not names:
        log.info("removing an empty payload directory path=%s", path)
        os.rmdir(path)
        return None
    if META_JSON not in names:
        raise UnreadablePayloadError("meta.json is missing")
    payload = Payload(file_id, path)
    _read_meta(payload, path / META_JSON)
    patches = {int(m[1]) for n in names if (m := _PATCH.fullmatch(n))}
    ids_path = path / IDS_LIST
    kept: list[bytes] = []
    if IDS_LIST in names:
        payload.updated = mtime = os.stat(ids_path).st_mtime
        with open(ids_path, "rb") as lines:
            dropped = [line for line in lines if not _accept_line(payload, line, patches, kept)]
        if dropped:
            atomic_write(ids_path, b"".join(kept), fsync=fsync)
            os.utime(ids_path, (mtime, mtime))
    for index in sorted(patches - payload.chunks.keys()):
        log.info("uncommitted patch removed file_id=%s index=%d", payload.hex_id, index)
        os.unlink(path / f"patch_{index}.bin")
    payload.ids_bytes = sum(len(line) for line in kept)
    payload.meta_written = True
    return payload


def append_id(
    payload: Payload, index: int, digest: bytes, now: float, offset: int | None = None
) -> None:
    """Append chunk `index`'s commit line to ids.list (with its content `offset` for a
    FRAMED upload; the caller holds op_lock and fsyncs it); a failed append is truncated
    away next time. Raises IngestStorageError."""
    path = payload.path / IDS_LIST
    tail = "" if offset is None else f" {offset}"
    line = f"{index} {digest.hex()}{tail}\n".encode()
    with os_errors("append to", path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if payload.ids_dirty:
                os.ftruncate(fd, payload.ids_bytes)
            payload.ids_dirty = True
            view = memoryview(line)
            offset = payload.ids_bytes
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
            os.utime(fd, (now, now))  # "last update", read back by recover()
        finally:
            os.close(fd)
    payload.ids_dirty = False
    payload.ids_bytes += len(line)


def _accept_line(payload: Payload, line: bytes, patches: set[int], kept: list[bytes]) -> bool:
    """Commit one ids.list line into `payload` and `kept`, or log why it is dropped."""
    match = _ID_LINE.fullmatch(line)
    index = int(match[1]) if match else -1
    if not line.endswith(b"\n"):
        reason = "torn last line"
    elif match is None:
        reason = "unparsable"
    elif index >= payload.total:
        reason = f"index {index} is not below total {payload.total}"
    elif index in payload.chunks:
        reason = "repeated index"
    elif index not in patches:
        reason = f"patch_{index}.bin is missing"
    elif (match[3] is None) != (payload.content_size is None):
        reason = "content offset missing" if match[3] is None else "content offset unexpected"
    else:
        if match[3] is not None:
            payload.offsets[index] = int(match[3])
        payload.chunks[index] = bytes.fromhex(match[2].decode())
        payload.received += os.stat(payload.path / f"patch_{index}.bin").st_size
        kept.append(line)
        return True
    log.warning(
        "ids.list line dropped file_id=%s line=%r reason=%s", payload.hex_id, line[:80], reason
    )
    return False


def _read_meta(payload: Payload, path: Path) -> None:
    """Fill `payload` from its meta.json; raise UnreadablePayloadError when it does not hold one."""
    try:
        meta = json.loads(path.read_bytes())
        name, total, size, created = (meta[key] for key in ("name", "total", "size", "created"))
        if not (
            meta["file_id"] == payload.hex_id
            and isinstance(name, str)
            and _is_int(total)
            and _is_int(size)
            and 1 <= total <= MAX_CHUNKS
            and size >= 0
            and (_is_int(created) or isinstance(created, float))
        ):
            raise UnreadablePayloadError(f"meta.json holds {meta!r}")
        check_name(name)
        declared = meta.get("payload_digest")  # absent in directories of earlier versions
        payload_digest = None if declared is None else bytes.fromhex(declared)
        if payload_digest is not None and len(payload_digest) != DIGEST_BYTES:
            raise UnreadablePayloadError(f"meta.json holds {meta!r}")
        content_size = meta.get("content_size")  # FRAMED uploads only
        if content_size is not None and not (_is_int(content_size) and content_size >= 0):
            raise UnreadablePayloadError(f"meta.json holds {meta!r}")
    except (OSError, ValueError, KeyError, TypeError, BadNameError) as exc:
        raise UnreadablePayloadError(f"meta.json unreadable: {exc!r}") from exc
    payload.name, payload.total, payload.size = name, total, size
    payload.payload_digest = payload_digest
    payload.content_size = content_size
    payload.created = payload.updated = float(created)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
