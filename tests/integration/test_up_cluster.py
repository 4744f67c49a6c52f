"""`postoffice up --cluster` as a real process: three nats-servers, moto_server and two
ingest nodes under the director; a file sent with the printed `ingest send --node ...`
lands in S3, a killed nats-server is restarted, and SIGTERM leaves nothing behind."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from postoffice.office.director import DEFAULT_STOP_TIMEOUT_S, STATUS_FILE
from postoffice.office.natscluster import INGEST_NODES, NATS_NODES, find_moto_server
from tests.integration.cluster_harness import NATS_SERVER, S3_KEY_ID, S3_SECRET

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(NATS_SERVER is None, reason="nats-server is not installed (make tools)"),
]

_READY_WITHIN_S = 40.0  # seven children one after another, and a JetStream election
_POLL_S = 0.05
_CLUSTER = (*NATS_NODES, "s3", *INGEST_NODES)

Status = dict[str, Any]


def _wait_until(what: str, check: Callable[[], bool], timeout_s: float = _READY_WITHIN_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(_POLL_S)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


#: Set in the environment of the `up` under test, so every process it starts carries it:
#: a port a sibling test's server took after ours let it go is not counted as ours.
_RUN_MARK = "POSTOFFICE_TEST_UP_RUN"


def _held_by_this_run(ports: set[int], mark: str) -> list[int]:
    """The ports of `ports` some process started by this run (its environment carries
    `mark`) still listens on; a process whose environment cannot be read counts."""
    held = set()
    for conn in psutil.net_connections(kind="tcp"):
        port = conn.laddr.port if conn.laddr else None
        if conn.status != psutil.CONN_LISTEN or port not in ports:
            continue
        try:
            ours = conn.pid is None or psutil.Process(conn.pid).environ().get(_RUN_MARK) == mark
        except psutil.NoSuchProcess:
            continue
        except psutil.AccessDenied:
            ours = True
        if ours and port is not None:
            held.add(port)
    return sorted(held)


@dataclass
class _Up:
    process: subprocess.Popen[bytes]
    data_dir: Path
    stdout: Path
    stderr: Path
    #: Every process seen under the director (runners, servers, their children).
    seen: set[int] = field(default_factory=set)

    def status(self) -> Status | None:
        try:
            body: Status = json.loads((self.data_dir / "run" / STATUS_FILE).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return body

    def note_descendants(self) -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.process.pid).children(recursive=True):
                self.seen.add(child.pid)

    def wait_all_ready(self, restarted: str | None = None) -> Status:
        found: list[Status] = []

        def ready() -> bool:
            assert self.process.poll() is None, f"director exited: {self.stderr.read_text()}"
            body = self.status()
            if body is None:
                return False
            services = body["services"]
            if set(services) != {"store", *_CLUSTER}:
                return False
            if any(entry["state"] != "ready" for entry in services.values()):
                return False
            if restarted is not None and services[restarted]["restarts"] < 1:
                return False
            found.append(body)
            return True

        _wait_until("every service of up --cluster to be ready", ready)
        self.note_descendants()
        return found[-1]


@pytest.fixture
def up(tmp_path: Path) -> Iterator[_Up]:
    try:
        find_moto_server()
    except Exception as exc:
        pytest.skip(str(exc))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTOFFICE_", "AWS_"))}
    env["POSTOFFICE_STORE_PORT"] = "0"
    env["POSTOFFICE_STORE_METRICS_PORT"] = "0"
    env[_RUN_MARK] = str(tmp_path)
    data_dir = tmp_path / "data"
    stdout, stderr = tmp_path / "up.out", tmp_path / "up.err"
    argv = [sys.executable, "-m", "postoffice", "up", "--cluster", "--cluster-base", "0"]
    argv += ["--only", "store", "--data-dir", str(data_dir)]
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)
    handle = _Up(process=process, data_dir=data_dir, stdout=stdout, stderr=stderr)
    try:
        yield handle
    finally:
        handle.note_descendants()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=DEFAULT_STOP_TIMEOUT_S + 5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        for pid in handle.seen:  # never leave a server behind, whatever failed
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)


def _s3_object(endpoint: str, bucket: str, key: str) -> bytes:
    import boto3  # type: ignore[import-untyped]  # moto brings it, without type stubs

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_KEY_ID,
        aws_secret_access_key=S3_SECRET,
        region_name="us-east-1",
    )
    body: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


def test_up_cluster_takes_a_file_into_s3_restarts_nats_and_stops_everything(
    up: _Up, tmp_path: Path
) -> None:
    started = time.monotonic()
    body = up.wait_all_ready()
    services = body["services"]
    _wait_until("the send line", lambda: "ingest send --node" in up.stdout.read_text(), 5.0)
    printed = up.stdout.read_text()
    match = re.search(r"postoffice ingest send (--node \S+ --node \S+) FILE", printed)
    assert match is not None, printed
    health = [services[name]["listeners"]["health"] for name in INGEST_NODES]
    assert match.group(1) == " ".join(f"--node {h}:{p}" for h, p in health)

    # The upload, with the very flags `up` printed, from a client that has no AWS_* set.
    source = tmp_path / "cluster-demo.bin"
    content = os.urandom(1 << 20) + b"po" * 300_000
    source.write_bytes(content)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTOFFICE_", "AWS_"))}
    argv = [sys.executable, "-m", "postoffice", "ingest", "send", "--quiet", "--timeout", "30"]
    sent = subprocess.run(
        [*argv, *match.group(1).split(), str(source)],
        capture_output=True,
        env=env,
        timeout=45,
        check=False,
    )
    assert sent.returncode == 0, sent.stderr.decode()
    assert b"published as cluster-demo.bin" in sent.stdout
    host, port = services["s3"]["listeners"]["s3"]
    assert _s3_object(f"http://{host}:{port}", "postoffice", "files/cluster-demo.bin") == content

    # A nats-server killed under its runner: the director starts the pair again.
    runner = psutil.Process(services["nats2"]["pid"])
    (server,) = runner.children()
    assert server.name() == "nats-server"
    server.kill()
    body = up.wait_all_ready(restarted="nats2")
    assert body["services"]["nats2"]["last_exit"] == "killed by SIGKILL"
    assert body["services"]["nats2"]["listeners"] == services["nats2"]["listeners"]

    ports = {
        port for entry in body["services"].values() for _host, port in entry["listeners"].values()
    }
    assert _held_by_this_run(ports, str(tmp_path)) == sorted(ports)  # the mark reaches them
    pids = set(up.seen)
    assert len(pids) >= 2 * len(_CLUSTER)  # every runner and its server, every ingest node
    up.process.send_signal(signal.SIGTERM)
    assert up.process.wait(timeout=3 * DEFAULT_STOP_TIMEOUT_S) == 0
    assert [pid for pid in pids if not _gone(pid)] == []
    assert _held_by_this_run(ports, str(tmp_path)) == []
    assert sorted(p.name for p in (up.data_dir / "run").iterdir()) == ["director.lock"]
    stopped = re.findall(r"service stopped child=([\w-]+)", up.stderr.read_text())
    assert stopped == [*reversed(_CLUSTER), "store"]
    print(f"up --cluster: ready, sent, restarted and stopped in {time.monotonic() - started:.1f} s")


def test_a_director_killed_with_sigkill_takes_the_cluster_with_it(up: _Up) -> None:
    """PR_SET_PDEATHSIG twice over: the runners die with the director, their servers
    (nats-server, moto_server) with the runners."""
    up.wait_all_ready()
    servers = [
        child.pid
        for pid in up.seen
        if not _gone(pid)
        for child in psutil.Process(pid).children()
        if child.name() in ("nats-server", "moto_server")
    ]
    assert len(servers) == len(NATS_NODES) + 1
    # Held as Process objects, which know their start time, so a reused pid never counts.
    orphans = [psutil.Process(pid) for pid in up.seen if not _gone(pid)]
    up.process.kill()
    up.process.wait(timeout=5)

    def left() -> list[str]:
        alive = []
        for process in orphans:
            with contextlib.suppress(psutil.NoSuchProcess):
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{process.pid} {' '.join(process.cmdline()[:6])}")
        return alive

    deadline = time.monotonic() + 20.0
    while left() and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    assert left() == []


def test_a_nats_server_whose_ports_are_taken_fails_its_start(tmp_path: Path) -> None:
    """Ports held by another process (another director's nats-server, say) answer the
    runner's readiness check; that must not count as this server listening."""
    assert NATS_SERVER is not None
    ready = tmp_path / "nats1.ready.json"
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(3):
            holder = stack.enter_context(socket.socket())
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            ports.append(holder.getsockname()[1])
        argv = [
            sys.executable, "-m", "postoffice.office.natscluster", "nats",
            "--ready-file", str(ready), "--dir", str(tmp_path / "cluster"),
            "--name", "nats1", "--server", NATS_SERVER, "--client-port", str(ports[0]),
            "--route-port", str(ports[1]), "--monitor-port", str(ports[2]),
        ]  # fmt: skip
        runner = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    assert runner.returncode == 1
    report = json.loads(ready.read_text())
    assert report["error"] == f"nats1 cannot listen: 127.0.0.1:{ports[0]} (client) is in use"
