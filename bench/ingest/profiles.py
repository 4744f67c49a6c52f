"""Optional, untimed py-spy profiles of ours, summarised by source line."""

from __future__ import annotations

import functools
import linecache
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from benchkit import (
    BenchError,
    say,
)
from contenders import Run, run_ours, run_ours_small
from inputs import Input
from servers import Server


def _py_spy(pid: int, out: Path, seconds: int) -> subprocess.Popen[bytes]:
    beside = Path(sys.executable).parent / "py-spy"
    program = str(beside) if beside.exists() else shutil.which("py-spy")
    if program is None:
        raise BenchError("--profile-dir needs py-spy (.venv/bin/pip install py-spy)")
    argv = [program, "record", "--format", "raw", "-d", str(seconds), "-p", str(pid)]
    argv += ["-o", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


#: Leaf source lines where an idle thread waits for work (a queue get, select): not work.
_IDLE_CALLS: Final = re.compile(r"\.get\(|\.wait\(|select\(")
#: Leaf source lines that take a lock: a thread there is stalled behind another one.
_LOCK_CALLS: Final = re.compile(r"\bwith\b.*lock\b|\.acquire\(")
#: Frames every stack shares (thread and event-loop plumbing, the CLI): left out of the
#: inclusive ranking, where they would only say "100 %".
_PLUMBING_FILES: Final = frozenset(
    {
        "threading.py",
        "thread.py",
        "runners.py",
        "__init__.py",
        "core.py",
        "cli.py",
        "launch.py",
        "runtime.py",
        "postoffice",
        "run.py",
    }
)


def _source_line(where: str) -> str:
    """The source text at `path/to/module.py:123` as py-spy prints it (the path relative
    to a sys.path entry), or "" when it cannot be found."""
    file_name, _, line_text = where.rpartition(":")
    if not line_text.isdigit():
        return ""
    for root in (Path(__file__).resolve().parents[2] / "src", *map(Path, sys.path)):
        candidate = root / file_name
        if candidate.is_file():
            return linecache.getline(str(candidate), int(line_text))
    return ""


def summarise_profile(path: Path, top: int = 12) -> dict[str, object]:
    """Top functions of a py-spy raw (collapsed) profile.

    `top_own_pct`: the innermost frame (function and line; C calls count for the line that
    makes them) as a share of the busy samples; a line that takes a lock is tagged
    `[lock]` (threads stalled behind another one; `lock_pct` sums them). Samples whose
    innermost line is an idle wait (queue get, select) are `waiting_pct` of all samples and
    left out of the busy ones. `top_inclusive_pct`: functions anywhere on the stack, per
    busy sample, without the thread and CLI plumbing.
    """
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = waiting = locked = 0
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
        where = where.rstrip(")")
        source = _source_line(where)
        if _IDLE_CALLS.search(source):
            waiting += count
            continue
        leaf = f"{name} ({Path(where).name})"
        if _LOCK_CALLS.search(source):
            leaf += " [lock]"
            locked += count
        own[leaf] = own.get(leaf, 0) + count
        seen: set[str] = set()
        for frame in frames:
            function, _, place = frame.partition(" (")
            file_name = Path(place.rsplit(":", 1)[0]).name
            if file_name not in _PLUMBING_FILES and function != "<module>":
                seen.add(f"{function} ({file_name})")
        for function in seen:
            inclusive[function] = inclusive.get(function, 0) + count
    busy = total - waiting

    def ranked(table: dict[str, int]) -> list[list[object]]:
        best = sorted(table.items(), key=lambda kv: -kv[1])[:top]
        return [[name, round(100 * n / busy, 1)] for name, n in best] if busy else []

    return {
        "samples": total,
        "waiting_pct": round(100 * waiting / total, 1) if total else None,
        "lock_pct": round(100 * locked / busy, 1) if busy else None,
        "top_own_pct": ranked(own),
        "top_inclusive_pct": ranked(inclusive),
    }


def profile_ours(
    servers: dict[str, Server],
    work: Path,
    large: Sequence[Input],
    small_paths: Sequence[Path],
    out_dir: Path,
    seconds: int,
) -> dict[str, object]:
    """One extra, untimed upload per workload with py-spy on our server and on this
    script (the client); the raw profiles go to out_dir, their top functions to the JSON."""
    out_dir.mkdir(parents=True, exist_ok=True)
    server = servers["ours"]
    found: dict[str, object] = {}
    jobs: list[tuple[str, Callable[[], Run]]] = [
        (item.kind, functools.partial(run_ours, server, work, item, 0)) for item in large
    ]
    if small_paths:
        jobs.append(("small", functools.partial(run_ours_small, server, small_paths, 0)))
    for workload, job in jobs:
        spies = {
            "server": _py_spy(server.pid, out_dir / f"ingest-{workload}-server.txt", seconds),
            "client": _py_spy(os.getpid(), out_dir / f"ingest-{workload}-client.txt", seconds),
        }
        time.sleep(1.0)  # py-spy attaches
        job()
        for side, spy in spies.items():
            try:
                _, err = spy.communicate(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                spy.kill()
                _, err = spy.communicate()
            path = out_dir / f"ingest-{workload}-{side}.txt"
            summary = summarise_profile(path)
            if spy.returncode != 0:
                summary["py_spy_error"] = err.decode(errors="replace")[-300:]
            found[f"{workload}/{side}"] = summary
        say(f"profiled {workload}: {out_dir}")
    return found
