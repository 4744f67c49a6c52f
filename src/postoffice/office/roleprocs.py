"""The multi-process run's role processes: the ticket issuer, the operators, the user
processes and the users manager that forks them. Each role process waits (poll, never
spinning) for the director's messages on its bus channel and answers on its own; the
role logic (`IssuerRole`, `OperatorsRole`, `UsersRole`) is pure. Office layer."""

# Design
# ------
# Every role process is a loop around one `poll`: its `down` channel's eventfd and its
# connection to the director's socket. A message from the director is answered on the
# process's `up` channel; the connection closing means the director is gone, and the
# process exits (it also dies with its parent through PR_SET_PDEATHSIG). The users
# manager has no bus channel: it forks user processes when the director asks (ADD_USERS
# on its connection), watches each through a pidfd, and reports one that ends (LOST).
# It forks rather than execs so a user process costs no interpreter start-up, and it
# forks before it ever connects to the bus, so no child inherits a bus connection.

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import shutil
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Final, final

from postoffice.bus import Client, Publisher, Subscriber
from postoffice.core.errors import BrokenError
from postoffice.core.framing import NEED_DATA, MessageStream
from postoffice.office.lifeline import die_with_parent
from postoffice.office.roles_wire import (
    MAX_SOCKET_PAYLOAD_BYTES,
    AddUsers,
    Count,
    Counted,
    DayStart,
    Down,
    Draws,
    Hello,
    Issue,
    Issued,
    Lost,
    OperatorNews,
    Plans,
    Stop,
    Up,
    Visits,
    decode_down,
    decode_socket,
    encode_socket,
    encode_up,
)
from postoffice.office.rules import Operator, TicketIssuer, User
from postoffice.office.services import describe_exit

__all__ = [
    "BUS_SOCKET",
    "CHANNEL_SLOTS",
    "DIRECTOR_SOCKET",
    "SLOT_BYTES",
    "IssuerRole",
    "OperatorsRole",
    "UsersRole",
    "channel_names",
    "process_name",
]

log = logging.getLogger(__name__)

BUS_SOCKET: Final = "bus.sock"  # in the run directory
DIRECTOR_SOCKET: Final = "director.sock"
CHANNEL_SLOTS: Final = 16  # messages in flight per direction; the director sends a few at most
SLOT_BYTES: Final = 4096  # a larger message (a big process's VISITS) grows the channel
PUBLISH_WAIT_S: Final = 30.0  # a reader that frees no slot this long is stuck or gone
_READ_BYTES: Final = 65536
ORPHAN_WAIT_S: Final = 5.0  # for the bus server to stop before its directory is removed


def process_name(role: str, index: int) -> str:
    """The name of a role process, in its channels and in messages: `issuer`,
    `operators3`, `users12`, `manager`."""
    return role if role in ("issuer", "manager") else f"{role}{index}"


def channel_names(name: str) -> tuple[str, str]:
    """The bus channels of role process `name`: from the director, to the director."""
    return f"office/{name}/down", f"office/{name}/up"


# -- the roles, pure -------------------------------------------------------------------


@final
class IssuerRole:
    """The ticket issuer: tickets unique and increasing over the run."""

    def __init__(self) -> None:
        self.issuer = TicketIssuer()

    def handle(self, message: Down) -> Up | None:
        """Answer ISSUE and COUNT; anything else is not for the issuer (None)."""
        match message:
            case Issue(count=count):
                return Issued(first=self.issuer.issue_block(count))
            case Count():
                return Counted(issued=self.issuer.issued)
            case _:
                return None

    def __repr__(self) -> str:
        return f"<IssuerRole {self.issuer!r}>"


@final
class OperatorsRole:
    """Operators `first` .. `first + count - 1`. Each draws its next customer's service
    time ahead (so starting a customer costs the director no wait), and gives an unused
    draw back at the next morning, so its stream runs exactly as in one process."""

    def __init__(self, *, seed: int, first: int, count: int, pauses: int) -> None:
        self.operators = {
            i: Operator(seed=seed, ident=i, pauses=pauses) for i in range(first, first + count)
        }

    @property
    def skills(self) -> tuple[int, ...]:
        """Each operator's skill, in id order."""
        return tuple(op.skill for op in self.operators.values())

    def handle(self, message: Down) -> Up | None:
        """DAY_START: each operator's plan and first draw; NEWS: breaks counted, and a
        new draw for each that started a customer (None when none did). Raises
        ValueError for an operator not run here or a break it does not have."""
        match message:
            case DayStart():
                plans = []
                for ident, op in self.operators.items():
                    op.give_back()
                    due = op.plan_day()
                    plans.append((ident, due, op.draw_ahead()))
                return Plans(plans=tuple(plans))
            case OperatorNews(served=served, breaks=breaks):
                for ident in breaks:
                    self._operator(ident).take_break()
                draws = []
                for ident in served:
                    op = self._operator(ident)
                    op.draw_used()
                    draws.append((ident, op.draw_ahead()))
                return Draws(draws=tuple(draws)) if draws else None
            case _:
                return None

    def _operator(self, ident: int) -> Operator:
        op = self.operators.get(ident)
        if op is None:
            raise ValueError(f"operator {ident} is not run here")
        return op

    def __repr__(self) -> str:
        return f"<OperatorsRole {list(self.operators)}>"


