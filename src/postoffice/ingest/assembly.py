"""Assembly of ingest payloads: stream the patches through zstd into files_dir.

I/O layer, blocking: the server runs it in a worker thread.
"""

# Design
# ------
# Input is the payload's pieces in index order, read in 1 MiB blocks: patch files, or
# (for a one-chunk upload published before its ACK) the chunk's bytes in memory; with
# via_part the patches are first concatenated into files_dir/.<name>.<id>.part, fsynced,
# and read back from there. The pieces come from `next_piece(index)`, which may block:
# the server's streaming assembler starts on an upload's first chunk and waits for each
# next index to be committed, so decompression runs while later chunks arrive.
# Each block goes through two readers:
#   - FrameWalker, a small state machine over the zstd frame format (RFC 8878) that
#     reads frame and block headers and skips block contents. zstandard's stream_reader
#     returns a short output without complaint when the input ends inside a frame; the
#     walker catches that, names bytes after the last frame that are not a frame, and
#     checks each frame's window against the limit before zstd allocates it;
#   - zstandard's stream_reader(read_across_frames=True), which decodes every frame (as
#     `zstd -d` does) into output blocks of at most 1 MiB, so memory stays bounded and a
#     bomb costs one block, not its decompressed size.
# The input is hashed (XXH3-128: the payload digest) as it is read. Output goes to the
# hidden staging file files_dir/.<name>.<id>.tmp through reused buffers, counted (a block
# that would pass max_output_bytes stops the assembly before it is written) and hashed
# (XXH3-128: the content digest) on this thread, and written by a writer thread that
# also starts the kernel's writeback every WRITEBACK_BYTES (so the final fsync waits for
# a tail, not for the whole file: 256 MiB of log output took 0.55-0.62 s with it, against
# 0.73-0.86 s, a third of it in the final fsync, without); then fsync, os.replace onto
# files_dir/<name> (the last publish of a name wins), fsync files_dir (shared with
# concurrent publishes). A `tee` (a cluster node's multipart upload to S3) gets each
# block on the writer thread after its write. Upload names never start with ".", so
# staging files never clash with a published file, and a file under an upload name is
# never partial. On any failure the .tmp and the .part are removed and the patches are
# left as they were.

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, TypeAlias, final

import xxhash
import zstandard

from postoffice.ingest.durable import GroupSync, fsync_dir, os_errors
from postoffice.ingest.errors import AssemblyError, OutputLimitError, OutputRatioError
from postoffice.ingest.messages import FileId, check_name, file_id_hex
from postoffice.ingest.patches import PayloadInfo
from postoffice.ingest.published import PublishedInfo, Recorder
from postoffice.ingest.zstdframes import FrameWalker

log = logging.getLogger(__name__)

#: Read and write size: large enough that per-block Python overhead vanishes next to
#: zstd's work, small enough that a bomb or a huge patch costs little memory.
BLOCK_BYTES: Final = 1024 * 1024
#: Output blocks that may wait for the writer thread: bounds memory (8 MiB of buffers).
PIPELINE_BLOCKS: Final = 8
#: The writer asks the kernel to start writing back the output after this many bytes,
#: without waiting for it (posix_fadvise DONTNEED on the written range).
WRITEBACK_BYTES: Final = 16 * 1024 * 1024
#: The first output buffer: most uploads are small files, which need no more (a larger
#: one costs its allocation and page faults for every small file).
FIRST_BLOCK_BYTES: Final = 64 * 1024
#: NAME_MAX of common file systems: a staging name must fit it too.
MAX_FILE_NAME_BYTES: Final = 255
#: The ratio limit (decompressed to compressed bytes) applies once the output passes this
#: many bytes, as the ratio checks of archive readers (Apache Tika's, POI's) have a
#: threshold: a file of a few megabytes may compress as well as it likes (a log of one
#: repeated line does 10000:1), while a bomb costs at most this much disk, for a moment.
RATIO_GRACE_BYTES: Final = 16 * 1024 * 1024


