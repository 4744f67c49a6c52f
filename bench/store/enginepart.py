"""Part "engine": the key-value engine in this process against raw LMDB."""

from __future__ import annotations

import functools
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, Protocol, final

import lmdb
from benchkit import (
    BenchError,
    machine_busy_seconds,
    say,
)
from common import LMDB_MAP_BYTES, VALUE, Run
from report import human_line
from servers import own_cpu_seconds

from postoffice.store import Store


@final
class RawLmdb:
    """The `lmdb` package alone: one key per transaction, like one Store call per key."""

    def __init__(self, path: Path, *, durable: bool) -> None:
        self._path = path
        # sync=False is LMDB's "the OS decides", as durability=never is ours.
        self._env = lmdb.open(str(path), map_size=LMDB_MAP_BYTES, sync=durable, metasync=durable)

    def __repr__(self) -> str:
        return f"<RawLmdb {self._path}>"

    def put(self, key: bytes, value: bytes) -> None:
        with self._env.begin(write=True) as txn:
            txn.put(key, value)

    def get(self, key: bytes) -> bytes | None:
        with self._env.begin() as txn:
            value: bytes | None = txn.get(key)
            return value

    def close(self) -> None:
        self._env.close()


class Engine(Protocol):
    """What the engine part calls on Store and on RawLmdb."""

    def put(self, key: bytes, value: bytes) -> None:
        """Set `key`."""
        ...

    def get(self, key: bytes) -> bytes | None:
        """Read `key`."""
        ...

    def close(self) -> None:
        """Flush and close."""
        ...


def _open_engine(contender: str, path: Path, *, durable: bool) -> Engine:
    if contender == "lmdb":
        path.mkdir(parents=True)
        return RawLmdb(path, durable=durable)
    return Store.open(path, durability="always" if durable else "never")


def _threaded(engine: Engine, keys: Sequence[bytes], threads: int) -> None:
    """Put `keys` from `threads` threads, each its own slice; re-raise the first error."""
    errors: list[BaseException] = []

    def body(part: Sequence[bytes]) -> None:
        try:
            for key in part:
                engine.put(key, VALUE)
        except BaseException as exc:
            errors.append(exc)

    workers = [
        threading.Thread(target=body, args=(keys[i::threads],), name=f"bench-put-{i}")
        for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]


def _engine_measure(
    test: str, contender: str, round_no: int, count: int, body: Callable[[], None]
) -> Run:
    busy_before, cpu_before = machine_busy_seconds(), own_cpu_seconds()
    began = time.perf_counter()
    body()
    elapsed = time.perf_counter() - began
    cpu = own_cpu_seconds() - cpu_before
    busy = machine_busy_seconds() - busy_before
    return Run(
        part="engine",
        phase="-",
        test=test,
        scenario="in-process",
        round=round_no,
        contender=contender,
        ops=count,
        seconds=round(elapsed, 3),
        ops_s=round(count / elapsed, 1),
        p50_ms=None,
        p99_ms=None,
        server_cpu_us_per_op=None,
        client_cpu_us_per_op=round(cpu * 1e6 / count, 2),
        other_cpu_s=round(max(0.0, busy - cpu), 2),
    )


def _put_all(engine: Engine, keys: Sequence[bytes]) -> None:
    for key in keys:
        engine.put(key, VALUE)


def _get_all(engine: Engine, keys: Sequence[bytes]) -> None:
    for key in keys:
        if engine.get(key) is None:
            raise BenchError(f"{engine!r} lost {key!r}")


#: Keys of the untimed engine round before the timed ones: the first round of a process
#: otherwise ran LMDB at about half its later speed (first use of its code and maps).
ENGINE_WARMUP_KEYS: Final = 5_000


def engine_round(
    work: Path,
    keys: Sequence[bytes],
    durable_keys: Sequence[bytes],
    threads: int,
    round_no: int,
    *,
    quiet: bool = False,
) -> list[Run]:
    """Put and get `keys` (no fsync, one thread), then put `durable_keys` durably from
    `threads` threads, into a fresh raw LMDB and then a fresh Store."""
    runs: list[Run] = []
    for contender in ("lmdb", "ours"):
        base = work / f"engine-{round_no}-{contender}"
        fast = _open_engine(contender, base / "fast", durable=False)
        try:
            put_all = functools.partial(_put_all, fast, keys)
            get_all = functools.partial(_get_all, fast, keys)
            runs.append(_engine_measure("PUT", contender, round_no, len(keys), put_all))
            runs.append(_engine_measure("GET", contender, round_no, len(keys), get_all))
        finally:
            fast.close()
        durable = _open_engine(contender, base / "durable", durable=True)
        try:
            put_durable = functools.partial(_threaded, durable, durable_keys, threads)
            test = f"PUT durable x{threads}"
            runs.append(_engine_measure(test, contender, round_no, len(durable_keys), put_durable))
        finally:
            durable.close()
        shutil.rmtree(base)
        for run in runs[-3:] if not quiet else ():
            say(human_line(run))
    return runs
