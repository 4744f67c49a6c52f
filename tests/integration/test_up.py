"""`postoffice up` as a real process: it starts, restarts and stops the command server.

Every service listens on port 0 (through POSTOFFICE_COMMAND_*_PORT), state lives in
tmp_path, and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from postoffice.office import Director, ServiceSpec, ServiceStartError
from postoffice.office.director import DEFAULT_STOP_TIMEOUT_S, STATUS_FILE
from tests.integration.conftest import free_port_block

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

_READY_WITHIN_S = 30.0  # a cold start of two interpreters on a loaded CI machine
_POLL_S = 0.05

Status = dict[str, Any]


def _env() -> dict[str, str]:
    """This environment without our settings, plus port 0 for every command listener."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTOFFICE_")}
    env["POSTOFFICE_COMMAND_PORT"] = "0"
    env["POSTOFFICE_COMMAND_METRICS_PORT"] = "0"
    env["POSTOFFICE_INGEST_SYS_BASE"] = "0"  # 0: every ingest port picked by the kernel
    env["POSTOFFICE_INGEST_DATA_BASE"] = "0"
    env["POSTOFFICE_STORE_PORT"] = "0"
    env["POSTOFFICE_STORE_METRICS_PORT"] = "0"
    return env


def _gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie nobody reaped yet counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_until(what: str, check: Callable[[], bool], timeout_s: float = _READY_WITHIN_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(_POLL_S)


@dataclass
class _Up:
    """A running `postoffice up` and the files it reports through."""

    process: subprocess.Popen[bytes]
    data_dir: Path
    stdout: Path
    stderr: Path
    seen_pids: set[int] = field(default_factory=set)

    @property
    def status_file(self) -> Path:
        return self.data_dir / "run" / STATUS_FILE

    def status(self) -> Status | None:
        try:
            body: Status = json.loads(self.status_file.read_text())
        except FileNotFoundError:
            return None
        for service in body["services"].values():
            if service["pid"] is not None:
                self.seen_pids.add(service["pid"])
        return body

    def wait_ready(self, *, not_pid: int | None = None) -> Status:
        """The command service's entry once it is ready (under a pid other than `not_pid`)."""
        found: list[Status] = []

        def ready() -> bool:
            assert self.process.poll() is None, f"director exited: {self.stderr.read_text()}"
            body = self.status()
            entry = None if body is None else body["services"].get("command")
            if entry is None or entry["state"] != "ready" or entry["pid"] == not_pid:
                return False
            found.append(entry)
            return True

        _wait_until("the command service to be ready", ready)
        return found[-1]


@pytest.fixture
def up(tmp_path: Path) -> Iterator[_Up]:
    data_dir = tmp_path / "data"
    stdout, stderr = tmp_path / "up.out", tmp_path / "up.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "postoffice", "up", "--data-dir", str(data_dir)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=_env(),
        )
    handle = _Up(process=process, data_dir=data_dir, stdout=stdout, stderr=stderr)
    try:
        yield handle
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=DEFAULT_STOP_TIMEOUT_S + 5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        for pid in handle.seen_pids - {process.pid}:  # never leave a server behind
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)


def _ping(entry: Status) -> bool:
    host, port = entry["listeners"]["command"]
    with redis.Redis(host=host, port=port, socket_timeout=5) as client:
        return bool(client.ping())


def test_up_serves_and_stops_cleanly_on_sigterm(up: _Up) -> None:
    entry = up.wait_ready()
    assert _ping(entry)
    assert set(entry["listeners"]) == {"command", "metrics"}
    host, port = entry["listeners"]["command"]
    with redis.Redis(host=host, port=port, socket_timeout=5) as client:
        # Under the director the command server's keys live in the store service.
        _wait_until("the store link", lambda: client.info("keyspace")["store_connected"] == 1)
        assert client.set("up:key", b"v") is True
        assert client.get("up:key") == b"v"
        assert client.dbsize() == 1
    # The status file can land a moment before the table is flushed to stdout.
    _wait_until("the listener table", lambda: "command" in up.stdout.read_text(), 5.0)

    up.process.send_signal(signal.SIGTERM)
    assert up.process.wait(timeout=3 * DEFAULT_STOP_TIMEOUT_S + 5) == 0
    assert _gone(entry["pid"])
    assert not up.status_file.exists()
    assert not (up.data_dir / "run" / "command.ready.json").exists()
    # Last started, first stopped: the store outlives the command server that uses it.
    stopped = re.findall(r"service stopped child=(\w+)", up.stderr.read_text())
    assert stopped == ["bus", "ingest", "command", "store"]
    assert "store connection lost" not in up.stderr.read_text()