Piece: TypeAlias = Path | bytes | memoryview
"""One chunk of a payload: its patch file, or its bytes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AssemblyStats:
    """What one assembly cost: compressed bytes read, bytes written, zstd frames, seconds."""

    bytes_in: int
    bytes_out: int
    frames: int
    seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AssemblyResult:
    """The publish record of an assembly and its figures."""

    published: PublishedInfo
    stats: AssemblyStats


def staging_path(files_dir: Path, name: str, file_id: FileId, suffix: str) -> Path:
    """files_dir/.<name>.<file id hex>.<suffix> (suffix "tmp" or "part").

    A name too long for the staging name to fit NAME_MAX is cut on a character
    boundary (and right-stripped), so the staging name stays a valid hidden name.
    """
    tail = f".{file_id_hex(file_id)}.{suffix}"
    budget = MAX_FILE_NAME_BYTES - 1 - len(tail)
    encoded = name.encode()
    if len(encoded) > budget:
        name = encoded[:budget].decode(errors="ignore").rstrip()
    return files_dir / f".{name}{tail}"


def assemble(
    *,
    info: PayloadInfo,
    patches: Sequence[Piece] | None = None,
    next_piece: Callable[[int], Piece] | None = None,
    files_dir: Path,
    max_output_bytes: int,
    max_window_log: int,
    max_output_ratio: int = 0,
    via_part: bool = False,
    fsync: bool = True,
    now: float | None = None,
    syncer: GroupSync | None = None,
    record: Recorder | None = None,
    tee: Callable[[memoryview], None] | None = None,
) -> PublishedInfo:
    """Decompress a payload into files_dir/<info.name>; see assemble_with_stats."""
    return assemble_with_stats(
        info=info,
        patches=patches,
        next_piece=next_piece,
        files_dir=files_dir,
        max_output_bytes=max_output_bytes,
        max_window_log=max_window_log,
        max_output_ratio=max_output_ratio,
        via_part=via_part,
        fsync=fsync,
        now=now,
        syncer=syncer,
        record=record,
        tee=tee,
    ).published


def assemble_with_stats(
    *,
    info: PayloadInfo,
    patches: Sequence[Piece] | None = None,
    next_piece: Callable[[int], Piece] | None = None,
    files_dir: Path,
    max_output_bytes: int,
    max_window_log: int,
    max_output_ratio: int = 0,
    via_part: bool = False,
    fsync: bool = True,
    now: float | None = None,
    syncer: GroupSync | None = None,
    record: Recorder | None = None,
    tee: Callable[[memoryview], None] | None = None,
) -> AssemblyResult:
    """Join the pieces in order, zstd-decompress them and publish files_dir/<info.name>.

    Give either `patches` (all of them, checked against `info` first) or `next_piece`
    (piece i for i in 0..info.total-1, asked for in order; it may block until the piece
    exists, and whatever it raises ends the assembly). Concatenated frames and skippable
    frames are accepted, as `zstd -d` does. `now` is the wall-clock publish time
    (default: time.time()); `syncer` shares the fsync of files_dir with concurrent
    publishes. The file appears whole or not at all; an existing file of that name is
    replaced (`replaced=True`). `record` (the store's mark_published) is called once the
    file and its directory entry are durable: the commit point. If it (or that fsync)
    fails, the file is taken back out and a file it replaced is put back, so a publish
    that is not recorded leaves nothing in files_dir. `max_output_ratio` (0: none)
    bounds the output, once past RATIO_GRACE_BYTES, to that many times the compressed
    bytes read so far. `tee`, if given, is handed each output block once it is written,
    in order, on the thread that wrote it (it must copy what it keeps: the buffer is
    reused after it returns); what it raises ends the assembly.
    Raises AssemblyError for a payload that will never decompress or is not the one
    declared (piece count, sizes or payload digest that disagree with `info`, not zstd,
    truncated, trailing bytes, a window over 2**max_window_log, output over
    max_output_bytes or over the ratio: OutputLimitError, OutputRatioError), BadNameError
    for a bad name, and
    IngestStorageError when the disk fails (the patches are intact: retry later), and
    whatever `record` raises.
    """
    began = time.monotonic()
    staged = stage(
        info=info,
        patches=patches,
        next_piece=next_piece,
        files_dir=files_dir,
        max_output_bytes=max_output_bytes,
        max_window_log=max_window_log,
        max_output_ratio=max_output_ratio,
        via_part=via_part,
        fsync=fsync,
        tee=tee,
    )
    published = publish_staged(
        staged, files_dir=files_dir, fsync=fsync, syncer=syncer, record=record, now=now
    )
    stats = AssemblyStats(
        bytes_in=staged.bytes_in,
        bytes_out=staged.size,
        frames=staged.frames,
        seconds=time.monotonic() - began,
    )
    return AssemblyResult(published=published, stats=stats)


def publish_staged(
    staged: Staged,
    *,
    files_dir: Path,
    fsync: bool = True,
    syncer: GroupSync | None = None,
    record: Recorder | None = None,
    now: float | None = None,
) -> PublishedInfo:
    """Publish a staged file: fsync it, rename it onto its name, fsync files_dir (shared
    through `syncer`), then `record` it: the commit point. A publish not recorded is
    taken back (see assemble_with_stats). The staged file is discarded in any case.
    Raises IngestStorageError and whatever `record` raises."""
    try:
        if fsync:
            staged.sync()
        replaced = staged.place()
        published = staged.published(replaced=replaced, now=now)
        try:
            if fsync:
                if syncer is not None:
                    syncer.sync(files_dir)
                else:
                    fsync_dir(files_dir)
            if record is not None:
                published = record(published) or published
        except BaseException:
            staged.unplace()
            raise
        staged.settle()
    finally:
        staged.discard()
    return published


@final
class Staged:
    """A payload decompressed into its hidden staging file, still open and not durable.

    `sync()` fsyncs it, `place()` renames it onto its final name; then either `settle()`
    (the publish is recorded: forget the file it replaced) or `unplace()` (the publish
    failed: take it back out, and put back the file it replaced). `discard()` (safe at any
    point, and again) closes the file and removes the staging file unless it was placed.
    """

    __slots__ = (
        "_fd",
        "_previous",
        "bytes_in",
        "digest",
        "final_path",
        "frames",
        "info",
        "payload_digest",
        "placed",
        "size",
        "tmp",
    )

    def __init__(self, *, info: PayloadInfo, final_path: Path, tmp: Path, fd: int) -> None:
        self.info = info
        self.final_path = final_path
        self.tmp = tmp
        self._fd = fd
        self.placed = False
        self.size = 0
        self.bytes_in = 0
        self.frames = 0
        self.digest = b""
        self.payload_digest = b""
        # A second name of the file this publish replaces, until the publish is recorded.
        self._previous: Path | None = None

    def __repr__(self) -> str:
        return f"<Staged {self.tmp.name} size={self.size} placed={self.placed}>"

    def sync(self) -> None:
        """fsync the staging file. Raises IngestStorageError."""
        with os_errors("fsync", self.tmp):
            os.fsync(self._fd)

    def place(self) -> bool:
        """Rename the staging file onto the final name; True if that replaced a file.

        The replaced file keeps a hidden second name (a hard link, no copy) until
        settle() or unplace(). Raises IngestStorageError.
        """
        self._close()
        previous = staging_path(
            self.final_path.parent, self.info.name, self.info.file_id, "previous"
        )
        with os_errors("publish", self.final_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(previous)  # a crash's leftover
            try:
                os.link(self.final_path, previous, follow_symlinks=False)
            except FileNotFoundError:
                replaced = False
            else:
                replaced = True
                self._previous = previous
            os.replace(self.tmp, self.final_path)
        self.placed = True
        return replaced

    def settle(self) -> None:
        """The publish is recorded: drop the replaced file's second name."""
        previous, self._previous = self._previous, None
        if previous is not None:
            with contextlib.suppress(OSError):
                os.unlink(previous)

    def unplace(self) -> None:
        """The publish failed after place(): remove the file, and put back the one it
        replaced. Best effort: a failure here is logged, the original error matters more."""
        if not self.placed:
            return
        previous, self._previous = self._previous, None
        self.placed = False
        try:
            if previous is not None:
                os.replace(previous, self.final_path)
            else:
                os.unlink(self.final_path)
        except OSError as exc:
            log.warning("unpublish failed path=%s error=%r", self.final_path, exc)

    def discard(self) -> None:
        """Close the file and remove the staging file if it was not placed."""
        self._close()
        if not self.placed:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)

    def published(self, *, replaced: bool, now: float | None = None) -> PublishedInfo:
        """The publish record of this payload (`now`: wall-clock time, default now)."""
        return PublishedInfo(
            file_id=self.info.file_id,
            name=self.info.name,
            size=self.size,
            digest=self.digest,
            payload_digest=self.payload_digest,
            published_at=time.time() if now is None else now,
            replaced=replaced,
        )

    def _close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


