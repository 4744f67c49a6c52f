"""The multi-process run's processes as the director sees them: it starts the private
bus server and the role processes, talks to each over its channels (`send`, `wait`),
notices any that ends (ChildLostError), and stops them all and removes their files.
Office layer."""

# Design
# ------
# Every child keeps a connection to the director's socket (it says hello on it once its
# channels exist), and each of the director's own children has a pidfd; all of them,
# the listening socket and every `up` channel's eventfd are in one poll. A connection
# closing or a pidfd becoming readable mid-run ends the run with cause error, naming
# the child; for a user process (the manager's child, not the director's) the manager
# says how it ended (LOST). On every ending the director stops the children (SIGTERM,
# then SIGKILL; the manager first, as it kills and reaps the user processes), then the
# bus server (which removes its shared-memory files), then removes the run directory
# and the shared-memory directory. Children die with the director (PR_SET_PDEATHSIG),
# and the manager then removes those two directories itself.

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, final

from postoffice.bus import BusError, Client, Publisher, Subscriber
from postoffice.core.errors import PostOfficeError
from postoffice.core.framing import NEED_DATA, MessageStream
from postoffice.office.errors import ChildLostError, OfficeConfigError
from postoffice.office.roleprocs import (
    BUS_SOCKET,
    CHANNEL_SLOTS,
    DIRECTOR_SOCKET,
    SLOT_BYTES,
    channel_names,
    process_name,
)
from postoffice.office.roles_wire import (
    MAX_SOCKET_PAYLOAD_BYTES,
    AddUsers,
    Down,
    Hello,
    Lost,
    SocketMessage,
    Up,
    decode_socket,
    decode_up,
    encode_down,
    encode_socket,
)
from postoffice.office.services import describe_exit
from postoffice.office.simconfig import OfficeConfig

__all__ = [
    "MAX_ROLE_PROCESSES",
    "READY_TIMEOUT_S",
    "REPLY_TIMEOUT_S",
    "STOP_TIMEOUT_S",
    "Child",
    "RunProcesses",
    "check_processes",
]

MAX_ROLE_PROCESSES: Final = 500  # two bus channels each, of the bus server's 1022
READY_TIMEOUT_S: Final = 60.0  # every child started and connected (cold starts, 2 cores)
REPLY_TIMEOUT_S: Final = 30.0  # a role process that answers nothing this long is stuck
STOP_TIMEOUT_S: Final = 5.0  # after SIGTERM, before SIGKILL
_READY_POLL_S: Final = 0.01  # the bus server's ready file, polled while it starts
_READ_BYTES: Final = 65536
_SHM: Final = Path("/dev/shm")

#: Told each answer of a role process, in the order it came.
AnswerSink = Callable[["Child", Up], None]
#: Told each role process that said hello, once its channels are open.
HelloSink = Callable[["Child", Hello], None]


@final
@dataclass(eq=False, repr=False)
class Child:
    """A process of the run, as the director watches it."""

    name: str
    popen: subprocess.Popen[bytes] | None = None  # the director's own children
    pidfd: int | None = None
    pid: int = 0
    conn: socket.socket | None = None
    stream: MessageStream[SocketMessage] = field(
        default_factory=lambda: MessageStream(decode_socket, MAX_SOCKET_PAYLOAD_BYTES)
    )
    down: Publisher | None = None
    up: Subscriber | None = None
    first: int = 0
    count: int = 0
    ready: bool = False  # said hello
    answered: bool = True
    answer: Up | None = None

    def label(self) -> str:
        """The child as the run's ending names it: `user process 3 (users 3..3, pid
        1234)`, `the issuer (pid 99)`."""
        if self.name.startswith("users"):
            last = self.first + self.count - 1
            return f"user process {self.name[5:]} (users {self.first}..{last}, pid {self.pid})"
        if self.name.startswith("operators"):
            last = self.first + self.count - 1
            return (
                f"operator process {self.name[9:]} (operators {self.first}..{last}, pid {self.pid})"
            )
        if self.name == "manager":
            return f"the users manager (pid {self.pid})"
        return f"the {self.name} (pid {self.pid})"

    def __repr__(self) -> str:
        state = "ready" if self.ready else "starting"
        return f"<Child {self.name} pid={self.pid} {state} answered={self.answered}>"


