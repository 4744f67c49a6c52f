"""`postoffice up --cluster`: a demo ingest cluster on one machine (three nats-servers with
JetStream, moto_server or a given S3 store, two ingest nodes) as the director's services,
and the runner that gives a foreign server a ready file. Office layer."""

# Design
# ------
# The director knows a service only as a command line that writes a ready file. nats-server
# and moto_server write none, so each runs under this module's runner (`python -m
# postoffice.office.natscluster nats|s3 ...`): it writes the server's config, starts the
# server with PR_SET_PDEATHSIG (the server dies with its runner, as the runner dies with
# the director), waits until every port of it accepts (and, for the last nats-server,
# until JetStream has a meta leader, so the ingest nodes started next can create their
# buckets), then writes the ready file and passes SIGTERM and SIGINT on. The runner exits
# as the server did, so the director restarts the pair on a crash.
#
# Ports are known before any process starts (every nats-server names the others' route
# ports): a fixed block from `--cluster-base`, or, with base 0, free ones picked once at
# the start and kept across restarts; the ingest nodes then take port 0 and say theirs in
# their ready files.

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Final, final

from postoffice.core.errors import ConfigError
from postoffice.core.runtime import announce, announce_failure
from postoffice.office.director import death_signal_hook
from postoffice.office.services import Launch, ServiceSpec, serve_argv

__all__ = [
    "BLOCK_PORTS",
    "DEFAULT_BUCKET",
    "DEFAULT_CLUSTER_BASE",
    "INGEST_NODES",
    "NATS_NODES",
    "ClusterPlan",
    "ClusterPorts",
    "cluster_ports",
    "cluster_services",
    "find_moto_server",
    "find_nats_server",
    "main",
    "nats_config",
    "send_line",
]

#: The first port of the cluster's fixed block (`up --cluster-base`, 0: free ones).
DEFAULT_CLUSTER_BASE: Final = 7500
#: Ports the block spans: nats clients +0..2, routes +3..5, monitors +6..8, S3 +9, and
#: ingest node i at sys-base +10+20i (4 ports), data-base +20+20i (its default 4).
BLOCK_PORTS: Final = 50
NATS_NODES: Final = ("nats1", "nats2", "nats3")
INGEST_NODES: Final = ("ingest-a", "ingest-b")
DEFAULT_BUCKET: Final = "postoffice"
#: The S3 credentials handed to the ingest nodes when moto_server plays S3 (it takes any).
MOTO_CREDENTIALS: Final = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
#: Under the director's 15 s ready timeout, so the runner's own reason is the one shown.
LISTEN_TIMEOUT_S: Final = 12.0
_POLL_S: Final = 0.05
_HOST: Final = "127.0.0.1"
_NATS_DEB: Final = "/usr/sbin/nats-server"


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterPorts:
    """The loopback ports of the demo cluster; 0 for an ingest port means a free one."""

    nats_client: tuple[int, ...]
    nats_route: tuple[int, ...]
    nats_monitor: tuple[int, ...]
    s3: int
    ingest_sys: tuple[int, ...]
    ingest_data: tuple[int, ...]


def cluster_ports(base: int) -> ClusterPorts:
    """The ports of the block starting at `base`, or free ones picked now when it is 0.

    Raises ConfigError when the block does not fit below 65536 or starts below 1024.
    """
    if base == 0:
        return _free_ports()
    if not 1024 <= base <= 65536 - BLOCK_PORTS:
        raise ConfigError(
            f"cluster base port {base} out of range: the block of {BLOCK_PORTS} ports needs"
            f" 1024..{65536 - BLOCK_PORTS}, or 0 for free ones"
        )
    nats = len(NATS_NODES)
    return ClusterPorts(
        nats_client=tuple(base + i for i in range(nats)),
        nats_route=tuple(base + nats + i for i in range(nats)),
        nats_monitor=tuple(base + 2 * nats + i for i in range(nats)),
        s3=base + 3 * nats,
        ingest_sys=tuple(base + 10 + 20 * i for i in range(len(INGEST_NODES))),
        ingest_data=tuple(base + 20 + 20 * i for i in range(len(INGEST_NODES))),
    )


