"""Durable file operations of the ingest store: atomic writes, directory fsync, OS errors.

Blocking: called from the server's I/O threads, never on the event loop.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import mmap
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Final, final

from postoffice.core.errors import translate_os_error
from postoffice.ingest.errors import IngestStorageError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def os_errors(action: str, path: Path) -> Iterator[None]:
    """Translate OSError into IngestStorageError naming the path and the OS's reason."""
    try:
        yield
    except OSError as exc:
        where = exc.filename if exc.filename is not None else path
        raise translate_os_error(exc, IngestStorageError, f"{action} {where}") from exc


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or a new entry in it survives a crash."""
    with os_errors("fsync", path):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


#: O_DIRECT writes need the memory, the file offset and the length aligned to the
#: device's logical block; 4096 covers the common ones (512 and 4096).
DIRECT_ALIGN_BYTES: Final = 4096
#: O_DIRECT writes go through one reused, page-aligned buffer per thread of this size.
DIRECT_BUFFER_BYTES: Final = 4 * 1024 * 1024

_direct_buffers = threading.local()


def write_file(path: Path, data: bytes | memoryview, *, fsync: bool, direct: bool = False) -> None:
    """Create or truncate `path`, write `data`, fsync it; no rename, no directory fsync.

    For files whose commit point is elsewhere (a patch is committed by its ids.list
    line): a torn file left by a crash is never committed, so it needs no tmp name.
    With `direct`, the block-aligned part of `data` bypasses the page cache (O_DIRECT,
    through a reused aligned buffer) and only the tail is buffered: for bytes that no
    one will read back from the file soon. Where the file system refuses O_DIRECT, the
    write is buffered instead. The file is as durable either way once this returns.
    Raises IngestStorageError.
    """
    with os_errors("write", path):
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        direct = direct and len(data) >= DIRECT_ALIGN_BYTES
        fd = -1
        if direct:
            try:
                fd = os.open(path, flags | os.O_DIRECT, 0o644)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                direct = False  # this file system has no O_DIRECT
        if fd < 0:
            fd = os.open(path, flags, 0o644)
        try:
            view = memoryview(data)
            if direct:
                offset = _write_direct(fd, view)
                os.lseek(fd, offset, os.SEEK_SET)
                view = view[offset:]
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)  # never committed: leave no torn file behind
            raise
        os.close(fd)


def _write_direct(fd: int, view: memoryview) -> int:
    """Write the block-aligned prefix of `view` to `fd` (opened with O_DIRECT) from the
    thread's aligned buffer, then turn O_DIRECT off for the rest; returns the offset
    reached. A write the file system refuses (EINVAL) or cuts short ends the direct part
    early: the caller writes the rest buffered from there."""
    buffer: mmap.mmap | None = getattr(_direct_buffers, "buffer", None)
    if buffer is None:
        buffer = mmap.mmap(-1, DIRECT_BUFFER_BYTES)  # page-aligned, reused by this thread
        _direct_buffers.buffer = buffer
    aligned = len(view) - len(view) % DIRECT_ALIGN_BYTES
    offset = 0
    with memoryview(buffer) as staging:
        while offset < aligned:
            size = min(DIRECT_BUFFER_BYTES, aligned - offset)
            staging[:size] = view[offset : offset + size]
            try:
                written = os.pwrite(fd, staging[:size], offset)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                break
            offset += written
            if written != size:
                break
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
    return offset


@final
class GroupSync:
    """fsync a file or directory on behalf of many threads at once (group commit).

    `sync(path)` returns once an fsync of `path` that *started after the call* has
    succeeded, so whatever the caller wrote or renamed before calling is durable. Callers
    that arrive while an fsync runs share the next one: N concurrent commits cost about 2
    fsyncs instead of N. A failed fsync raises in every caller that was counting on it.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        # path -> [started generation, finished generation, running, failed generation]
        self._state: dict[Path, list[int]] = {}

    def sync(self, path: Path) -> None:
        """Make `path`'s earlier changes durable. Raises IngestStorageError."""
        with self._cond:
            state = self._state.setdefault(path, [0, 0, 0, -1])
            target = state[0] + 1  # the first fsync to start from now on
            while True:
                if state[3] >= target:
                    raise IngestStorageError(f"cannot fsync {path}: the fsync failed")
                if state[1] >= target:
                    break
                if state[2]:
                    self._cond.wait()
                    continue
                state[0] += 1
                state[2] = 1
                generation = state[0]
                self._cond.release()
                failed = True
                try:
                    _fsync_path(path)
                    failed = False
                finally:
                    self._cond.acquire()
                    state[2] = 0
                    state[1 if not failed else 3] = generation
                    self._cond.notify_all()
            if (
                not state[2]
                and state[1] == state[0]
                and len(self._state) > 1024
                and self._state.get(path) is state
            ):
                # forget idle paths: payload directories come and go. Another caller that
                # shared this fsync may have forgotten it first, or a new one begun anew.
                del self._state[path]


def _fsync_path(path: Path) -> None:
    with os_errors("fsync", path):
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, data: bytes, *, fsync: bool, sync_dir: bool = True) -> None:
    """Write `data` to `path` all or nothing: a unique tmp, fsync, rename, fsync the dir.

    `sync_dir=False` leaves the directory fsync to the caller, who may cover several
    renames with one. Raises IngestStorageError; the tmp file is removed on failure.
    """
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(6)}.tmp")
    with os_errors("write", path):
        try:
            with open(tmp, "xb") as out:
                out.write(data)
                if fsync:
                    out.flush()
                    os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
    if fsync and sync_dir:
        fsync_dir(path.parent)


def discard(path: Path) -> None:
    """Delete a leftover file or directory; failures are only logged."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("cannot remove path=%s error=%r", path, exc.strerror or str(exc))