@final
class RunProcesses:
    """The processes of one multi-process run and the director's ends of their channels
    and connections. Not thread-safe; every wait is a poll, bounded by a timeout."""

    def __init__(
        self,
        config: OfficeConfig,
        *,
        seed: int,
        users_per_process: int,
        operators_per_process: int,
        on_answer: AnswerSink,
        on_hello: HelloSink,
    ) -> None:
        self.config = config
        self.seed = seed
        self.users_per_process = users_per_process
        self.operators_per_process = operators_per_process
        self._on_answer = on_answer
        self._on_hello = on_hello
        self.children: dict[str, Child] = {}
        self.run_dir: Path | None = None
        self.shm_dir: Path | None = None
        self.users = 0  # users the user processes run
        self._bus: Client | None = None
        self._bus_server: Child | None = None
        self._listener: socket.socket | None = None
        # epoll rather than poll: its own descriptor lets the event loop watch every
        # child while the director sleeps between paced minutes (`fileno`, `check`).
        self._poller = select.epoll()
        self._by_fd: dict[int, tuple[str, Child | None]] = {}
        self._readable: set[Child] = set()
        self._user_processes = 0

    def __repr__(self) -> str:
        return (
            f"<RunProcesses processes={len(self.children)} users={self.users}"
            f" run_dir={self.run_dir}>"
        )

    def operator_children(self) -> list[Child]:
        """The operator processes."""
        return [c for name, c in self.children.items() if name.startswith("operators")]

    def user_children(self) -> list[Child]:
        """The user processes."""
        return [c for name, c in self.children.items() if name.startswith("users")]

    def issuer(self) -> Child:
        """The ticket issuer's process."""
        return self.children["issuer"]

    def start(self) -> None:
        """Start the bus server, the ticket issuer, the operator processes and the users
        manager, and wait until all said hello. Raises ChildLostError, BusError or
        OSError (then `close` removes what was started)."""
        self.run_dir = Path(tempfile.mkdtemp(prefix="po-office-"))
        shm_base = _SHM if _SHM.is_dir() and os.access(_SHM, os.W_OK) else None
        self.shm_dir = Path(tempfile.mkdtemp(prefix="po-office-", dir=shm_base))
        self._start_bus()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.run_dir / DIRECTOR_SOCKET))
        self._listener.listen(1024)
        self._listener.setblocking(False)
        self._by_fd[self._listener.fileno()] = ("listener", None)
        self._poller.register(self._listener.fileno(), select.EPOLLIN)
        config = self.config
        self._spawn("issuer", ["issuer"])
        per = self.operators_per_process
        for index, first in enumerate(range(0, config.nof_workers, per)):
            count = min(per, config.nof_workers - first)
            self._spawn(
                f"operators{index}",
                ["operators", "--index", str(index), "--first", str(first), "--count", str(count)],
            )
        assert self._bus_server is not None
        self._spawn(
            "manager",
            ["manager", "--bus-pid", str(self._bus_server.pid), "--shm-dir", str(self.shm_dir)],
        )
        self._await_hellos(list(self.children))

    def add_users(self, count: int) -> None:
        """Ask the users manager for processes for `count` more users (numbered on from
        the last), and wait until each said hello. Raises ChildLostError."""
        if count <= 0:
            return
        per = self.users_per_process
        start = self._user_processes
        names = [f"users{i}" for i in range(start, start + math.ceil(count / per))]
        order = AddUsers(first=self.users, count=count, per_process=per, index=start)
        self._user_processes += len(names)
        self.users += count
        manager = self.children["manager"]
        assert manager.conn is not None
        manager.conn.sendall(encode_socket(order))
        self._await_hellos(names)

    def send(self, child: Child, message: Down) -> None:
        """Publish `message` to `child`, waiting for a slot if it is behind. Raises
        ChildLostError when it reads nothing for REPLY_TIMEOUT_S."""
        assert child.down is not None
        data = encode_down(message)
        try:
            while child.down.publish_bytes(data) is None:
                if not child.down.wait(REPLY_TIMEOUT_S):
                    raise ChildLostError(
                        f"{child.label()} read nothing for {REPLY_TIMEOUT_S:.0f} s"
                    )
        except BusError as exc:
            raise ChildLostError(f"cannot reach {child.label()}: {exc}") from exc

    def wait(self, children: list[Child], done: Callable[[], bool], what: str) -> None:
        """Read the children's answers (and any other child's that come) until `done`.
        Raises ChildLostError when a child dies or none answers in REPLY_TIMEOUT_S."""
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        todo = set(children)
        while True:
            for child in todo:
                self._drain(child)
            if done():
                return
            left = deadline - time.monotonic()
            if left <= 0:
                silent = ", ".join(c.label() for c in children[:3])
                more = f" and {len(children) - 3} more" if len(children) > 3 else ""
                raise ChildLostError(
                    f"no answer from {silent}{more} in {REPLY_TIMEOUT_S:.0f} s ({what})"
                )
            self._poll(left)
            todo = self._readable
            self._readable = set()

    def _drain(self, child: Child) -> None:
        up = child.up
        if up is None:
            return
        while (message := up.read()) is not None:
            data = bytes(message.data)
            message.release()
            try:
                self._on_answer(child, decode_up(data))
            except (PostOfficeError, IndexError, ValueError) as exc:
                raise ChildLostError(f"{child.label()} sent a bad answer: {exc}") from exc

    def _poll(self, timeout_s: float | None) -> None:
        """Wait once for anything: an answer, a connection, a HELLO, a child's end.
        Raises ChildLostError for a child that died."""
        for fd, _ in self._poller.poll(-1 if timeout_s is None else timeout_s):
            kind, child = self._by_fd.get(fd, ("gone", None))
            if kind == "up":
                assert child is not None
                self._readable.add(child)
            elif kind == "listener":
                self._accept()
            elif kind == "conn":
                assert child is not None
                self._receive(child)
            elif kind == "pidfd":
                assert child is not None
                raise ChildLostError(self._ended(child))

    def _ended(self, child: Child) -> str:
        code = None
        if child.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = child.popen.wait(STOP_TIMEOUT_S)
        how = "is gone" if code is None else describe_exit(code)
        return f"{child.label()} {how}"

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except BlockingIOError:
            return
        child = Child(name="(connecting)", conn=conn)
        self._by_fd[conn.fileno()] = ("conn", child)
        self._poller.register(conn.fileno(), select.EPOLLIN)

    def _receive(self, child: Child) -> None:
        assert child.conn is not None
        try:
            data = child.conn.recv(_READ_BYTES)
        except OSError:
            data = b""
        if not data:
            self._forget_conn(child)
            if child.name == "(connecting)":
                return
            if child.name.startswith("users"):
                self._user_lost(child)
            raise ChildLostError(self._ended(child))
        child.stream.feed(data)
        try:
            while (event := child.stream.next_event()) is not NEED_DATA:
                self._on_socket(child, event[1])
        except ChildLostError:
            raise
        except PostOfficeError as exc:
            raise ChildLostError(f"{child.label()} broke the protocol: {exc}") from exc

    def _user_lost(self, child: Child) -> None:
        """A user process's connection closed: the users manager says how it ended, and
        says so at once (it waits on the process); give it a moment."""
        manager = self.children.get("manager")
        if manager is None or manager.conn is None:
            return
        deadline = time.monotonic() + 1.0
        while (left := deadline - time.monotonic()) > 0:
            ready = select.select([manager.conn], [], [], left)[0]
            if not ready:
                return
            self._receive(manager)  # raises with the LOST it carries

    def _forget_conn(self, child: Child) -> None:
        if child.conn is None:
            return
        fd = child.conn.fileno()
        self._by_fd.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError):
            self._poller.unregister(fd)
        child.conn.close()
        child.conn = None

    def _on_socket(self, conn_child: Child, message: SocketMessage) -> None:
        match message:
            case Hello():
                self._hello(conn_child, message)
            case Lost(index=index, pid=pid, detail=detail):
                lost = self.children.get(f"users{index}")
                label = lost.label() if lost is not None else f"user process {index} (pid {pid})"
                raise ChildLostError(f"{label} {detail}")
            case AddUsers():
                raise ChildLostError(f"{conn_child.label()} sent ADD_USERS to the director")

    def _hello(self, conn_child: Child, hello: Hello) -> None:
        name = process_name(hello.role, hello.index)
        child = self.children.get(name)
        if child is None:
            if hello.role != "users" or not self.users:
                raise ChildLostError(f"an unexpected {name} (pid {hello.pid}) said hello")
            child = self.children[name] = Child(name=name)
        if child.ready:
            raise ChildLostError(f"{child.label()} said hello twice")
        child.ready = True
        child.pid = hello.pid
        child.first, child.count = hello.first, hello.count
        child.conn, child.stream = conn_child.conn, conn_child.stream
        assert child.conn is not None
        self._by_fd[child.conn.fileno()] = ("conn", child)
        if hello.role == "manager":
            return
        assert self._bus is not None
        down, up = channel_names(name)
        try:
            child.down = self._bus.create_publisher(
                down, reliable=True, slot_size=SLOT_BYTES, num_slots=CHANNEL_SLOTS
            )
            child.up = self._bus.create_subscriber(
                up, reliable=True, slot_size=SLOT_BYTES, num_slots=CHANNEL_SLOTS
            )
        except BusError as exc:
            raise ChildLostError(f"cannot open the channels of {child.label()}: {exc}") from exc
        fd = child.up.fileno()
        self._by_fd[fd] = ("up", child)
        self._poller.register(fd, select.EPOLLIN)
        self._on_hello(child, hello)

    def _spawn(self, name: str, args: list[str]) -> None:
        assert self.run_dir is not None
        config = self.config
        argv = [
            sys.executable, "-m", "postoffice.office.roleprocs", *args,
            "--run-dir", str(self.run_dir), "--parent", str(os.getpid()),
            "--seed", str(self.seed), "--pauses", str(config.nof_pause),
            "--p-serv-min", repr(config.p_serv_min), "--p-serv-max", repr(config.p_serv_max),
            "--n-requests", str(config.n_requests),
        ]  # fmt: skip
        self.children[name] = self._launch(name, argv)

    def _launch(self, name: str, argv: list[str]) -> Child:
        # A session of its own: a terminal's Ctrl-C reaches the director alone, which
        # then closes the day and stops the children itself.
        popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
        )
        child = Child(name=name, popen=popen, pid=popen.pid)
        try:
            child.pidfd = os.pidfd_open(popen.pid)
        except OSError:
            popen.kill()
            popen.wait()
            raise
        self._by_fd[child.pidfd] = ("pidfd", child)
        self._poller.register(child.pidfd, select.EPOLLIN)
        return child

    def _await_hellos(self, names: list[str]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S

        def missing() -> list[str]:
            return [n for n in names if n not in self.children or not self.children[n].ready]

        while todo := missing():
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChildLostError(
                    f"{', '.join(todo[:5])}{' ...' if len(todo) > 5 else ''} did not get ready"
                    f" in {READY_TIMEOUT_S:.0f} s"
                )
            self._poll(left)
            self._drain_readable()

    def _drain_readable(self) -> None:
        readable, self._readable = self._readable, set()
        for child in readable:
            self._drain(child)

    def fileno(self) -> int:
        """A descriptor readable when anything happens (an answer, a child's end): for
        an event loop to watch while the director sleeps, then call `check`."""
        return self._poller.fileno()

    def check(self) -> None:
        """Take in whatever happened, without waiting. Raises ChildLostError for a child
        that died."""
        self._poll(0)
        self._drain_readable()

    def _start_bus(self) -> None:
        assert self.run_dir is not None
        assert self.shm_dir is not None
        ready = self.run_dir / "bus.ready.json"
        argv = [
            sys.executable, "-m", "postoffice.office.lifeline", str(os.getpid()), "SIGTERM", "--",
            sys.executable, "-m", "postoffice", "bus", "serve", "--local",
            "--socket", str(self.run_dir / BUS_SOCKET), "--shm-dir", str(self.shm_dir),
            "--data-dir", str(self.run_dir), "--ready-file", str(ready), "--log-level", "WARNING",
        ]  # fmt: skip
        server = self._bus_server = Child(name="bus server")
        server.popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
        )
        server.pid = server.popen.pid
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if ready.exists():
                with contextlib.suppress(ValueError):
                    doc = json.loads(ready.read_text())
                    if isinstance(doc, dict) and doc.get("pid") == server.pid:
                        if "error" in doc:
                            raise ChildLostError(f"the bus server could not start: {doc['error']}")
                        break
            code = server.popen.poll()
            if code is not None:
                raise ChildLostError(f"the bus server {describe_exit(code)} before it was ready")
            if time.monotonic() > deadline:
                raise ChildLostError(f"the bus server was not ready in {READY_TIMEOUT_S:.0f} s")
            time.sleep(_READY_POLL_S)
        self._bus = Client(self.run_dir / BUS_SOCKET, name="office director")
        server.pidfd = os.pidfd_open(server.pid)
        self._by_fd[server.pidfd] = ("pidfd", server)
        self._poller.register(server.pidfd, select.EPOLLIN)

    def close(self) -> None:
        """Stop every process of the run and remove its files (idempotent): children
        first (SIGTERM, SIGKILL after STOP_TIMEOUT_S), then the bus server, then the run
        and shared-memory directories."""
        for child in list(self.children.values()):
            self._forget_conn(child)
        # The manager first: it kills and reaps its user processes before it exits.
        order = sorted(self.children.values(), key=lambda c: c.name != "manager")
        _stop([c.popen for c in order if c.popen is not None])
        if self._bus is not None:
            with contextlib.suppress(BusError, OSError):
                self._bus.close()
            self._bus = None
        if self._bus_server is not None and self._bus_server.popen is not None:
            _stop([self._bus_server.popen])
        watched = list(self.children.values())
        if self._bus_server is not None:
            watched.append(self._bus_server)
        for child in watched:
            if child.pidfd is not None:
                with contextlib.suppress(OSError):
                    os.close(child.pidfd)
                child.pidfd = None
        self.children.clear()
        self._bus_server = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._by_fd.clear()
        self._poller.close()
        for directory in (self.run_dir, self.shm_dir):
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
        self.run_dir = self.shm_dir = None


def check_processes(
    config: OfficeConfig, users: int, users_per_process: int, operators_per_process: int
) -> None:
    """Refuse a run whose `users` and operators would need more than MAX_ROLE_PROCESSES
    role processes. Raises OfficeConfigError saying how to fit."""
    processes = (
        math.ceil(users / users_per_process)
        + math.ceil(config.nof_workers / operators_per_process)
        + 1
    )
    if processes > MAX_ROLE_PROCESSES:
        raise OfficeConfigError(
            f"{users} users and {config.nof_workers} operators need {processes} role"
            f" processes, more than {MAX_ROLE_PROCESSES}: give each process more users"
            " (--users-per-process) or operators (--operators-per-process)"
        )


def _stop(popens: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each, wait, SIGKILL the ones still running after STOP_TIMEOUT_S."""
    for popen in popens:
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for popen in popens:
        try:
            popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
