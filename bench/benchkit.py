"""What every benchmark script under bench/ needs: processes, CPU time, machine facts.

The scripts run as `python bench/<service>/run.py`, so this module is found through the
`sys.path` entry each script adds for its parent folder. It is never imported by the
package or by pytest.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import signal
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Final

LOOPBACK: Final = "127.0.0.1"

#: Exit status when a needed program is missing (the usage-error convention).
EXIT_MISSING_TOOL: Final = 2
#: Exit status when a server or a client misbehaves during the run.
EXIT_RUN_FAILED: Final = 1


class BenchError(Exception):
    """A server, a client or the machine did not behave; the message says how."""


def say(message: str) -> None:
    """Progress for the operator: stderr, so stdout stays one JSON object."""
    print(message, file=sys.stderr, flush=True)


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log, or why it cannot be read."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the server binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def process_cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of a whole process (all its threads), in seconds.

    Raises BenchError when the process is gone.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError as exc:
        raise BenchError(f"cannot read /proc/{pid}/stat: {exc}") from exc
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    # Fields 14 and 15 of proc(5) are utime and stime; field 3 is fields[0] here.
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def machine_busy_seconds() -> float:
    """CPU time all CPUs spent busy since boot (from /proc/stat), in seconds.

    Raises BenchError when /proc/stat cannot be read.
    """
    try:
        with open("/proc/stat") as stat:
            first = stat.readline().split()
    except OSError as exc:
        raise BenchError(f"cannot read /proc/stat: {exc}") from exc
    # cpu user nice system idle iowait irq softirq steal ...: all but idle and iowait.
    ticks = [int(field) for field in first[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """User plus system CPU time of this script's reaped children, in seconds."""
    usage = os.times()
    return usage.children_user + usage.children_system


def command_output(argv: list[str]) -> str | None:
    """The stripped stdout of a short command, or None if it fails."""
    try:
        done = subprocess.run(argv, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.decode(errors="replace").strip()


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def package_version(package: str) -> str:
    """The installed version of a distribution, or "not installed"."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_commit() -> str:
    """This checkout's short commit, with "+dirty" when the tree has changes."""
    repo = Path(__file__).resolve().parents[1]
    commit = command_output(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    changes = command_output(["git", "-C", str(repo), "status", "--porcelain"])
    if commit and changes:
        commit += "+dirty"
    return commit or "unknown"


def machine_facts() -> dict[str, object]:
    """What every benchmark's figures depend on: cores, CPU, kernel, Python, our commit."""
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "postoffice": package_version("postoffice"),
        "git_commit": git_commit(),
        "loadavg_at_start": os.getloadavg(),
        "clk_tck": os.sysconf("SC_CLK_TCK"),
    }


def raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """A SIGTERM handler that turns the signal into SystemExit, so `finally` blocks run
    (and stop the servers the script started)."""
    raise SystemExit(128 + signum)


@dataclasses.dataclass(slots=True, kw_only=True)
class Server:
    """A server subprocess a benchmark started, with the pid whose CPU time is measured."""

    name: str
    proc: subprocess.Popen[bytes]
    pid: int
    port: int
    log_path: Path

    def __repr__(self) -> str:
        state = "running" if self.proc.poll() is None else f"exited({self.proc.returncode})"
        return f"<Server {self.name} pid={self.pid} {LOOPBACK}:{self.port} {state}>"

    def check_alive(self) -> None:
        """Raise BenchError, with the tail of its log, if the server has exited."""
        if self.proc.poll() is not None:
            raise BenchError(
                f"{self.name} exited with status {self.proc.returncode}; "
                f"log tail:\n{tail(self.log_path)}"
            )


def stop(server: Server, timeout_s: float) -> None:
    """SIGTERM the server by pid, then SIGKILL it if it lingers past `timeout_s`."""
    if server.proc.poll() is not None:
        return
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        say(f"{server.name} ignored SIGTERM for {timeout_s} s; sending SIGKILL")
        server.proc.kill()
        server.proc.wait()


def answers_ping(port: int) -> bool:
    """True when a RESP server on the port answers an inline PING with +PONG."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(64)
                if not chunk:
                    return False
                reply += chunk
            return reply == b"+PONG\r\n"
    except OSError:
        return False
