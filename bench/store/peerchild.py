"""The measuring children of `peers.py`: every row of one peer and one value size, and the
recovery row's writer (killed mid-write) and reopener. Run as `peers.py --child KIND SPEC`."""

from __future__ import annotations

import functools
import random
import resource
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from benchkit import BenchError, machine_busy_seconds
from peerdbs import Ours, Peer, disk_bytes, open_peer, remove

KEY_FORMAT: Final = b"key:%012d"  # 16 bytes, the store benchmark's keys
KEY_BYTES: Final = 16
VALUE_SIZES: Final = (100, 4096, 65536)
DEFAULT_ROUNDS: Final = 3
DEFAULT_THREADS: Final = 8
BATCH: Final = 100  # the batch row's puts per transaction
LOAD_BATCH: Final = 1000  # the data set's load and overwrites: puts per transaction
#: The data set of each value size: this many bytes of values, at most MAX_KEYS keys.
DATA_BYTES: Final = 48 << 20
MAX_KEYS: Final = 200_000
SCAN_FRACTION: Final = 0.1
RECOVER_KEYS: Final = 1_000_000
RECOVER_VALUE_BYTES: Final = 100
#: Overwriting batches the recovery writer finishes past its load before it is killed.
RECOVER_KILL_AFTER_BATCHES: Final = 20
RECOVER_SAMPLE: Final = 1000  # keys read back after the reopen, untimed
CHILD_TIMEOUT_S: Final = 1800.0
#: Only the first phases of the engine: Python frames of each phase carry this prefix.
PHASE_PREFIX: Final = "_phase_"


@dataclass(frozen=True, slots=True, kw_only=True)
class Sizes:
    """How much each row of one value size writes and reads."""

    value_bytes: int
    keys: int
    durable_puts: int
    interval_puts: int
    batch_puts: int
    threads: int