def _free_ports() -> ClusterPorts:
    # All held open together, so the kernel hands out distinct ports.
    nats = len(NATS_NODES)
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(3 * nats + 1):
            sock = stack.enter_context(socket.socket())
            sock.bind((_HOST, 0))
            ports.append(int(sock.getsockname()[1]))
    zeros = (0,) * len(INGEST_NODES)
    return ClusterPorts(
        nats_client=tuple(ports[0:nats]),
        nats_route=tuple(ports[nats : 2 * nats]),
        nats_monitor=tuple(ports[2 * nats : 3 * nats]),
        s3=ports[3 * nats],
        ingest_sys=zeros,
        ingest_data=zeros,
    )


def find_nats_server() -> str:
    """The nats-server executable. Raises ConfigError saying how to get one."""
    found = shutil.which("nats-server") or (_NATS_DEB if os.access(_NATS_DEB, os.X_OK) else None)
    if found is None:
        raise ConfigError(
            "nats-server not found: install nats-server 2.9+ (Debian: apt-get install"
            " nats-server, or `make tools`)"
        )
    return found


def find_moto_server() -> str:
    """The moto_server beside this interpreter or on PATH. Raises ConfigError saying how to
    get one, or to give a real S3 store instead."""
    beside = Path(sys.executable).with_name("moto_server")
    found = str(beside) if os.access(beside, os.X_OK) else shutil.which("moto_server")
    if found is None:
        raise ConfigError(
            "moto_server not found: install it (pip install 'moto[server]', in the dev"
            " extra) or give a real S3 store with --s3 URL --bucket NAME"
        )
    return found


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterPlan:
    """What `up --cluster` runs: its ports, and the S3 store (moto_server's when
    `moto_server` is set, else the given `s3_url`)."""

    ports: ClusterPorts
    nats_server: str
    bucket: str = DEFAULT_BUCKET
    moto_server: str | None = None
    s3_url: str | None = None

    def __post_init__(self) -> None:
        if (self.moto_server is None) == (self.s3_url is None):
            raise ConfigError("a cluster plan needs exactly one of moto_server and s3_url")
        if not self.bucket:
            raise ConfigError("bucket must not be empty")

    @property
    def nats_urls(self) -> str:
        return ",".join(f"nats://{_HOST}:{port}" for port in self.ports.nats_client)

    @property
    def endpoint(self) -> str:
        return self.s3_url if self.s3_url is not None else f"http://{_HOST}:{self.ports.s3}"


def nats_config(
    *,
    name: str,
    client_port: int,
    route_port: int,
    monitor_port: int,
    peer_route_ports: Sequence[int],
    store_dir: Path,
    log_file: Path,
) -> str:
    """The config of one loopback nats-server of the demo cluster, with JetStream."""
    routes = ", ".join(f'"nats-route://{_HOST}:{port}"' for port in peer_route_ports)
    return (
        f"server_name: {name}\n"
        f"listen: {_HOST}:{client_port}\n"
        f"http: {_HOST}:{monitor_port}\n"
        f'log_file: "{log_file}"\n'
        f'jetstream {{ store_dir: "{store_dir}" }}\n'
        f"cluster {{\n  name: postoffice\n  listen: {_HOST}:{route_port}\n"
        f"  routes: [{routes}]\n  no_advertise: true\n}}\n"
    )


def cluster_dir(data_dir: Path) -> Path:
    """Where the demo cluster's servers keep their state and logs."""
    return data_dir / "cluster"


def _runner(kind: str, launch: Launch) -> list[str]:
    return [
        sys.executable, "-m", "postoffice.office.natscluster", kind,
        "--ready-file", str(launch.ready_file), "--dir", str(cluster_dir(launch.data_dir)),
    ]  # fmt: skip


