"""Optional, untimed py-spy profiles of the servers under load, summarised."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from benchkit import (
    BenchError,
    Server,
    say,
)
from clientpart import client_run
from common import Scenario

#: py-spy samples per second: ~5 ms apart, enough for a few thousand samples per run.
PROFILE_RATE: Final = 200


def py_spy(pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes]:
    """py-spy on `pid`, sampling only threads that hold the GIL: where Python time goes
    (threads waiting on a lock, a queue or fsync release the GIL and are not sampled)."""
    beside = Path(sys.executable).parent / "py-spy"
    program = str(beside) if beside.exists() else shutil.which("py-spy")
    if program is None:
        raise BenchError("--profile-dir needs py-spy (.venv/bin/pip install py-spy)")
    argv = [program, "record", "--format", "raw", "--gil", "--rate", str(PROFILE_RATE)]
    # One second more than the run: the run starts after the second py-spy takes to attach.
    argv += ["-d", str(max(1, round(seconds)) + 1), "-p", str(pid), "-o", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


#: Frames every stack shares (thread and event-loop plumbing, the CLI): left out of the
#: inclusive ranking, where they would only say "100 %".
_PLUMBING: Final = frozenset(
    {"threading.py", "runners.py", "__init__.py", "core.py", "cli.py", "launch.py"}
    | {"runtime.py", "postoffice", "workers.py"}
)


def summarise_profile(path: Path, top: int = 15) -> dict[str, object]:
    """Top frames of a py-spy raw (collapsed) profile, as shares of all samples.

    `top_own_pct`: the innermost frame (function, file:line; a C call counts for the line
    that makes it; `Runner.run` is the event loop's own C code, uvloop included).
    `top_inclusive_pct`: functions anywhere on the stack, without the plumbing.
    """
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return {"error": str(exc)}
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        name, _, where = frames[-1].partition(" (")
        file_name, _, line_no = where.rstrip(")").rpartition(":")
        leaf = f"{name} ({Path(file_name).name}:{line_no})"
        own[leaf] = own.get(leaf, 0) + count
        seen: set[str] = set()
        for frame in frames:
            function, _, place = frame.partition(" (")
            frame_file = Path(place.rsplit(":", 1)[0]).name
            if frame_file not in _PLUMBING and function != "<module>":
                seen.add(f"{function} ({frame_file})")
        for function in seen:
            inclusive[function] = inclusive.get(function, 0) + count

    def ranked(table: dict[str, int]) -> list[list[object]]:
        best = sorted(table.items(), key=lambda kv: -kv[1])[:top]
        return [[name, round(100 * n / total, 1)] for name, n in best] if total else []

    return {
        "samples": total,
        "top_own_pct": ranked(own),
        "top_inclusive_pct": ranked(inclusive),
    }


def profile_store(
    store: Server,
    keys: Sequence[bytes],
    scenario: Scenario,
    seconds: float,
    out_dir: Path,
    loop: str,
    phase: str,
    ops: Sequence[str],
) -> dict[str, object]:
    """One extra, untimed run of each op against our store server with py-spy attached."""
    out_dir.mkdir(parents=True, exist_ok=True)
    found: dict[str, object] = {}
    for op in ops:
        out = out_dir / f"store-{phase}-{op}-{scenario.name}.txt"
        spy = py_spy(store.pid, out, seconds)
        time.sleep(1.0)  # py-spy attaches
        client_run(
            contender="ours",
            server=store,
            phase="profile",
            op=op,
            scenario=scenario,
            keys=keys,
            seconds=seconds,
            round_no=0,
            loop=loop,
        )
        try:
            _, err = spy.communicate(timeout=seconds + 31)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        summary = summarise_profile(out)
        if spy.returncode != 0:
            summary["py_spy_error"] = err.decode(errors="replace")[-300:]
        found[f"{phase}/{op}/{scenario.name}"] = summary
        say(f"profiled store {phase} {op} {scenario.name}: {out}")
    return found