def stage(
    *,
    info: PayloadInfo,
    patches: Sequence[Piece] | None = None,
    next_piece: Callable[[int], Piece] | None = None,
    files_dir: Path,
    max_output_bytes: int,
    max_window_log: int,
    max_output_ratio: int = 0,
    via_part: bool = False,
    fsync: bool = True,
    tee: Callable[[memoryview], None] | None = None,
) -> Staged:
    """Decompress the pieces into the staging file of files_dir/<info.name>, unsynced.

    The pieces and the errors are as for assemble_with_stats (`fsync` only concerns the
    `.part` of via_part). On an error nothing is left behind; otherwise the caller
    publishes the result with Staged.sync and Staged.place, and calls Staged.discard.
    """
    name = check_name(info.name)
    hex_id = file_id_hex(info.file_id)
    if (patches is None) == (next_piece is None):
        raise ValueError("give exactly one of patches and next_piece")
    if patches is not None:
        _check_patches(info, patches, hex_id)
        next_piece = patches.__getitem__
    assert next_piece is not None
    tmp = staging_path(files_dir, name, info.file_id, "tmp")
    part = staging_path(files_dir, name, info.file_id, "part") if via_part else tmp
    staged: Staged | None = None
    try:
        with os_errors("create", files_dir):
            if not os.path.isdir(files_dir):  # one stat, not a raised and caught EEXIST
                files_dir.mkdir(parents=True, exist_ok=True)
        walker = FrameWalker(max_window_size=1 << max_window_log, hex_id=hex_id)
        if via_part:
            _concatenate([next_piece(i) for i in range(info.total)], part, fsync=fsync)
            source = _ChainedReader([part].__getitem__, 1, walker)
        else:
            source = _ChainedReader(next_piece, info.total, walker)
        with os_errors("assemble", tmp):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            staged = Staged(info=info, final_path=files_dir / name, tmp=tmp, fd=fd)
            with _Sink(fd, tee) as sink:
                staged.size = _decompress(
                    source,
                    sink,
                    max_window_log=max_window_log,
                    max_output_bytes=max_output_bytes,
                    max_output_ratio=max_output_ratio,
                    hex_id=hex_id,
                    read_size=max(4096, min(BLOCK_BYTES, info.size)),
                )
        walker.finish()
        if source.bytes_read != info.size:
            raise AssemblyError(
                f"payload {hex_id} has size {info.size}, its patches hold {source.bytes_read} bytes"
            )
        if info.content_size is not None and staged.size != info.content_size:
            # A FRAMED upload assembled as one stream (--via-part, one chunk): its chunks
            # declared the content size, which the output must have.
            raise AssemblyError(
                f"payload {hex_id} declared content size {info.content_size}, "
                f"it decompresses to {staged.size} bytes"
            )
    except BaseException:
        if staged is not None:
            staged.discard()
        raise
    finally:
        if via_part:
            with contextlib.suppress(OSError):
                part.unlink(missing_ok=True)
    payload_digest = source.digest.digest()
    if info.payload_digest is not None and payload_digest != info.payload_digest:
        # The chunks are not the content the upload declared: a sender's bug, or two
        # senders' chunks under one id. Neither is published.
        staged.discard()
        raise AssemblyError(
            f"payload {hex_id} hashes to payload digest {payload_digest.hex()},"
            f" its chunks declared {info.payload_digest.hex()}"
        )
    staged.digest = sink.digest.digest()
    staged.payload_digest = payload_digest
    staged.bytes_in = source.bytes_read
    staged.frames = walker.frames
    return staged


