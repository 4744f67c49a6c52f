"""FramedAssembly: a FRAMED upload decompressed chunk by chunk, in any order and on several
threads, straight to each chunk's offset in its staging file, then published.

I/O layer, blocking: the server's decompression threads call `decompress`, an I/O thread
`finish`. The wire side is docs/protocols/ingest.md, "FRAMED chunks".
"""

# Design
# ------
# Each chunk of a FRAMED upload is one zstd frame whose header records its content size,
# and declares the content offset where its output goes. So chunk i can be decompressed
# the moment it is committed, whatever else has arrived, and its output written with
# pwrite at its offset in files_dir/.<name>.<id>.tmp: python-zstandard drops the GIL
# while it decompresses, so chunks decompress on as many cores as there are threads.
# Nothing the client declares is trusted:
#   - the data must be exactly one zstd frame (FrameWalker: no truncation, no trailing
#     bytes, a window within the limit) whose header has a content size;
#   - its range, offset .. offset + content size, must lie within the upload's declared
#     content size, and must meet the ranges of chunks i-1 and i+1 exactly (checked with
#     whichever arrives second), chunk 0 starting at 0 and the last ending at the content
#     size: with every chunk present, the ranges tile the file, no gap and no overlap;
#     the check runs before any byte of the chunk is written;
#   - its output must be exactly the content size its header records.
# A failed check raises AssemblyError (the upload fails, nothing is published).
#
# The two digests (XXH3-128 of the compressed payload and of the content) are sequential
# hashes, so chunks are hashed in index order by a "hash lane". A thread that starts the
# chunk next in order while the lane is free takes the lane and hashes the output as it
# decompresses it (the common case when chunks arrive in order). Otherwise the chunk is
# handed in when done, and whichever thread finds the lane free hashes every chunk that
# is next in order, reading its output back from the staging file (most likely still in
# the page cache); its compressed bytes wait in memory up to HOLD_BYTES per upload, past
# that they are read back from its patch. As the
# hashed prefix grows, the kernel is asked to start writing it back, in order and in
# steps of WRITEBACK_BYTES, so the final fsync waits for a tail and not for the whole
# file, and the disk sees the file written back in order. The staging file is opened per
# chunk, so an upload waiting for chunks holds no file descriptor.

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final, final

import xxhash
import zstandard

from postoffice.ingest.assembly import Piece, Staged, publish_staged, staging_path
from postoffice.ingest.durable import GroupSync, os_errors
from postoffice.ingest.errors import AssemblyError, IngestStorageError
from postoffice.ingest.messages import check_name, file_id_hex
from postoffice.ingest.patches import PayloadInfo
from postoffice.ingest.published import PublishedInfo, Recorder
from postoffice.ingest.zstdframes import FrameWalker

__all__ = ["HOLD_BYTES", "STREAM_BLOCK_BYTES", "FramedAssembly"]

#: Compressed bytes of finished chunks of one upload kept in memory while they wait for
#: their turn in the hash lane; past it they are read back from their patches.
HOLD_BYTES: Final = 64 * 1024 * 1024
#: A frame is decompressed in blocks of this size into a buffer each thread keeps, so a
#: frame that claims a huge content size costs no more memory than that, and no output
#: buffer is allocated (and page-faulted) afresh for each chunk.
STREAM_BLOCK_BYTES: Final = 2 * 1024 * 1024
#: Read-back size of the hash lane.
_READ_BYTES: Final = 4 * 1024 * 1024
#: The hash lane starts the kernel's writeback of the hashed prefix of the file in steps
#: of at least this many bytes (assembly.py's streaming writer does the same).
WRITEBACK_BYTES: Final = 16 * 1024 * 1024


@dataclass(slots=True)
class _Done:
    """A decompressed chunk waiting for the hash lane: its compressed bytes (None: read
    its patch again) and its output's range (read back from the staging file)."""

    data: bytes | memoryview | None
    offset: int
    length: int
    patch: Path | None


_local = threading.local()


def _block() -> memoryview:
    """This thread's output buffer."""
    block: memoryview | None = getattr(_local, "block", None)
    if block is None or len(block) != STREAM_BLOCK_BYTES:
        block = _local.block = memoryview(bytearray(STREAM_BLOCK_BYTES))
    return block