def sizes_for(value_bytes: int, *, quick: bool, threads: int) -> Sizes:
    """Row sizes for `value_bytes`: each row takes about a second on this machine."""
    if quick:
        return Sizes(
            value_bytes=value_bytes,
            keys=300,
            durable_puts=16,
            interval_puts=100,
            batch_puts=2 * BATCH,
            threads=threads,
        )
    return Sizes(
        value_bytes=value_bytes,
        keys=min(MAX_KEYS, DATA_BYTES // value_bytes),
        durable_puts=min(1000, (32 << 20) // value_bytes),
        interval_puts=min(20_000, (64 << 20) // value_bytes),
        batch_puts=max(10 * BATCH, min(20_000, (64 << 20) // value_bytes) // BATCH * BATCH),
        threads=threads,
    )


# --- the child: one peer, one value size ---------------------------------------------------


def _rss_anon_bytes() -> int:
    """This process's anonymous resident memory (heap, not mapped files), from /proc."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def _written_bytes() -> int:
    """Bytes this process has sent towards the disk (dirtied pages), from /proc/self/io."""
    with open("/proc/self/io") as io:
        fields = dict(line.split(": ") for line in io.read().splitlines())
    return int(fields["write_bytes"]) - int(fields["cancelled_write_bytes"])


def _timed(ops: int, body: Callable[[], None]) -> dict[str, float]:
    """Run `body`; its time, rate and CPU, and the CPU others used meanwhile."""
    busy, cpu = machine_busy_seconds(), time.process_time()
    began = time.perf_counter()
    body()
    seconds = time.perf_counter() - began
    cpu = time.process_time() - cpu
    busy = machine_busy_seconds() - busy
    return {
        "ops": ops,
        "seconds": round(seconds, 4),
        "ops_s": round(ops / seconds, 1),
        "cpu_us_per_op": round(cpu * 1e6 / ops, 2),
        "other_cpu_s": round(max(0.0, busy - cpu), 2),
    }


class Values:
    """Distinct values per key and version, sliced from one random buffer: no value
    repeats inside a block, so a store that compresses gains nothing from it."""

    def __init__(self, value_bytes: int, count: int, seed: int) -> None:
        self._size = value_bytes
        self._count = count
        self._pool = random.Random(seed).randbytes(value_bytes * (count + 3))

    def of(self, index: int, version: int = 0) -> bytes:
        """The value of key `index` (mod the pool) at `version` (0, 1 or 2)."""
        start = (index % self._count + version) * self._size
        return self._pool[start : start + self._size]


def _put_loop(peer: Peer, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
    put = peer.put
    for key, value in zip(keys, values, strict=True):
        put(key, value)


def _phase_put_durable_x1(peer: Peer, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
    _put_loop(peer, keys, values)  # its own name, for the profiles


def _phase_put_interval_x1(peer: Peer, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
    _put_loop(peer, keys, values)


def _phase_put_threads_worker(
    peer: Peer, keys: Sequence[bytes], values: Sequence[bytes], errors: list[BaseException]
) -> None:
    mine = peer.for_thread()
    try:
        _put_loop(mine, keys, values)
    except BaseException as exc:
        errors.append(exc)
    finally:
        mine.release()


def _phase_put_threads(
    peer: Peer, keys: Sequence[bytes], values: Sequence[bytes], threads: int
) -> None:
    errors: list[BaseException] = []
    workers = [
        threading.Thread(
            target=_phase_put_threads_worker,
            args=(peer, keys[i::threads], values[i::threads], errors),
            name=f"peers-put-{i}",
        )
        for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]


def _phase_put_batches(peer: Peer, batches: Sequence[Sequence[tuple[bytes, bytes]]]) -> None:
    put_many = peer.put_many
    for batch in batches:
        put_many(batch)


def _phase_get(peer: Peer, keys: Sequence[bytes]) -> None:
    get = peer.get
    for key in keys:
        if get(key) is None:
            raise BenchError(f"{peer!r} lost {key!r}")


def _phase_scan(peer: Peer, start: bytes, count: int, found: list[tuple[bytes, bytes]]) -> None:
    found.extend(peer.scan(start, count))


def _phase_compact(peer: Peer, into: Path, held: list[Path]) -> None:
    held.append(peer.compact(into))


def _scan_row(
    peer: Peer, keys: Sequence[bytes], values: Values, rng: random.Random
) -> dict[str, float]:
    """Time a scan of SCAN_FRACTION of the keys from a random one; check what it found."""
    count = max(1, int(len(keys) * SCAN_FRACTION))
    at = rng.randrange(0, len(keys) - count + 1)
    found: list[tuple[bytes, bytes]] = []
    figures = _timed(count, functools.partial(_phase_scan, peer, keys[at], count, found))
    if [key for key, _ in found] != keys[at : at + count] or any(
        value != values.of(at + n) for n, (_, value) in enumerate(found)
    ):
        raise BenchError(f"{peer!r} scanned the wrong pairs from {keys[at]!r}")
    return figures


def _batches(
    keys: Sequence[bytes], order: Sequence[int], values: Values, version: int, size: int
) -> list[list[tuple[bytes, bytes]]]:
    pairs = [(keys[i], values.of(i, version)) for i in order]
    return [pairs[at : at + size] for at in range(0, len(pairs), size)]


def _fresh_row(
    peer_name: str, path: Path, mode: str, body: Callable[[Peer], None], ops: int
) -> dict[str, float]:
    """Open a fresh `mode` peer at `path`, time `body` on it, close and delete it."""
    peer = open_peer(peer_name, path, mode)
    try:
        figures = _timed(ops, lambda: body(peer))
    finally:
        peer.close()
        remove(path)
    return figures


def child_workload(spec: dict[str, object]) -> dict[str, object]:
    """Every row of one peer and one value size; see the design note."""
    name, sizes = str(spec["peer"]), Sizes(**spec["sizes"])  # type: ignore[arg-type]
    work, seed = Path(str(spec["work"])), int(str(spec["seed"]))
    rng = random.Random(seed)
    size = sizes.value_bytes
    keys = [KEY_FORMAT % i for i in range(sizes.keys)]
    values = Values(size, sizes.keys, seed)
    order = list(range(sizes.keys))
    rng.shuffle(order)
    phases: dict[str, object] = {}

    def first(count: int) -> tuple[list[bytes], list[bytes]]:
        picked = [order[i % len(order)] for i in range(count)]
        return [keys[i] for i in picked], [values.of(i) for i in picked]

    some_keys, some_values = first(sizes.durable_puts)
    put_some = functools.partial(_phase_put_durable_x1, keys=some_keys, values=some_values)
    phases["put_durable_x1"] = _fresh_row(
        name, work / "d1", "durable", put_some, sizes.durable_puts
    )
    put_threads = functools.partial(
        _phase_put_threads, keys=some_keys, values=some_values, threads=sizes.threads
    )
    phases["put_durable_threads"] = _fresh_row(
        name, work / "d8", "durable", put_threads, sizes.durable_puts
    )
    batch_order = [order[i % len(order)] for i in range(sizes.batch_puts)]
    put_batches = functools.partial(
        _phase_put_batches, batches=_batches(keys, batch_order, values, 0, BATCH)
    )
    phases["batch_durable"] = _fresh_row(name, work / "b", "durable", put_batches, sizes.batch_puts)
    many_keys, many_values = first(sizes.interval_puts)
    put_many = functools.partial(_phase_put_interval_x1, keys=many_keys, values=many_values)
    phases["put_interval_x1"] = _fresh_row(
        name, work / "i1", "interval", put_many, sizes.interval_puts
    )
    del put_some, put_threads, put_batches, put_many, some_values, many_values

    # The data set: load, warm and timed gets, a scan, two overwrites, sizes.
    path = work / "db"
    live = sizes.keys * (KEY_BYTES + size)
    written_before = _written_bytes()
    rss_before = _rss_anon_bytes()
    peer = open_peer(name, path, "interval")
    try:
        for version in (0, 1, 2):  # the load, then two overwrites
            rewrite = functools.partial(
                _phase_put_batches, peer, _batches(keys, order, values, version, LOAD_BATCH)
            )
            phases["load" if version == 0 else f"overwrite_{version}"] = _timed(sizes.keys, rewrite)
            del rewrite
            if version > 0:
                continue
            for i in order:  # the warm-up pass, untimed, checks every value
                if peer.get(keys[i]) != values.of(i):
                    raise BenchError(f"{peer!r} returned a wrong value for {keys[i]!r}")
            get_order = [keys[i] for i in rng.sample(range(sizes.keys), sizes.keys)]
            phases["get"] = _timed(sizes.keys, functools.partial(_phase_get, peer, get_order))
            phases["rss_anon_mib"] = round((_rss_anon_bytes() - rss_before) / (1 << 20), 1)
            phases["scan"] = _scan_row(peer, keys, values, rng)
    finally:
        peer.close()
    phases["write_amplification"] = round((_written_bytes() - written_before) / (3 * live), 3)
    phases["disk_per_live"] = round(disk_bytes(path) / live, 3)
    peer = open_peer(name, path, "interval")
    try:
        for i in rng.sample(range(sizes.keys), min(sizes.keys, RECOVER_SAMPLE)):
            if peer.get(keys[i]) != values.of(i, 2):
                raise BenchError(f"{peer!r} lost the last overwrite of {keys[i]!r}")
        held: list[Path] = []
        compact = functools.partial(_phase_compact, peer, work / "copy", held)
        phases["compact"] = _timed(sizes.keys, compact)
    finally:
        peer.close()
    phases["disk_per_live_compacted"] = round(disk_bytes(held[0]) / live, 3)
    phases["max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    remove(path)
    remove(work / "copy")
    return {"peer": name, "value_bytes": size, "phases": phases}


def child_writer(spec: dict[str, object]) -> None:
    """Load `keys` keys (interval mode), say so on stdout, then overwrite until killed."""
    name, path, count = str(spec["peer"]), Path(str(spec["path"])), int(str(spec["keys"]))
    rng = random.Random(int(str(spec["seed"])))
    values = Values(RECOVER_VALUE_BYTES, 1 << 16, 7)
    keys = [KEY_FORMAT % i for i in range(count)]
    order = list(range(count))
    rng.shuffle(order)
    peer = open_peer(name, path, "interval")
    began = time.perf_counter()
    for at in range(0, count, LOAD_BATCH):
        peer.put_many([(keys[i], values.of(i)) for i in order[at : at + LOAD_BATCH]])
    print(f"loaded {count} {time.perf_counter() - began:.3f}", flush=True)
    done = 0
    while True:  # until SIGKILL; the parent bounds how long it waits
        picked = rng.sample(range(count), LOAD_BATCH)
        peer.put_many([(keys[i], values.of(i, 1)) for i in picked])
        done += 1
        if done == RECOVER_KILL_AFTER_BATCHES:
            print("overwriting", flush=True)


def child_recover(spec: dict[str, object]) -> dict[str, object]:
    """Open the killed writer's directory and read one key (timed); check a sample."""
    name, path, count = str(spec["peer"]), Path(str(spec["path"])), int(str(spec["keys"]))
    rng = random.Random(int(str(spec["seed"])))
    began = time.perf_counter()
    peer = open_peer(name, path, "interval")
    first = peer.get(KEY_FORMAT % 0)
    seconds = time.perf_counter() - began
    try:
        if first is None:
            raise BenchError(f"{peer!r} lost key 0 in the crash")
        for i in rng.sample(range(count), min(count, RECOVER_SAMPLE)):
            value = peer.get(KEY_FORMAT % i)
            if value is None or len(value) != RECOVER_VALUE_BYTES:
                raise BenchError(f"{peer!r} lost key {i} in the crash")
        report = str(peer.store.recovery) if isinstance(peer, Ours) else None
    finally:
        peer.close()
    return {"peer": name, "open_s": round(seconds, 4), "disk_bytes": disk_bytes(path),
            "recovery": report}  # fmt: skip