def cluster_services(plan: ClusterPlan) -> tuple[ServiceSpec, ...]:
    """The director's services for `plan`, in start order: the nats-servers (the last
    ready once JetStream has a leader), moto_server unless a store was given, then the
    ingest nodes."""
    ports = plan.ports
    specs: list[ServiceSpec] = []
    for index, name in enumerate(NATS_NODES):
        peers = [str(p) for i, p in enumerate(ports.nats_route) if i != index]

        def nats(
            launch: Launch, index: int = index, name: str = name, peers: list[str] = peers
        ) -> list[str]:
            argv = [
                *_runner("nats", launch),
                "--name", name, "--server", plan.nats_server,
                "--client-port", str(ports.nats_client[index]),
                "--route-port", str(ports.nats_route[index]),
                "--monitor-port", str(ports.nats_monitor[index]),
            ]  # fmt: skip
            for peer in peers:
                argv += ["--peer", peer]
            if index == len(NATS_NODES) - 1:
                argv.append("--wait-leader")
            return argv

        specs.append(ServiceSpec(name=name, argv=nats))
    env: dict[str, str] = {}
    if plan.moto_server is not None:
        moto = plan.moto_server

        def s3(launch: Launch) -> list[str]:
            return [
                *_runner("s3", launch),
                "--server", moto, "--port", str(ports.s3), "--bucket", plan.bucket,
            ]  # fmt: skip

        specs.append(ServiceSpec(name="s3", argv=s3))
        env = dict(MOTO_CREDENTIALS)
    needs = tuple(spec.name for spec in specs)
    for index, name in enumerate(INGEST_NODES):

        def extra(launch: Launch, index: int = index, name: str = name) -> list[str]:
            return [
                "--data-dir", str(cluster_dir(launch.data_dir) / name),
                "--sys-base", str(ports.ingest_sys[index]),
                "--data-base", str(ports.ingest_data[index]),
                "--cluster", plan.nats_urls, "--s3", plan.endpoint, "--bucket", plan.bucket,
                "--node-name", name,
            ]  # fmt: skip

        specs.append(
            ServiceSpec(
                name=name, argv=serve_argv("ingest", extra, traced=True), needs=needs, env=env
            )
        )
    return tuple(specs)


def send_line(health: Sequence[tuple[str, int]]) -> str:
    """The command that uploads a file to the cluster through these nodes' health ports."""
    nodes = " ".join(f"--node {host}:{port}" for host, port in health)
    return f"postoffice ingest send {nodes} FILE"


# -- the runner ---------------------------------------------------------------------------