def test_up_restarts_a_killed_child(up: _Up) -> None:
    first = up.wait_ready()
    os.kill(first["pid"], signal.SIGKILL)

    second = up.wait_ready(not_pid=first["pid"])
    assert second["restarts"] == 1
    assert second["last_exit"] == "killed by SIGKILL"
    assert _ping(second)
    assert "killed by SIGKILL" in up.stderr.read_text()
    _wait_until("the restart line", lambda: "command restarted" in up.stdout.read_text(), 5.0)


def test_children_die_with_the_director(up: _Up) -> None:
    """PR_SET_PDEATHSIG: a director killed with SIGKILL takes its children with it."""
    entry = up.wait_ready()
    up.process.kill()
    up.process.wait(timeout=5)
    _wait_until("the orphaned child to exit", lambda: _gone(entry["pid"]))


def test_a_second_director_on_the_same_data_dir_is_refused(up: _Up) -> None:
    up.wait_ready()
    second = subprocess.run(
        [sys.executable, "-m", "postoffice", "up", "--data-dir", str(up.data_dir)],
        capture_output=True,
        env=_env(),
        timeout=30,
        check=False,
    )
    assert second.returncode == 1
    assert b"another director is running on data dir" in second.stderr
    assert _ping(up.wait_ready())


def test_unknown_service_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "postoffice", "up", "--data-dir", str(tmp_path), "--only", "nope"],
        capture_output=True,
        env=_env(),
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert b"Invalid value for '--only': 'nope'" in result.stderr


def test_up_starts_the_ingest_server_too(up: _Up) -> None:
    up.wait_ready()

    def ingest_ready() -> bool:
        body = up.status()
        return body is not None and body["services"]["ingest"]["state"] == "ready"

    _wait_until("the ingest service to be ready", ingest_ready)
    body = up.status()
    assert body is not None
    ingest = body["services"]["ingest"]
    assert {"health", "telemetry", "control", "ack", "data0"} <= set(ingest["listeners"])
    host, port = ingest["listeners"]["health"]
    with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5) as resp:
        assert resp.read() == b"ok\n"
    # Its state lives under the director's data directory.
    assert (up.data_dir / "files").is_dir()


async def test_a_child_killed_before_it_is_ready_is_reported_in_plain_words(
    tmp_path: Path,
) -> None:
    """Regression: the reason was spliced into "service 'x' killed by SIGKILL before..."."""
    suicide = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    doomed = ServiceSpec(name="doomed", argv=lambda launch: [sys.executable, "-c", suicide])
    director = Director([doomed], data_dir=tmp_path, ready_timeout_s=_READY_WITHIN_S)
    with pytest.raises(
        ServiceStartError, match=r"^service 'doomed' ended before it was ready: killed by SIGKILL$"
    ):
        await asyncio.wait_for(director.run(asyncio.Event()), _READY_WITHIN_S)


def test_a_busy_port_stops_the_start_at_once_naming_service_and_port(tmp_path: Path) -> None:
    """Regression: ten bind warnings, then 26 s later a timeout that named no port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        began = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "postoffice", "up", "--data-dir", str(tmp_path)],
            capture_output=True,
            env={**_env(), "POSTOFFICE_STORE_PORT": str(port)},
            timeout=DEFAULT_STOP_TIMEOUT_S + 10,
            check=False,
        )
        took_s = time.monotonic() - began
    assert result.returncode == 1, result.stderr
    assert result.stderr.decode().splitlines()[-1] == (
        f"Error: service 'store' could not start:"
        f" cannot listen for store on 127.0.0.1:{port}: address already in use"
    )
    assert result.stderr.count(b" WARNING ") == 0
    # No ready timeout and no SIGKILL deadline: a cold interpreter start, and out.
    assert took_s < DEFAULT_STOP_TIMEOUT_S
    assert not (tmp_path / "run" / STATUS_FILE).exists()


def test_only_command_starts_the_store_it_needs(tmp_path: Path) -> None:
    """Regression: under `--only command` SET answered with a flag `up` does not have."""
    stdout, stderr = tmp_path / "up.out", tmp_path / "up.err"
    data_dir = tmp_path / "data"
    argv = [sys.executable, "-m", "postoffice", "up", "--data-dir", str(data_dir)]
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [*argv, "--only", "command"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=_env(),
        )
    up = _Up(process=process, data_dir=data_dir, stdout=stdout, stderr=stderr)
    try:
        entry = up.wait_ready()
        body = up.status()
        assert body is not None
        assert sorted(body["services"]) == ["command", "store"]
        host, port = entry["listeners"]["command"]
        with redis.Redis(host=host, port=port, socket_timeout=5) as client:
            _wait_until("the store link", lambda: client.info("keyspace")["store_connected"] == 1)
            assert client.set("only:key", b"v") is True
            assert client.get("only:key") == b"v"
        assert "starting a needed service too service=store needed_by=command" in (
            stderr.read_text()
        )
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=DEFAULT_STOP_TIMEOUT_S + 5) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=5)
            for pid in up.seen_pids - {process.pid}:
                if not _gone(pid):
                    os.kill(pid, signal.SIGKILL)


_README = Path(__file__).resolve().parents[2] / "README.md"
_CHECKOUT = _README.parent


def _quick_start_commands() -> list[str]:
    """The commands of the README's quick start that run beside `make up`, comments cut."""
    text = _README.read_text()
    section = text[text.index("## Quick start") : text.index("\n## ", text.index("## Quick start"))]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    lines = blocks[-1].splitlines()
    return [line.split("  #", 1)[0].strip() for line in lines if line.strip()]


