"""The store engine killed with SIGKILL mid-write and mid-compaction, in child processes:
every acknowledged write survives, and a second process cannot open an open store."""

from __future__ import annotations

import inspect
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from postoffice.store.engine import Store, StoreLockedError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

#: The children import the sources of this checkout.
SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_second_opener_is_refused(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        f"sys.path.insert(0, {SRC!r})\n"
        "from postoffice.store.engine import Store, StoreLockedError\n"
        "try:\n"
        f"    Store.open({str(tmp_path)!r})\n"
        "except StoreLockedError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )
    with Store.open(tmp_path):
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 3, done.stderr
        assert done.stdout.strip() == f"store {tmp_path} is already open in another process"
        with pytest.raises(StoreLockedError):
            Store.open(tmp_path)
    Store.open(tmp_path).close()


# -- killed mid-write -------------------------------------------------------------------

_WRITER = """
import sys
sys.path.insert(0, {src!r})
from postoffice.store.engine import Store
s = Store.open({path!r}, durability="always", segment_bytes=4096, flush_entries=16)
s.flush_in_background = {background}
s.write_behind = {behind}
i = 0
while True:
    key = b"key-%06d" % i
    if {behind}:  # as the server writes: apply, then one sync covers it
        s.sync(s.put_nowait(key, key * 3))
    else:
        s.put(key, key * 3)
    s.batch([])
    print(key.decode(), flush=True)
    i += 1
"""


@pytest.mark.parametrize("round_", range(20))
def test_kill_9_keeps_acknowledged_writes(tmp_path: Path, round_: int) -> None:
    """A writer killed mid-load, 20 times: every acknowledged write survives, whole.

    Odd rounds move the index into LMDB on a background thread, as the server does;
    rounds 2 and 3 of every 4 leave appends in memory until the sync (write-behind).
    """
    path = tmp_path / "db"
    acked: list[str] = []
    for _ in range(2):  # two crashes in a row: the second recovers a recovered store
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WRITER.format(
                    src=SRC, path=str(path), background=bool(round_ % 2), behind=round_ % 4 >= 2
                ),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        deadline = time.monotonic() + 60
        target = len(acked) + 50 + round_ * 7
        while len(acked) < target and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            acked.append(line.strip())
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
        assert len(acked) >= target
        with Store.open(path) as s:
            for key in acked:
                assert s.get(key.encode()) == key.encode() * 3
            # the child restarts numbering, so later rounds overwrite: values stay whole
            assert all(v == k * 3 for k, v in s.scan(limit=100_000))
        acked = sorted(set(acked))


# -- killed mid-compaction --------------------------------------------------------------

_COMPACTING_WRITER = """
import sys, threading
sys.path.insert(0, {src!r})
from postoffice.store.engine import Store
s = Store.open({path!r}, durability="always", segment_bytes=2048, flush_entries={flush_entries})
out = threading.Lock()

def say(line):
    with out:
        sys.stdout.write(line + "\\n")
        sys.stdout.flush()

def compactor():
    steps = 0
    def on_step(keys):
        nonlocal steps
        steps += 1
        if steps == {pause_at}:
            say("paused")
            threading.Event().wait()  # mid-compaction for good, while the writer goes on
    while True:
        s.compact(on_step=on_step)
        say("compacted")

threading.Thread(target=compactor, daemon=True).start()
i = {first}
{op_source}
while True:
    key, value, delete = _op(i)
    if delete:
        s.delete(key)
    else:
        s.put(key, value)
    say(str(i))
    i += 1
"""


def _op(i: int) -> tuple[bytes, bytes, bool]:
    """The child's i-th write: which key, what value, or a delete (keys recur often)."""
    key = b"key%02d" % (i * 7 % 40)
    return key, key + b"=%d=" % i + b"v" * (i % 150), i % 4 == 3


class _Case(NamedTuple):
    """One kill -9 scenario."""

    acks: int  # acknowledged writes before the kill
    pause_at: int  # > 0: the compaction blocks at this step (counted over all of them) for good
    flush_entries: int  # large: the index is flushed only by compaction's last step


def _crash_child(path: Path, first: int, case: _Case) -> list[int]:
    """Run the child until it acknowledged `acks` writes and compacted (or paused mid-step),
    then kill -9 it. Returns the acknowledged op numbers.
    """
    op_source = inspect.getsource(_op)  # the child does the very ops the test replays
    code = _COMPACTING_WRITER.format(
        src=SRC, path=str(path), first=first, op_source=op_source, **case._asdict()
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    acked: list[int] = []
    compacted = paused = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if len(acked) >= case.acks and (compacted if case.pause_at == 0 else paused):
            break
        line = child.stdout.readline().strip()
        if not line:
            break
        if line == "compacted":
            compacted += 1
        elif line == "paused":
            paused += 1
        else:
            acked.append(int(line))
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    acked += [int(line) for line in child.stdout.read().split() if line.isdigit()]
    child.stdout.close()
    assert len(acked) >= case.acks
    assert compacted or paused
    return acked


def _check_after_crash(path: Path, model: dict[bytes, bytes], in_flight: int) -> dict[bytes, bytes]:
    """Every acknowledged write is there and deletes stay deleted, with the index and rebuilt
    from the log alone; the unacknowledged write may or may not be. Returns the state found.
    """
    key, value, delete = _op(in_flight)
    others = {k: v for k, v in model.items() if k != key}
    states: list[dict[bytes, bytes]] = []
    for rebuild in (False, True):
        if rebuild:
            shutil.rmtree(path / "index")
        with Store.open(path) as s:
            assert s.recovery.index_rebuilt == rebuild  # the index never points past the log
            found = dict(s.scan(limit=1000))
            assert found.get(key) in (model.get(key), None if delete else value)
            assert {k: v for k, v in found.items() if k != key} == others
            assert all(s.get(k) == found.get(k) for k in (_op(i)[0] for i in range(40)))
            states.append(found)
    assert states[0] == states[1]
    return states[0]


@pytest.mark.parametrize(
    "case",
    [
        _Case(acks=40, pause_at=0, flush_entries=16),
        _Case(acks=90, pause_at=0, flush_entries=10_000),
        _Case(acks=150, pause_at=0, flush_entries=16),
        _Case(acks=60, pause_at=3, flush_entries=10_000),
    ],
    ids=str,
)
def test_kill_9_during_compaction_loses_nothing(tmp_path: Path, case: _Case) -> None:
    """A writer and a compaction loop killed twice in a row, at varied points of it."""
    path = tmp_path / "db"
    model: dict[bytes, bytes] = {}
    first = 0
    for _ in range(2):
        acked = _crash_child(path, first, case)
        assert acked == list(range(first, first + len(acked)))  # one writer: acks are in order
        for i in acked:
            key, value, delete = _op(i)
            if delete:
                model.pop(key, None)
            else:
                model[key] = value
        model = _check_after_crash(path, model, first + len(acked))
        first += len(acked) + 1


def test_a_truncated_index_file_is_rebuilt_not_a_crash(tmp_path: Path) -> None:
    """LMDB trusts its file: a cut-short one would kill the process (SIGBUS) on the first
    page past the cut. The store sees it first and rebuilds the index."""
    path = tmp_path / "s"
    with Store.open(path, flush_entries=500) as s:
        for i in range(5000):
            s.put(b"k%05d" % i, b"v" * 20)
    data = path / "index" / "data.mdb"
    os.truncate(data, 3 * 4096)
    code = (
        "import sys\n"
        f"sys.path.insert(0, {SRC!r})\n"
        "from postoffice.store.engine import Store\n"
        f"with Store.open({str(path)!r}) as s:\n"
        "    print(s.recovery.reason)\n"
        "    print(s.get(b'k04999'), len(s))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    reason, values = done.stdout.splitlines()
    assert reason.startswith("index damaged: index file ")
    assert " bytes is shorter than its " in reason
    assert values == "b'vvvvvvvvvvvvvvvvvvvv' 5000"