def _decompressor(max_window_log: int) -> zstandard.ZstdDecompressor:
    """One decompressor per thread and window limit (a ZstdDecompressor is not
    thread-safe, and making one per chunk costs its context)."""
    cached: dict[int, zstandard.ZstdDecompressor] | None = getattr(_local, "dctx", None)
    if cached is None:
        cached = _local.dctx = {}
    dctx = cached.get(max_window_log)
    if dctx is None:
        dctx = cached[max_window_log] = zstandard.ZstdDecompressor(
            max_window_size=1 << max_window_log
        )
    return dctx


@final
class FramedAssembly:
    """One FRAMED upload's staging file, filled chunk by chunk (see the design note).

    `create()` makes (or empties) the staging file; `decompress(index, piece, offset)`
    may then run on any thread, for each chunk once, in any order; `finish()` publishes
    once every chunk is done; `discard()` removes the staging file unless it was placed.
    """

    def __init__(
        self,
        *,
        info: PayloadInfo,
        files_dir: Path,
        max_window_log: int,
        hold_bytes: int = HOLD_BYTES,
    ) -> None:
        if info.content_size is None:
            raise ValueError(f"upload {file_id_hex(info.file_id)} is not FRAMED")
        self.info = info
        self.content_size = info.content_size
        self.files_dir = files_dir
        self.max_window_log = max_window_log
        self.hold_bytes = hold_bytes
        self.hex_id = file_id_hex(info.file_id)
        self.tmp = staging_path(files_dir, check_name(info.name), info.file_id, "tmp")
        self._lock = threading.Lock()
        self._ranges: dict[int, tuple[int, int]] = {}  # index -> (offset, content size)
        self._ready: dict[int, _Done] = {}
        self._held = 0
        self._hashing = False
        self._next_hash = 0
        self._written_back = 0  # content offset up to which writeback was started
        self._payload_hash = xxhash.xxh3_128()
        self._content_hash = xxhash.xxh3_128()
        self.bytes_in = 0
        self.decompressed = 0
        self.placed = False

    def __repr__(self) -> str:
        return (
            f"<FramedAssembly {self.hex_id} decompressed={self.decompressed}/"
            f"{self.info.total} hashed={self._next_hash}>"
        )

    @property
    def hashed(self) -> int:
        """Chunks hashed so far, in index order."""
        return self._next_hash

    def create(self) -> None:
        """Create the staging file, empty. Raises IngestStorageError."""
        with os_errors("create", self.files_dir):
            if not os.path.isdir(self.files_dir):
                self.files_dir.mkdir(parents=True, exist_ok=True)
        with os_errors("assemble", self.tmp):
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            os.close(fd)

    # -- one chunk -----------------------------------------------------------------------

    def decompress(self, index: int, piece: Piece, offset: int, patch: Path | None = None) -> None:
        """Check chunk `index` (its bytes or its patch file), decompress it to `offset`
        in the staging file, and hand it to the hash lane. `patch` is where its bytes
        can be read again (default: `piece` when it is a path).

        Raises AssemblyError when the chunk breaks a rule of the design note, and
        IngestStorageError when the disk fails (or the staging file went).
        """
        data: bytes | memoryview
        if isinstance(piece, Path):
            patch = piece
            with os_errors("read", piece):
                data = piece.read_bytes()
        else:
            data = piece  # the chunk's own buffer: not copied
        length = self._check_frame(index, data)
        self._claim(index, offset, length)
        with self._lock:
            inline = self._next_hash == index and not self._hashing
            if inline:
                self._hashing = True  # this thread holds the lane until it hands in
        done = _Done(data, offset, length, patch)
        try:
            self._write(index, data, offset, length, inline=inline)
            if inline:
                self._payload_hash.update(data)
                self.bytes_in += len(data)
                self._start_writeback(offset + length)
        except BaseException:
            if inline:
                with self._lock:
                    self._hashing = False
            raise
        with self._lock:
            self.decompressed += 1
        self._hand_in(index, done, hashed=inline)

    def _check_frame(self, index: int, data: bytes | memoryview) -> int:
        """The content size of the one zstd frame `data` must be."""
        what = f"chunk {index} of {self.hex_id}"
        walker = FrameWalker(max_window_size=1 << self.max_window_log, hex_id=self.hex_id)
        try:
            walker.feed(data)
            walker.finish()
        except AssemblyError as exc:
            raise AssemblyError(f"{what} is not one zstd frame: {exc}") from exc
        if walker.frames != 1:
            raise AssemblyError(f"{what} holds {walker.frames} zstd frames, expected one")
        try:
            params = zstandard.get_frame_parameters(data)
        except zstandard.ZstdError as exc:
            raise AssemblyError(f"{what} has a bad zstd frame header: {exc}") from exc
        if params.content_size == zstandard.CONTENTSIZE_UNKNOWN:
            raise AssemblyError(f"{what}: its zstd frame does not record its content size")
        return int(params.content_size)

    def _claim(self, index: int, offset: int, length: int) -> None:
        """Record the chunk's range after checking it against the content size and the
        neighbours already recorded (under the lock: two neighbours never both miss)."""
        what = f"chunk {index} of {self.hex_id}"
        end = offset + length
        total = self.info.total
        if end > self.content_size:
            raise AssemblyError(
                f"{what} covers content bytes {offset}..{end}, past the upload's "
                f"content size {self.content_size}"
            )
        if index == 0 and offset != 0:
            raise AssemblyError(f"{what} starts at content offset {offset}, expected 0")
        if index == total - 1 and end != self.content_size:
            raise AssemblyError(
                f"{what}, the last, ends at content offset {end}, expected the content "
                f"size {self.content_size}"
            )
        with self._lock:
            if index in self._ranges:
                raise AssemblyError(f"{what} was decompressed twice")
            before = self._ranges.get(index - 1)
            if before is not None and sum(before) != offset:
                raise AssemblyError(
                    f"{what} starts at content offset {offset}, chunk {index - 1} ends at "
                    f"{sum(before)}: ranges with a gap or an overlap"
                )
            after = self._ranges.get(index + 1)
            if after is not None and after[0] != end:
                raise AssemblyError(
                    f"{what} ends at content offset {end}, chunk {index + 1} starts at "
                    f"{after[0]}: ranges with a gap or an overlap"
                )
            self._ranges[index] = (offset, length)

    def _write(
        self, index: int, data: bytes | memoryview, offset: int, length: int, *, inline: bool
    ) -> None:
        """Decompress `data` to `offset`, through this thread's buffer; with `inline`,
        hash the output as it goes."""
        what = f"chunk {index} of {self.hex_id}"
        dctx = _decompressor(self.max_window_log)
        block = _block()
        content_hash = self._content_hash
        written = 0
        with os_errors("assemble", self.tmp):
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CLOEXEC)  # gone: a disk-level error
        try:
            with dctx.stream_reader(data, read_across_frames=False) as reader:
                while size := reader.readinto(block):
                    if written + size > length:
                        raise AssemblyError(
                            f"{what}: its zstd frame records content size {length}, "
                            "its output is larger"
                        )
                    out = block[:size]
                    if inline:
                        content_hash.update(out)
                    with os_errors("write", self.tmp):
                        _pwrite_all(fd, out, offset + written)
                    written += size
        except zstandard.ZstdError as exc:
            raise AssemblyError(f"{what} is not valid zstandard: {exc}") from exc
        finally:
            os.close(fd)
        if written != length:
            raise AssemblyError(
                f"{what}: its zstd frame records content size {length}, "
                f"its output is {written} bytes"
            )

    # -- the hash lane -------------------------------------------------------------------

    def _hand_in(self, index: int, done: _Done, *, hashed: bool = False) -> None:
        """Queue a finished chunk for hashing (or, `hashed`, count the one this thread
        hashed holding the lane), and hash whatever is next in order unless another
        thread holds the lane."""
        with self._lock:
            if hashed:
                self._next_hash += 1  # this thread holds the lane
            else:
                held = len(done.data) if done.data is not None else 0
                if self._held + held > self.hold_bytes and done.patch is not None:
                    done.data = None  # read back from its patch when its turn comes
                    held = 0
                self._held += held
                self._ready[index] = done
                if self._hashing:
                    return
                self._hashing = True
        try:
            while True:
                with self._lock:
                    item = self._ready.pop(self._next_hash, None)
                    if item is None:
                        self._hashing = False
                        return
                self._hash(item)
                with self._lock:
                    self._held -= len(item.data) if item.data is not None else 0
                    self._next_hash += 1
        except BaseException:
            with self._lock:
                self._hashing = False
            raise

    def _hash(self, item: _Done) -> None:
        data = item.data
        if data is None:
            assert item.patch is not None
            with os_errors("read", item.patch):
                data = item.patch.read_bytes()
        self._payload_hash.update(data)
        self.bytes_in += len(data)
        with os_errors("read", self.tmp):
            fd = os.open(self.tmp, os.O_RDONLY | os.O_CLOEXEC)
            try:
                self._read_back(fd, item.offset, item.length)
            finally:
                os.close(fd)
        self._start_writeback(item.offset + item.length)

    def _start_writeback(self, end: int) -> None:
        """Start the kernel's writeback of the hashed prefix up to `end` (Linux: returns
        at once), in order and in steps of WRITEBACK_BYTES, as a sequential writer would;
        called by the lane's holder only."""
        start = self._written_back
        if end - start < WRITEBACK_BYTES:
            return
        self._written_back = end
        with contextlib.suppress(OSError):
            fd = os.open(self.tmp, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def _read_back(self, fd: int, offset: int, length: int) -> None:
        buffer = bytearray(min(_READ_BYTES, length))
        view = memoryview(buffer)
        end = offset + length
        while offset < end:
            got = os.preadv(fd, [view[: min(len(buffer), end - offset)]], offset)
            if not got:
                raise AssemblyError(
                    f"payload {self.hex_id}: staging file ends at {offset}, expected {end}"
                )
            self._content_hash.update(view[:got])
            offset += got

    # -- the end -------------------------------------------------------------------------

    def finish(
        self,
        *,
        fsync: bool = True,
        syncer: GroupSync | None = None,
        record: Recorder | None = None,
        now: float | None = None,
    ) -> PublishedInfo:
        """Publish files_dir/<name> once every chunk is decompressed and hashed: check
        the ranges, size and payload digest, fsync, rename, fsync the directory, record
        (assembly.publish_staged). Raises AssemblyError when the payload is not the one
        declared, IngestStorageError, and what `record` raises."""
        info = self.info
        with self._lock:
            ranges = dict(self._ranges)
            hashed = self._next_hash
        if hashed != info.total or len(ranges) != info.total:
            raise AssemblyError(
                f"payload {self.hex_id}: {hashed} of {info.total} chunks assembled, cannot publish"
            )
        expected = 0
        for index in range(info.total):
            offset, length = ranges[index]
            if offset != expected:
                raise AssemblyError(
                    f"chunk {index} of {self.hex_id} starts at content offset {offset}, "
                    f"expected {expected}"
                )
            expected += length
        if expected != self.content_size:
            raise AssemblyError(
                f"payload {self.hex_id} declared content size {self.content_size}, "
                f"its chunks hold {expected} bytes"
            )
        if self.bytes_in != info.size:
            raise AssemblyError(
                f"payload {self.hex_id} has size {info.size}, "
                f"its patches hold {self.bytes_in} bytes"
            )
        payload_digest = self._payload_hash.digest()
        if info.payload_digest is not None and payload_digest != info.payload_digest:
            raise AssemblyError(
                f"payload {self.hex_id} hashes to payload digest {payload_digest.hex()},"
                f" its chunks declared {info.payload_digest.hex()}"
            )
        with os_errors("assemble", self.tmp):
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CLOEXEC)
            on_disk = os.fstat(fd).st_size
        if on_disk != self.content_size:
            os.close(fd)
            raise IngestStorageError(
                f"payload {self.hex_id}: staging file holds {on_disk} bytes, expected "
                f"{self.content_size}"
            )
        staged = Staged(info=info, final_path=self.files_dir / info.name, tmp=self.tmp, fd=fd)
        staged.size = self.content_size
        staged.digest = self._content_hash.digest()
        staged.payload_digest = payload_digest
        staged.bytes_in = self.bytes_in
        staged.frames = info.total
        try:
            published = publish_staged(
                staged,
                files_dir=self.files_dir,
                fsync=fsync,
                syncer=syncer,
                record=record,
                now=now if now is not None else time.time(),
            )
        finally:
            self.placed = staged.placed
        return published

    def discard(self) -> None:
        """Remove the staging file unless it was placed (safe at any point, and again)."""
        if not self.placed:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