@final
class _Runner:
    """One foreign server under the director: started, watched until its ports accept,
    announced, signalled, and its exit passed on."""

    def __init__(self, service: str, ready_file: Path, log_file: Path) -> None:
        self.service = service
        self.ready_file = ready_file
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def __repr__(self) -> str:
        pid = None if self.process is None else self.process.pid
        return f"<_Runner {self.service} pid={pid} stopping={self.stopping}>"

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    def run(
        self,
        argv: list[str],
        listeners: dict[str, tuple[str, int]],
        ready: Callable[[], bool] | None = None,
        stdout: int | None = None,
    ) -> int:
        """Run `argv` until it exits; its return code (minus the signal if one killed it)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        # SIGHUP: the director's reload; these servers are configured once.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self.ready_file.unlink(missing_ok=True)
        taken = _taken(listeners)
        if taken is not None:
            announce_failure(
                self.ready_file,
                service=self.service,
                error=f"{self.service} cannot listen: {taken}",
            )
            return 1
        try:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT if stdout is not None else None,
                preexec_fn=death_signal_hook(),
            )
        except OSError as exc:
            announce_failure(
                self.ready_file, service=self.service, error=f"cannot run {argv[0]}: {exc}"
            )
            return 1
        error = self._await_listening(listeners, ready)
        if error is not None:
            if self.process.poll() is None:
                self.process.terminate()
            code = self.process.wait()
            if not self.stopping:
                announce_failure(
                    self.ready_file, service=self.service, error=f"{error} (log: {self.log_file})"
                )
            return code
        announce(self.ready_file, service=self.service, addresses=listeners)
        return self.process.wait()

    def _await_listening(
        self, listeners: dict[str, tuple[str, int]], ready: Callable[[], bool] | None
    ) -> str | None:
        assert self.process is not None
        deadline = time.monotonic() + LISTEN_TIMEOUT_S
        waiting = dict(listeners)
        while True:
            code = self.process.poll()
            if code is not None:
                return f"{self.service} exited with code {code} before it listened"
            if self.stopping:
                return "stopped before it was ready"
            for name, address in list(waiting.items()):
                with contextlib.suppress(OSError):
                    socket.create_connection(address, timeout=0.2).close()
                    del waiting[name]
            if not waiting and (ready is None or ready()):
                return None
            if time.monotonic() > deadline:
                what = ", ".join(f"{h}:{p}" for h, p in waiting.values()) or "its readiness"
                return (
                    f"{self.service} not ready within {LISTEN_TIMEOUT_S:g} s (waiting for {what})"
                )
            time.sleep(_POLL_S)


def _taken(listeners: dict[str, tuple[str, int]]) -> str | None:
    """Which of the ports another process holds, if one does. Checked before the server
    starts: the readiness check connects, and a port held by someone else (another
    director's nats-server) would answer it as if this server listened."""
    for name, address in listeners.items():
        with socket.socket() as probe:
            # As a server binds: a port left in TIME_WAIT is free to it.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError:
                return f"{address[0]}:{address[1]} ({name}) is in use"
    return None


def _exit_like(code: int) -> int:
    """Exit as the server did: killed by its signal too, so the director says `killed by
    SIGKILL` rather than a shell's 137; or with its exit code."""
    if code < 0:
        signum = -code
        with contextlib.suppress(OSError, ValueError):  # SIGKILL and SIGSTOP keep theirs
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return 128 + signum  # a signal the default ignores (SIGCHLD, say) lands here
    return code


def _has_leader(monitor_port: int) -> Callable[[], bool]:
    def check() -> bool:
        url = f"http://{_HOST}:{monitor_port}/jsz"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as reply:
                body = json.load(reply)
        except (OSError, urllib.error.URLError, ValueError):
            return False
        meta = body.get("meta_cluster") if isinstance(body, dict) else None
        return isinstance(meta, dict) and bool(meta.get("leader"))

    return check


def _make_bucket(port: int, bucket: str) -> Callable[[], bool]:
    """A readiness check that creates the bucket (moto takes an unsigned PUT)."""

    def check() -> bool:
        request = urllib.request.Request(f"http://{_HOST}:{port}/{bucket}", method="PUT")
        try:
            with urllib.request.urlopen(request, timeout=2.0):
                return True
        except (OSError, urllib.error.URLError):
            return False

    return check


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m postoffice.office.natscluster")
    kinds = parser.add_subparsers(dest="kind", required=True)
    nats = kinds.add_parser("nats", help="one nats-server of the demo cluster")
    s3 = kinds.add_parser("s3", help="moto_server with the bucket made")
    for sub in (nats, s3):
        sub.add_argument("--ready-file", type=Path, required=True)
        sub.add_argument("--dir", type=Path, required=True, help="the cluster's directory")
        sub.add_argument("--server", required=True, help="the executable")
    nats.add_argument("--name", required=True)
    nats.add_argument("--client-port", type=int, required=True)
    nats.add_argument("--route-port", type=int, required=True)
    nats.add_argument("--monitor-port", type=int, required=True)
    nats.add_argument("--peer", type=int, action="append", default=[], help="a route port")
    nats.add_argument("--wait-leader", action="store_true")
    s3.add_argument("--port", type=int, required=True)
    s3.add_argument("--bucket", required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one foreign server of the demo cluster as the arguments say; its return code
    (negative: the signal that killed it)."""
    args = _parser().parse_args(argv)
    directory: Path = args.dir
    directory.mkdir(parents=True, exist_ok=True)
    if args.kind == "nats":
        name: str = args.name
        store = directory / name
        store.mkdir(exist_ok=True)
        log_file = directory / f"{name}.log"
        config = directory / f"{name}.conf"
        config.write_text(
            nats_config(
                name=name,
                client_port=args.client_port,
                route_port=args.route_port,
                monitor_port=args.monitor_port,
                peer_route_ports=args.peer,
                store_dir=store,
                log_file=log_file,
            )
        )
        listeners = {
            "client": (_HOST, args.client_port),
            "routes": (_HOST, args.route_port),
            "monitor": (_HOST, args.monitor_port),
        }
        runner = _Runner(name, args.ready_file, log_file)
        ready = _has_leader(args.monitor_port) if args.wait_leader else None
        return runner.run([args.server, "-c", str(config)], listeners, ready)
    log_file = directory / "s3.log"
    runner = _Runner("s3", args.ready_file, log_file)
    with log_file.open("ab") as log:
        return runner.run(
            [args.server, "-H", _HOST, "-p", str(args.port)],
            {"s3": (_HOST, args.port)},
            _make_bucket(args.port, args.bucket),
            stdout=log.fileno(),
        )


if __name__ == "__main__":
    sys.exit(_exit_like(main()))