@final
class UsersRole:
    """Users `first` .. `first + count - 1`: each morning, who comes and with what."""

    def __init__(
        self,
        *,
        seed: int,
        first: int,
        count: int,
        p_serv_min: float,
        p_serv_max: float,
        n_requests: int,
    ) -> None:
        self.users = [
            User(
                seed=seed,
                ident=i,
                p_serv_min=p_serv_min,
                p_serv_max=p_serv_max,
                max_requests=n_requests,
            )
            for i in range(first, first + count)
        ]

    def handle(self, message: Down) -> Up | None:
        """DAY_START: the visits of the users that come today."""
        if not isinstance(message, DayStart):
            return None
        visits = []
        for user in self.users:
            visit = user.plan_day()
            if visit is not None:
                visits.append((user.ident, visit.arrival, visit.requests))
        return Visits(visits=tuple(visits))

    def __repr__(self) -> str:
        return f"<UsersRole {len(self.users)} users>"


# -- the process shell -----------------------------------------------------------------


@final
class _RoleLink:
    """A role process's two channels and its connection to the director."""

    def __init__(self, run_dir: Path, name: str, hello: Hello) -> None:
        self.name = name
        self.client = Client(run_dir / BUS_SOCKET, name=f"office {name}")
        down, up = channel_names(name)
        self.down: Subscriber = self.client.create_subscriber(
            down, reliable=True, slot_size=SLOT_BYTES, num_slots=CHANNEL_SLOTS
        )
        self.up: Publisher = self.client.create_publisher(
            up, reliable=True, slot_size=SLOT_BYTES, num_slots=CHANNEL_SLOTS
        )
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(run_dir / DIRECTOR_SOCKET))
        self.sock.sendall(encode_socket(hello))

    def serve(self, handle: Callable[[Down], Up | None]) -> None:
        """Answer the director's messages until STOP or until the director is gone."""
        poller = select.poll()
        poller.register(self.down.fileno(), select.POLLIN)
        poller.register(self.sock.fileno(), select.POLLIN)
        sock_fd = self.sock.fileno()
        while True:
            message = self.down.read()
            if message is None:
                for fd, _ in poller.poll():
                    if fd == sock_fd and not self.sock.recv(_READ_BYTES):
                        return  # the director closed its end: the run is over
                continue
            data = bytes(message.data)
            message.release()
            request = decode_down(data)
            if isinstance(request, Stop):
                return
            answer = handle(request)
            if answer is not None:
                self.send(answer)

    def send(self, message: Up) -> None:
        """Publish an answer, waiting for a free slot if the director is behind. Raises
        BrokenError when none frees up in PUBLISH_WAIT_S."""
        data = encode_up(message)
        while self.up.publish_bytes(data) is None:
            if not self.up.wait(PUBLISH_WAIT_S):
                raise BrokenError(f"{self.name}: the director read nothing for {PUBLISH_WAIT_S} s")

    def close(self) -> None:
        self.client.close()
        self.sock.close()


def _run_role(run_dir: Path, hello: Hello, handle: Callable[[Down], Up | None]) -> None:
    link = _RoleLink(run_dir, process_name(hello.role, hello.index), hello)
    try:
        link.serve(handle)
    finally:
        link.close()


def _quiet_signals() -> None:
    # A terminal's Ctrl-C is the director's to handle: it closes the day and stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# -- the users manager -----------------------------------------------------------------