def _decompress(
    source: _ChainedReader,
    sink: _Sink,
    *,
    max_window_log: int,
    max_output_bytes: int,
    max_output_ratio: int,
    hex_id: str,
    read_size: int = BLOCK_BYTES,
) -> int:
    """Decode every frame of `source` into `sink`; returns the bytes written.

    Each block is checked against the limits before it is written, so a bomb never puts
    more than the limit on the disk (and the caller removes what it did put there).
    """
    decompressor = zstandard.ZstdDecompressor(max_window_size=1 << max_window_log)
    bytes_out = 0
    try:
        with decompressor.stream_reader(
            source,  # type: ignore[arg-type]  # zstandard needs only read(), not IO
            read_size=read_size,
            read_across_frames=True,
            closefd=False,
        ) as reader:
            while True:
                block = sink.buffer()
                size = reader.readinto(block)
                if not size:
                    break
                bytes_out += size
                if bytes_out > max_output_bytes:
                    raise OutputLimitError(
                        f"payload {hex_id}: decompressed output exceeds limit {max_output_bytes}"
                    )
                if (
                    max_output_ratio
                    and bytes_out > RATIO_GRACE_BYTES
                    and bytes_out > max_output_ratio * source.bytes_read
                ):
                    raise OutputRatioError(
                        f"payload {hex_id}: decompressed output exceeds ratio limit "
                        f"{max_output_ratio}: {bytes_out} bytes from {source.bytes_read} "
                        "compressed bytes"
                    )
                sink.put(block[:size])
    except zstandard.ZstdError as exc:
        raise AssemblyError(f"payload {hex_id} is not valid zstandard: {exc}") from exc
    finally:
        source.close()
    return bytes_out


