"""Durable file operations of the ingest store: atomic writes, directory fsync, OS errors.

Blocking: called from the server's I/O threads, never on the event loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from postoffice.ingest.errors import IngestStorageError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def os_errors(action: str, path: Path) -> Iterator[None]:
    """Translate OSError into IngestStorageError naming the path and the OS's reason."""
    try:
        yield
    except OSError as exc:
        where = exc.filename if exc.filename is not None else path
        raise IngestStorageError(f"cannot {action} {where}: {exc.strerror or exc}") from exc


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or a new entry in it survives a crash."""
    with os_errors("fsync", path):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
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
