"""A run's event log: the store engine opened in this process under
<data-dir>/office/runs/<run id>, one record per event, plus the run's settings and end.
Office layer; uses only `postoffice.store`'s public API."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, final

from postoffice.core.errors import PostOfficeError
from postoffice.office.errors import EventLogError
from postoffice.office.events import Event, RunEnded, decode_events, encode_events
from postoffice.store import Put, Store, StoreLockedError

__all__ = ["RunInfo", "RunLog", "list_runs", "read_events", "read_meta", "runs_dir"]

_META: Final = b"meta"
_END: Final = b"end"
_EVENT_PREFIX: Final = b"ev/"
# Events go in records of many (a day's, split past this many), one JSON array each: a
# record per event cost an index entry and a dumps call each, 3x the run's own time.
_RECORD_EVENTS: Final = 4096
_PAGE: Final = 64  # records read per scan
_SEGMENT_BYTES: Final = 8 << 20  # a run's log is small: no need for the engine's 64 MiB
_RUN_ID: Final = re.compile(r"^[0-9]{8}T[0-9]{6}Z-s[0-9]+(-[0-9]+)?$")


def runs_dir(data_dir: Path) -> Path:
    """Where the runs of the data directory live."""
    return data_dir / "office" / "runs"


def _event_key(seq: int) -> bytes:
    return b"ev/%012d" % seq


@final
class RunLog:
    """An open, new run's event log. Use `RunLog.create`; close it when the run ends.

    Each `append` writes its events as one record (more past 4096 events)."""

    def __init__(self, *, run_id: str, path: Path, store: Store) -> None:
        self.run_id = run_id
        self.path = path
        self._store = store
        self._seq = 0

    @classmethod
    def create(cls, data_dir: Path, *, seed: int, meta: dict[str, object]) -> RunLog:
        """Make a new run directory named for the time and the seed and open its log with
        `meta` (config, seed, ...) written first. Raises EventLogError."""
        base = runs_dir(data_dir)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        try:
            base.mkdir(parents=True, exist_ok=True)
            for attempt in range(1, 1000):
                run_id = f"{stamp}-s{seed}" + (f"-{attempt}" if attempt > 1 else "")
                try:
                    (base / run_id).mkdir()
                    break
                except FileExistsError:
                    continue
            else:
                raise EventLogError(f"no free run id for {stamp}-s{seed} in {base}")
        except OSError as exc:
            raise EventLogError(f"cannot create a run under {base}: {exc}") from exc
        path = base / run_id
        try:
            store = Store.open(path, durability="never", segment_bytes=_SEGMENT_BYTES)
        except PostOfficeError as exc:
            raise EventLogError(f"cannot open the event log of run {run_id}: {exc}") from exc
        log = cls(run_id=run_id, path=path, store=store)
        log._put([(_META, json.dumps({"run": run_id, **meta}).encode())])
        return log

    def append(self, events: Sequence[Event]) -> None:
        """Append events in one batch (a day's, say). Raises EventLogError."""
        ops = []
        for first in range(0, len(events), _RECORD_EVENTS):
            self._seq += 1
            ops.append(
                (_event_key(self._seq), encode_events(events[first : first + _RECORD_EVENTS]))
            )
        for event in events:
            if isinstance(event, RunEnded):
                summary = {"days": event.days, "cause": str(event.cause), "detail": event.detail}
                ops.append((_END, json.dumps(summary).encode()))
        self._put(ops)

    def _put(self, items: list[tuple[bytes, bytes]]) -> None:
        try:
            self._store.batch([Put(key=key, value=value) for key, value in items])
        except PostOfficeError as exc:
            raise EventLogError(f"cannot write the event log of run {self.run_id}: {exc}") from exc

    def close(self) -> None:
        """Flush the log to disk and close it. Raises EventLogError."""
        try:
            self._store.close()
        except PostOfficeError as exc:
            raise EventLogError(f"cannot close the event log of run {self.run_id}: {exc}") from exc

    def __repr__(self) -> str:
        return f"<RunLog {self.run_id} events={self._seq}>"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunInfo:
    """One run as `postoffice office runs` lists it; `cause` None while running or cut off."""

    run_id: str
    seed: int | None
    config: str
    days: int | None
    cause: str | None
    detail: str


def _open(path: Path) -> Store:
    if not path.is_dir():
        raise EventLogError(f"no run {path.name} under {path.parent}")
    try:
        return Store.open(path, durability="never", segment_bytes=_SEGMENT_BYTES)
    except StoreLockedError as exc:
        raise EventLogError(f"run {path.name} is still running") from exc
    except PostOfficeError as exc:
        raise EventLogError(f"cannot open the event log of run {path.name}: {exc}") from exc


def _json(store: Store, key: bytes, run_id: str) -> dict[str, object] | None:
    raw = store.get(key)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise EventLogError(f"run {run_id}: damaged {key.decode()} record") from exc
    if not isinstance(value, dict):
        raise EventLogError(f"run {run_id}: damaged {key.decode()} record")
    return value


def read_meta(data_dir: Path, run_id: str) -> dict[str, object]:
    """The settings a run was started with. Raises EventLogError."""
    path = runs_dir(data_dir) / run_id
    store = _open(path)
    try:
        meta = _json(store, _META, run_id)
    finally:
        store.close()
    if meta is None:
        raise EventLogError(f"run {run_id} has no settings record")
    return meta


def read_events(data_dir: Path, run_id: str) -> Iterator[Event]:
    """The run's events in the order they happened. Raises EventLogError."""
    if not _RUN_ID.match(run_id):
        raise EventLogError(f"{run_id!r} is not a run id (like 20250101T120000Z-s42)")
    store = _open(runs_dir(data_dir) / run_id)
    try:
        start = _EVENT_PREFIX
        while True:
            page = store.scan(prefix=_EVENT_PREFIX, start=start, limit=_PAGE)
            for _key, value in page:
                yield from decode_events(value)
            if len(page) < _PAGE:
                return
            start = page[-1][0] + b"\x00"
    except PostOfficeError as exc:
        if isinstance(exc, EventLogError):
            raise
        raise EventLogError(f"cannot read the event log of run {run_id}: {exc}") from exc
    finally:
        store.close()


def list_runs(data_dir: Path) -> list[RunInfo]:
    """Every run under the data directory, oldest first (a running one shows no cause)."""
    base = runs_dir(data_dir)
    if not base.is_dir():
        return []
    out = []
    for path in sorted(p for p in base.iterdir() if p.is_dir() and _RUN_ID.match(p.name)):
        try:
            store = _open(path)
        except EventLogError as exc:
            out.append(
                RunInfo(
                    run_id=path.name, seed=None, config="", days=None, cause=None, detail=str(exc)
                )
            )
            continue
        try:
            meta = _json(store, _META, path.name) or {}
            end = _json(store, _END, path.name) or {}
        finally:
            store.close()
        seed, days, cause = meta.get("seed"), end.get("days"), end.get("cause")
        out.append(
            RunInfo(
                run_id=path.name,
                seed=seed if isinstance(seed, int) else None,
                config=str(meta.get("config_path", "")),
                days=days if isinstance(days, int) else None,
                cause=cause if isinstance(cause, str) else None,
                detail=str(end.get("detail", "no end recorded")),
            )
        )
    return out