def _check_patches(info: PayloadInfo, patches: Sequence[Piece], hex_id: str) -> None:
    """The patches must be the payload's: one per index, adding up to its size."""
    if len(patches) != info.total:
        raise AssemblyError(
            f"payload {hex_id} has total {info.total}, assembly was given {len(patches)} patches"
        )
    found = 0
    for piece in patches:
        if isinstance(piece, Path):
            with os_errors("stat", piece):
                found += os.stat(piece).st_size
        else:
            found += len(piece)
    if found != info.size:
        raise AssemblyError(
            f"payload {hex_id} has size {info.size}, its patches hold {found} bytes"
        )


def _concatenate(pieces: Sequence[Piece], part: Path, *, fsync: bool) -> None:
    with os_errors("write", part), open(part, "wb") as out:
        for piece in pieces:
            if isinstance(piece, Path):
                with open(piece, "rb") as patch:
                    shutil.copyfileobj(patch, out, BLOCK_BYTES)
            else:
                out.write(piece)
        if fsync:
            out.flush()
            os.fsync(out.fileno())


def _write_all(fd: int, block: memoryview, written_before: int) -> None:
    view = block
    while view:
        view = view[os.write(fd, view) :]
    end = written_before + len(block)
    if end // WRITEBACK_BYTES != written_before // WRITEBACK_BYTES:
        # Start writing back what is written so far; returns at once (Linux).
        start = (end // WRITEBACK_BYTES - 1) * WRITEBACK_BYTES
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, start, WRITEBACK_BYTES, os.POSIX_FADV_DONTNEED)


