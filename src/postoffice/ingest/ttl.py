"""TTL cleanup of the ingest service: one blocking pass over the store and files_dir.

I/O layer: the server runs `cleanup_pass` in a thread, on a timer and on CLEANUP.
"""

# Design
# ------
# A pass removes four kinds of leftovers, each judged on its own clock:
#
#   expired uploads   payloads never completed (or whose assembly failed), by their last
#                     chunk's time (`PayloadInfo.updated`)
#   expired files     published files in files_dir, by their mtime
#   expired records   published records (what lets a late SUBSCRIBE learn of a publish)
#   stray files       hidden staging files (`.<name>.<file id>.tmp`, `.part`, or
#                     `.previous`: a replaced file's second name until its replacement is
#                     recorded) that an assembly left behind when the process died, after
#                     a short grace
#
# Anything a running assembly may be touching (its file id in `busy`, or a published name
# that a busy upload is about to replace) is left alone, and so are payload directories
# the store found unreadable (not in `payloads()`: they wait for an operator). Every
# removal is tried on its own: an error is logged, listed in the report, the pass goes on.

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from postoffice.core.errors import StorageError
from postoffice.ingest.errors import BadNameError
from postoffice.ingest.messages import FileId, check_name, file_id_hex
from postoffice.ingest.storage import ChunkStore

log = logging.getLogger(__name__)

#: Hidden staging names the assembler writes next to the final file. Upload names can
#: never start with ".", so these never clash with a published file.
_STAGING_NAME: Final = re.compile(
    r"\.(?P<name>.+)\.(?P<file_id>[0-9a-f]{32})\.(?:tmp|part|previous)"
)
#: How long an unclaimed staging file may sit before it counts as stray: an assembly that
#: is starting may not be in `busy` yet when the pass lists the directory.
STRAY_GRACE_S: Final = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CleanupReport:
    """What one cleanup pass removed, and what it could not remove.

    `expired_uploads` are file ids (hex), `expired_files` and `stray_files` are names in
    files_dir, `errors` one line per item that failed.
    """

    expired_uploads: tuple[str, ...] = ()
    expired_files: tuple[str, ...] = ()
    expired_records: int = 0
    stray_files: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    expired_failures: int = 0  # failed uploads forgotten (the server's, not the pass's)

    @property
    def total(self) -> int:
        """How many things were removed: uploads, files, records, stray files and
        failures."""
        return (
            len(self.expired_uploads)
            + len(self.expired_files)
            + self.expired_records
            + len(self.stray_files)
            + self.expired_failures
        )


def is_expired(updated: float, now: float, ttl_s: float) -> bool:
    """Whether something last changed at `updated` is older than `ttl_s` at `now`.

    A time in the future (the wall clock stepped back) is never expired.
    """
    return now - updated > ttl_s


def cleanup_pass(
    *,
    store: ChunkStore,
    files_dir: Path,
    ttl_s: float,
    now: float,
    busy: Collection[bytes] = (),
    stray_grace_s: float = STRAY_GRACE_S,
) -> CleanupReport:
    """Remove expired uploads, published files and records, and stray staging files.

    Blocking (run it in a thread). `now` is wall-clock time (`time.time()`), the clock of
    `PayloadInfo.updated`, `PublishedInfo.published_at` and file mtimes. File ids in `busy`
    are being assembled: their patches, staging files and target names are skipped.
    Raises nothing for a single item: each failure is logged and listed in `errors`.
    """
    errors: list[str] = []
    busy_ids = frozenset(busy)
    busy_names = _names_of(store, busy_ids)

    expired_uploads: list[str] = []
    for info in store.payloads():
        if info.file_id in busy_ids or not is_expired(info.updated, now, ttl_s):
            continue
        hex_id = file_id_hex(info.file_id)
        try:
            removed = store.remove(info.file_id)
        except (OSError, StorageError) as exc:
            _failed(errors, f"cannot remove upload {hex_id}", exc)
            continue
        if removed:
            expired_uploads.append(hex_id)
            log.info(
                "upload expired file_id=%s name=%r age_s=%.0f",
                hex_id,
                info.name,
                now - info.updated,
            )

    expired_records = 0
    for record in store.published_records():
        if record.file_id in busy_ids or not is_expired(record.published_at, now, ttl_s):
            continue
        try:
            store.forget_published(record.file_id)
        except (OSError, StorageError) as exc:
            _failed(errors, f"cannot forget published {file_id_hex(record.file_id)}", exc)
            continue
        expired_records += 1

    expired_files: list[str] = []
    stray_files: list[str] = []
    for name, mtime in _regular_files(files_dir, errors):
        staging = _STAGING_NAME.fullmatch(name)
        if staging is not None:
            removable = (
                is_expired(mtime, now, stray_grace_s)
                and _valid_name(staging["name"])
                and bytes.fromhex(staging["file_id"]) not in busy_ids
            )
            found, what = stray_files, "stray staging file removed"
        else:
            removable = (
                is_expired(mtime, now, ttl_s) and name not in busy_names and _valid_name(name)
            )
            found, what = expired_files, "published file expired"
        if removable and _unlink(files_dir / name, errors):
            found.append(name)
            log.info("%s name=%r age_s=%.0f", what, name, now - mtime)

    return CleanupReport(
        expired_uploads=tuple(expired_uploads),
        expired_files=tuple(expired_files),
        expired_records=expired_records,
        stray_files=tuple(stray_files),
        errors=tuple(errors),
    )


def _names_of(store: ChunkStore, busy_ids: frozenset[bytes]) -> frozenset[str]:
    # A busy upload is about to os.replace its file over this name: deleting the old file
    # now could, after a lost race, delete the new one instead.
    names: set[str] = set()
    for file_id in busy_ids:
        info = store.info(FileId(file_id))
        if info is not None:
            names.add(info.name)
    return frozenset(names)


def _regular_files(files_dir: Path, errors: list[str]) -> list[tuple[str, float]]:
    """(name, mtime) of the regular files in files_dir; symlinks are never followed."""
    found: list[tuple[str, float]] = []
    try:
        with os.scandir(files_dir) as entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed since it was listed
                except OSError as exc:
                    _failed(errors, f"cannot stat {entry.path}", exc)
                    continue
                if stat.S_ISREG(st.st_mode):
                    found.append((entry.name, st.st_mtime))
    except FileNotFoundError:
        return []  # nothing was ever published
    except OSError as exc:
        _failed(errors, f"cannot list {files_dir}", exc)
    return found


def _valid_name(name: str) -> bool:
    try:
        check_name(name)
    except (BadNameError, UnicodeError):  # a non-UTF-8 name on disk arrives with surrogates
        return False
    return True


def _unlink(path: Path, errors: list[str]) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False  # gone already: not ours to count
    except OSError as exc:
        _failed(errors, f"cannot remove {path}", exc)
        return False
    return True


def _failed(errors: list[str], what: str, exc: BaseException) -> None:
    message = f"{what}: {exc}"
    log.warning("cleanup failed error=%r", message)
    errors.append(message)