@final
class _Manager:
    """Forks user processes on ADD_USERS and reports each that ends (LOST)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_dir = Path(args.run_dir)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(self.run_dir / DIRECTOR_SOCKET))
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.children: dict[int, tuple[int, int]] = {}  # pidfd -> (process index, pid)
        self.poller = select.poll()

    def run(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGTERM, lambda *_: None)  # woken through wake_r instead
        self.sock.sendall(
            encode_socket(
                Hello(role="manager", index=0, pid=os.getpid(), first=0, count=0, skills=())
            )
        )
        self.poller.register(self.sock.fileno(), select.POLLIN)
        self.poller.register(self.wake_r, select.POLLIN)
        stream = MessageStream(decode_socket, MAX_SOCKET_PAYLOAD_BYTES)
        try:
            while True:
                for fd, _ in self.poller.poll():
                    if fd == self.wake_r:
                        return  # SIGTERM: the director stops the run
                    if fd == self.sock.fileno():
                        data = self.sock.recv(_READ_BYTES)
                        if not data:
                            return  # the director is gone
                        stream.feed(data)
                        while (event := stream.next_event()) is not NEED_DATA:
                            _, message = event
                            if isinstance(message, AddUsers):
                                self._add(message)
                    elif fd in self.children:
                        self._reap(fd)
        finally:
            self._stop_children()
            if os.getppid() != self.args.parent:
                self._clean_up_after_director()

    def _clean_up_after_director(self) -> None:
        """The director died without stopping the run (kill -9): the children died with
        it, and the bus server removes its files as it stops; what is left is the run's
        two directories, which the director would have removed."""
        with contextlib.suppress(OSError):
            bus = os.pidfd_open(self.args.bus_pid)
            try:
                select.select([bus], [], [], ORPHAN_WAIT_S)  # the bus server's own cleanup
            finally:
                os.close(bus)
        for directory in (self.args.shm_dir, self.args.run_dir):
            if directory:
                shutil.rmtree(directory, ignore_errors=True)

    def _add(self, order: AddUsers) -> None:
        index = order.index
        for first in range(order.first, order.first + order.count, order.per_process):
            count = min(order.per_process, order.first + order.count - first)
            pid = os.fork()
            if pid == 0:
                self._in_child(index, first, count)
            pidfd = os.pidfd_open(pid)
            self.children[pidfd] = (index, pid)
            self.poller.register(pidfd, select.POLLIN)
            index += 1

    def _in_child(self, index: int, first: int, count: int) -> None:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            for fd in (self.wake_r, self.wake_w, *self.children, self.sock.detach()):
                os.close(fd)
            die_with_parent(self.args.manager_pid, signal.SIGKILL)
            args = self.args
            role = UsersRole(
                seed=args.seed,
                first=first,
                count=count,
                p_serv_min=args.p_serv_min,
                p_serv_max=args.p_serv_max,
                n_requests=args.n_requests,
            )
            hello = Hello(
                role="users", index=index, pid=os.getpid(), first=first, count=count, skills=()
            )
            _run_role(self.run_dir, hello, role.handle)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)

    def _reap(self, pidfd: int) -> None:
        index, pid = self.children.pop(pidfd)
        self.poller.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        detail = describe_exit(os.waitstatus_to_exitcode(status))
        with contextlib.suppress(OSError):
            self.sock.sendall(encode_socket(Lost(index=index, pid=pid, detail=detail)))

    def _stop_children(self) -> None:
        for pidfd, (_, pid) in self.children.items():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(pidfd)
        self.children.clear()


# -- the entry point -------------------------------------------------------------------


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m postoffice.office.roleprocs")
    parser.add_argument("role", choices=("issuer", "operators", "manager"))
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--pauses", type=int, default=0)
    parser.add_argument("--p-serv-min", type=float, default=0.0)
    parser.add_argument("--p-serv-max", type=float, default=0.0)
    parser.add_argument("--n-requests", type=int, default=1)
    parser.add_argument("--bus-pid", type=int, default=0)
    parser.add_argument("--shm-dir", default="")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    """Run one role process (started by the multi-process director, never by hand)."""
    args = _arguments(argv)
    # The manager hears of the director's death (SIGTERM) to clean up after it; the
    # other roles have nothing to clean up and just die.
    die_with_parent(args.parent, signal.SIGTERM if args.role == "manager" else signal.SIGKILL)
    _quiet_signals()
    run_dir = Path(args.run_dir)
    pid = os.getpid()
    if args.role == "issuer":
        issuer = IssuerRole()
        hello = Hello(role="issuer", index=0, pid=pid, first=0, count=0, skills=())
        _run_role(run_dir, hello, issuer.handle)
    elif args.role == "operators":
        ops = OperatorsRole(seed=args.seed, first=args.first, count=args.count, pauses=args.pauses)
        hello = Hello(
            role="operators",
            index=args.index,
            pid=pid,
            first=args.first,
            count=args.count,
            skills=ops.skills,
        )
        _run_role(run_dir, hello, ops.handle)
    else:
        args.manager_pid = pid
        _Manager(args).run()


if __name__ == "__main__":
    main(sys.argv[1:])