@final
class _Sink:
    """Hashes output blocks and writes them in order, overlapping the writes with
    decompression through reused buffers.

    The first block is written inline (most files fit in one, and need no thread); from
    the second on, a writer thread writes them, at most PIPELINE_BLOCKS behind. zstd and
    file writes release the GIL, so they run at the same time on 2 cores.
    """

    def __init__(self, fd: int, tee: Callable[[memoryview], None] | None = None) -> None:
        self._fd = fd
        self._tee = tee
        self.digest = xxhash.xxh3_128()
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[tuple[Future[None], int]] = deque()  # (write, buffer index)
        self._buffers: list[bytearray] = []
        self._next = 0
        self._written = 0

    def __enter__(self) -> _Sink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        try:
            while exc_type is None and self._pending:
                self._pending.popleft()[0].result()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)

    def buffer(self) -> memoryview:
        """A free output buffer (FIRST_BLOCK_BYTES, then BLOCK_BYTES): the ring's next one,
        once its write is done.

        While the output so far fits the first buffer (written inline, so free again), that
        one comes back: a small file's last read, which finds the end, costs no new
        megabyte buffer.
        """
        if self._pool is None and len(self._buffers) == 1 and self._written < FIRST_BLOCK_BYTES:
            return memoryview(self._buffers[0])
        if len(self._buffers) < PIPELINE_BLOCKS + 1:
            self._buffers.append(bytearray(FIRST_BLOCK_BYTES if not self._buffers else BLOCK_BYTES))
            self._next = len(self._buffers) - 1
        index = self._next
        self._next = (index + 1) % (PIPELINE_BLOCKS + 1)
        while any(used == index for _, used in self._pending):
            self._pending.popleft()[0].result()  # writes finish in order
        return memoryview(self._buffers[index])

    def put(self, block: memoryview) -> None:
        """Hash and write `block`, a view of the buffer last returned by buffer()."""
        self.digest.update(block)
        written, self._written = self._written, self._written + len(block)
        write = _write_all if self._tee is None else self._write_and_tee
        if not written:
            write(self._fd, block, written)  # the first block: inline, no thread
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="assembly-write")
        used = (self._next - 1) % (PIPELINE_BLOCKS + 1)
        self._pending.append((self._pool.submit(write, self._fd, block, written), used))

    def _write_and_tee(self, fd: int, block: memoryview, written_before: int) -> None:
        # in the same write, so the buffer is not reused before the tee has had it
        _write_all(fd, block, written_before)
        assert self._tee is not None
        self._tee(block)


@final
class _ChainedReader:
    """A read() over the pieces in turn, feeding every block to the frame walker and the
    payload digest. `next_piece(i)` is asked for each piece once, in order."""

    def __init__(self, next_piece: Callable[[int], Piece], total: int, walker: FrameWalker) -> None:
        self._next_piece = next_piece
        self._total = total
        self._next = 0
        self._file: BinaryIO | None = None
        self._memory: memoryview | None = None
        self._walker = walker
        self.digest = xxhash.xxh3_128()
        self.bytes_read = 0

    def read(self, size: int = BLOCK_BYTES) -> bytes | memoryview:
        """The next block of at most `size` bytes (b"" at the end). A piece in memory is
        handed out as views of it, not copies: zstd reads them before the next read."""
        while True:
            if self._file is None and self._memory is None:
                if self._next == self._total:
                    return b""
                piece = self._next_piece(self._next)
                self._next += 1
                if isinstance(piece, Path):
                    # Not a `with`: the file stays open across read() calls.
                    self._file = open(piece, "rb", buffering=0)  # noqa: SIM115
                else:
                    self._memory = memoryview(piece)
            data: bytes | memoryview
            if self._file is not None:
                data = self._file.read(size)
                if not data:
                    self._file.close()
                    self._file = None
                    continue
            else:
                assert self._memory is not None
                data = self._memory[:size]
                self._memory = self._memory[size:] or None
                if not data:
                    continue
            self.bytes_read += len(data)
            self._walker.feed(data)
            self.digest.update(data)
            return data

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._memory = None