@pytest.mark.skipif(
    shutil.which("redis-cli") is None or shutil.which("nc") is None,
    reason="redis-cli or nc not installed (make tools)",
)
def test_the_quick_start_commands_work_as_written(tmp_path: Path) -> None:
    """Each command the README shows, run by a shell, with only the ports made ours."""
    base = free_port_block(8)
    env = {**_env(), "POSTOFFICE_INGEST_SYS_BASE": str(base)}
    env["POSTOFFICE_INGEST_DATA_BASE"] = str(base + 4)
    env["POSTOFFICE_INGEST_X"] = "1"
    data_dir = tmp_path / "data"
    stdout, stderr = tmp_path / "up.out", tmp_path / "up.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "postoffice", "up", "--data-dir", str(data_dir)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
        )
    up = _Up(process=process, data_dir=data_dir, stdout=stdout, stderr=stderr)
    # `postoffice` as the activated venv has it: this interpreter's package.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "postoffice"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m postoffice "$@"\n')
    wrapper.chmod(0o755)
    shell_env = {**env, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    try:
        up.wait_ready()
        _wait_until("every service ready", lambda: _all_ready(up))
        body = up.status()
        assert body is not None
        services = body["services"]
        ports = {
            "6380": services["command"]["listeners"]["command"][1],
            "7002": services["ingest"]["listeners"]["control"][1],
        }
        store_port = services["store"]["listeners"]["store"][1]
        outputs: dict[str, str] = {}
        commands = _quick_start_commands()
        assert commands[0] == ". .venv/bin/activate"
        for command in commands[1:]:
            line = re.sub(r"\b(6380|7002)\b", lambda m: str(ports[m.group(1)]), command)
            if line.startswith("postoffice store "):
                line += f" --port {store_port}"
            elif line.startswith("postoffice ingest send "):
                line += f" --sys-base {base}"
            result = subprocess.run(
                ["/bin/sh", "-c", line],
                capture_output=True,
                cwd=_CHECKOUT,
                env=shell_env,
                timeout=30,
                check=False,
            )
            assert result.returncode == 0, (command, result.stdout, result.stderr)
            outputs[command] = result.stdout.decode()
        assert outputs["redis-cli -p 6380 ping"] == "PONG\n"
        assert outputs["printf 'PING\\nQUIT\\n' | nc 127.0.0.1 6380"] == "PONG\nOK\n"
        assert outputs["redis-cli -p 6380 set greeting hello"] == "OK\n"
        assert outputs["redis-cli -p 6380 get greeting"] == "hello\n"
        assert outputs["postoffice store get greeting"] == "hello\n"
        assert (data_dir / "files" / "README.md").read_bytes() == _README.read_bytes()
        assert "uploads_total" in outputs["redis-cli -p 7002 status"]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=DEFAULT_STOP_TIMEOUT_S + 5)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=5)
            for pid in up.seen_pids - {process.pid}:
                if not _gone(pid):
                    os.kill(pid, signal.SIGKILL)


def _all_ready(up: _Up) -> bool:
    body = up.status()
    return body is not None and all(s["state"] == "ready" for s in body["services"].values())
