"""The multi-process driver: this process is the director; the ticket issuer, the
operators and the users (forked by the users manager) are processes of their own, talking
to it over a private bus server and a Unix socket. Office layer."""

# Design
# ------
# The director runs the engine (engine.Simulation) with stand-ins for the roles that live
# elsewhere: a RemoteUser's plan, a RemoteOperator's plan and service times, the
# RemoteIssuer's tickets all come from the role processes, which draw them from their own
# streams (rules.py). The engine's phases and arbitration are the same code as in one
# process, so the events are the same for the same seed.
#
# What it costs: one round of messages each morning (every user and operator process
# says what its roles do today: arrivals, requests, break minutes), then only minutes at
# which something happens are stepped (Simulation.next_minute: arrivals, service ends,
# breaks falling due, returns), and such a minute asks the ticket issuer once for all of
# its tickets (one block). An operator draws its next customer's service time ahead, in
# its answer to the morning and to each customer started, so starting a customer waits
# for nothing: the director tells each operator process what happened (customers
# started, breaks) in one message per process after the minute, and reads the new draws
# whenever they come. Every wait is a poll on eventfds, sockets and pidfds.
#
# Supervision: every child keeps a connection to the director's socket, and the direct
# children have a pidfd each; a connection closing or a pidfd becoming readable mid-run
# ends the run with cause error, naming the child (the users manager reports how a user
# process ended). On every ending the director stops the children (SIGTERM, then SIGKILL),
# then the bus server (which removes its shared-memory files), then removes the run
# directory and the shared-memory directory. Children die with the director
# (PR_SET_PDEATHSIG) if it is killed.

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
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
from typing import Final, Literal, final

from postoffice.bus import BusError, Client, Publisher, Subscriber
from postoffice.core.errors import PostOfficeError
from postoffice.core.framing import NEED_DATA, MessageStream
from postoffice.office.engine import Simulation
from postoffice.office.errors import ChildLostError, InvariantError, OfficeConfigError
from postoffice.office.events import Cause, Event, RunEnded
from postoffice.office.inprocess import DaySink, Outcome
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
    SocketMessage,
    Up,
    Visits,
    decode_socket,
    decode_up,
    encode_down,
    encode_socket,
)
from postoffice.office.rules import DAY_MINUTES, Visit
from postoffice.office.services import describe_exit
from postoffice.office.simconfig import OfficeConfig
from postoffice.office.tally import Tally

__all__ = [
    "MAX_ROLE_PROCESSES",
    "ProcessDriver",
    "RemoteIssuer",
    "RemoteOperator",
    "RemoteUser",
    "check_processes",
]

log = logging.getLogger(__name__)

MAX_ROLE_PROCESSES: Final = 500  # two bus channels each, of the bus server's 1022
READY_TIMEOUT_S: Final = 60.0  # every child started and connected (cold starts, 2 cores)
REPLY_TIMEOUT_S: Final = 30.0  # a role process that answers nothing this long is stuck
STOP_TIMEOUT_S: Final = 5.0  # after SIGTERM, before SIGKILL
_READY_POLL_S: Final = 0.01  # the bus server's ready file, polled while it starts
_READ_BYTES: Final = 65536
_SHM: Final = Path("/dev/shm")


@final
class RemoteUser:
    """A user whose role runs in a user process: its plan is what that process said."""

    __slots__ = ("ident", "visit")

    def __init__(self, ident: int) -> None:
        self.ident = ident
        self.visit: Visit | None = None

    def plan_day(self) -> Visit | None:
        """Today's visit, as the user process answered the morning."""
        visit, self.visit = self.visit, None
        return visit

    def __repr__(self) -> str:
        return f"<RemoteUser {self.ident}>"


@final
class RemoteOperator:
    """An operator whose role runs in an operator process."""

    __slots__ = ("_driver", "ahead", "child", "due", "ident", "skill")

    def __init__(self, driver: ProcessDriver, child: _Child, ident: int, skill: int) -> None:
        self._driver = driver
        self.child = child
        self.ident = ident
        self.skill = skill
        self.due: int | None = None
        self.ahead: int | None = None  # the next customer's service time, drawn there

    def plan_day(self) -> int | None:
        """The minute today's break falls due (None: none), as the process said."""
        return self.due

    def take_break(self) -> None:
        """Tell the process (after the minute) that the operator went on a break."""
        self._driver.note(self.child).breaks.append(self.ident)

    def service_time(self, service: int) -> int:
        """The service time the process drew ahead (waiting for it if it has not come
        yet); the process is told after the minute, and draws the next one. Raises
        ChildLostError if it does not come."""
        if service != self.skill:
            raise ValueError(f"operator {self.ident} serves {self.skill}, not {service}")
        if self.ahead is None:
            self._driver.wait_for_draw(self)
        took = self.ahead
        assert took is not None
        self.ahead = None
        self._driver.note(self.child).served.append(self.ident)
        return took

    def __repr__(self) -> str:
        return f"<RemoteOperator {self.ident} skill={self.skill} in {self.child.name}>"


@final
class RemoteIssuer:
    """The ticket issuer process, asked for each minute's block of tickets."""

    __slots__ = ("_driver", "issued")

    def __init__(self, driver: ProcessDriver) -> None:
        self._driver = driver
        #: The issuer's own count, as of its last answer (`refresh` asks for it).
        self.issued = 0

    def refresh(self) -> None:
        """Ask the issuer how many tickets it has issued. Raises ChildLostError."""
        answer = self._driver.ask_issuer(Count())
        assert isinstance(answer, Counted)
        self.issued = answer.issued

    def issue_block(self, count: int) -> int:
        """The first of `count` new tickets. Raises ChildLostError."""
        answer = self._driver.ask_issuer(Issue(count=count))
        assert isinstance(answer, Issued)
        self.issued = answer.first + count - 1
        return answer.first

    def __repr__(self) -> str:
        return "<RemoteIssuer>"


@dataclass(eq=False)
class _News:
    served: list[int] = field(default_factory=list)
    breaks: list[int] = field(default_factory=list)


@final
@dataclass(eq=False)
class _Child:
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
    news: _News = field(default_factory=_News)

    def label(self) -> str:
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


@final
class ProcessDriver:
    """Runs one simulation across processes; `run` returns once it has ended and every
    process and file of the run is gone. Also the running simulation's handle: add_users,
    pause, resume, apply_config, on_events, day, minute."""

    def __init__(
        self,
        config: OfficeConfig,
        *,
        seed: int,
        on_day: DaySink,
        users_per_process: int = 1,
        operators_per_process: int = 1,
        on_events: Callable[[list[Event]], None] | None = None,
        on_ready: Callable[[ProcessDriver], None] | None = None,
    ) -> None:
        """Raises ValueError for a per-process count under 1, or OfficeConfigError when
        the run would need more than MAX_ROLE_PROCESSES role processes."""
        if users_per_process < 1 or operators_per_process < 1:
            raise ValueError("users and operators per process must be at least 1")
        self.config = config
        self.seed = seed
        self.tally = Tally()
        self.users_per_process = users_per_process
        self.operators_per_process = operators_per_process
        self.on_events = on_events
        self._on_day = on_day
        self._on_ready = on_ready
        check_processes(config, config.nof_users, users_per_process, operators_per_process)
        self.simulation: Simulation | None = None
        self.children: dict[str, _Child] = {}
        self.run_dir: Path | None = None
        self.shm_dir: Path | None = None
        self._bus: Client | None = None
        self._bus_server: _Child | None = None
        self._listener: socket.socket | None = None
        self._poller = select.poll()
        self._by_fd: dict[int, tuple[str, _Child | None]] = {}
        self._readable: set[_Child] = set()
        self._users: list[RemoteUser] = []
        self._issuer = RemoteIssuer(self)
        self._operators: list[RemoteOperator] = []
        self._user_processes = 0
        self._pending_users = 0
        self._minutes = 0
        self._day = -1
        self._minute = 0
        self._paused = False
        self._resumed: asyncio.Event | None = None
        self._wakeup: asyncio.Event | None = None  # the pace or the pause changed
        self._last_minute_at = 0.0
        self.started_at = 0.0

    # -- the handle ------------------------------------------------------------------------

    @property
    def day(self) -> int:
        """The current day (0-based; -1 before the first)."""
        return self._day

    @property
    def minute(self) -> int:
        """The minute of the current day the clock is at."""
        return self._minute

    def add_users(self, count: int | None = None) -> None:
        """The users manager's request: `count` (default N_NEW_USERS) users more from the
        next day on. Raises ValueError for a negative count or OfficeConfigError when
        their processes would pass MAX_ROLE_PROCESSES."""
        count = self.config.n_new_users if count is None else count
        if count < 0:
            raise ValueError(f"cannot add {count} users")
        check_processes(
            self.config,
            len(self._users) + self._pending_users + count,
            self.users_per_process,
            self.operators_per_process,
        )
        self._pending_users += count

    def pause(self) -> None:
        """Hold the simulated clock before its next minute (no effect if held)."""
        self._paused = True
        if self._wakeup is not None:
            self._wakeup.set()

    def resume(self) -> None:
        """Let the clock go on."""
        self._paused = False
        if self._resumed is not None:
            self._resumed.set()

    def apply_config(self, config: OfficeConfig) -> None:
        """Take N_NANO_SECS, EXPLODE_THRESHOLD and N_NEW_USERS from `config` at the next
        minute; its other keys need a new run and are not used."""
        if self.started_at and config.n_nano_secs != self.config.n_nano_secs:
            # The clock goes on from where it is, at the new pace.
            self.started_at = time.monotonic() - self._clock_minutes() * config.n_nano_secs / 1e9
        self.config = dataclasses.replace(
            self.config,
            n_nano_secs=config.n_nano_secs,
            explode_threshold=config.explode_threshold,
            n_new_users=config.n_new_users,
        )
        if self._wakeup is not None:
            self._wakeup.set()

    def _clock_minutes(self) -> int:
        return self._minutes + self._minute

    # -- the run ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> Outcome:
        """Start the processes, simulate until timeout, explode, `stop` (signal: the day
        closes at once) or error (an invariant broken, a child lost), then stop and
        remove everything."""
        self._resumed = asyncio.Event()
        self._wakeup = asyncio.Event()
        stopper = asyncio.ensure_future(stop.wait())
        started = time.monotonic()
        try:
            try:
                self._start()
            except (PostOfficeError, OSError) as exc:
                ended = RunEnded(days=0, cause=Cause.ERROR, detail=f"cannot start: {exc}")
            else:
                if self._on_ready is not None:
                    self._on_ready(self)
                started = self.started_at = time.monotonic()
                ended = await self._days(stop, stopper)
            # The run's time ends with its last day, not with the stopping of processes.
            elapsed = time.monotonic() - started
        finally:
            stopper.cancel()
            self.close()
        step_s = self.config.n_nano_secs / 1e9
        late = self._last_minute_at - (self.started_at + self._minutes * step_s)
        return Outcome(
            ended=ended,
            last=self.tally.last,
            minutes=self._minutes,
            elapsed_s=elapsed,
            drift_s=late if step_s and self._last_minute_at else 0.0,
        )

    async def _days(self, stop: asyncio.Event, stopper: asyncio.Future[Literal[True]]) -> RunEnded:
        sim = self.simulation
        assert sim is not None
        day = 0
        events: list[Event] = []
        try:
            for day in range(self.config.sim_duration):
                self._day, self._minute = day, 0
                events = []
                if self._pending_users:
                    count, self._pending_users = self._pending_users, 0
                    self._grow_users(count)
                    sim.add_users(count)
                self._ask_morning(day)
                events.extend(self._emit(sim.start_day()))
                cut = await self._run_minutes(sim, events, stop, stopper)
                self._issuer.refresh()  # the day ends with the issuer's own count
                events.extend(self._emit(sim.close_day(at=DAY_MINUTES if cut is None else cut)))
                ended = self._close(day, events, cut)
                if ended is not None:
                    return ended
                if stop.is_set() and day + 1 < self.config.sim_duration:
                    return RunEnded(
                        days=day + 1,
                        cause=Cause.SIGNAL,
                        detail=f"stopped by a signal after day {day + 1}",
                    )
        except ChildLostError as exc:
            self._on_day(events, None)
            return RunEnded(days=day + 1, cause=Cause.ERROR, detail=str(exc))
        return RunEnded(
            days=self.config.sim_duration,
            cause=Cause.TIMEOUT,
            detail=f"{self.config.sim_duration} days simulated",
        )

    async def _run_minutes(
        self,
        sim: Simulation,
        events: list[Event],
        stop: asyncio.Event,
        stopper: asyncio.Future[Literal[True]],
    ) -> int | None:
        """Step the day's minutes at which anything happens, each at its time when the
        minutes are paced; the minute at which `stop` cut the day, or None when it ran to
        its end."""
        assert self._wakeup is not None
        base = self._minutes
        while True:
            if self._paused and not stop.is_set():
                await self._hold(stopper)
            upcoming = sim.next_minute()
            target = DAY_MINUTES if upcoming is None else upcoming
            step_s = self.config.n_nano_secs / 1e9
            if step_s:
                delay = self.started_at + (base + target) * step_s - time.monotonic()
                if delay > 0 and not stop.is_set():
                    self._wakeup.clear()
                    waker = asyncio.ensure_future(self._wakeup.wait())
                    try:
                        await asyncio.wait((stopper, waker), timeout=delay)
                    finally:
                        waker.cancel()
                    if not stop.is_set() and time.monotonic() < (
                        self.started_at + (base + target) * self.config.n_nano_secs / 1e9
                    ):
                        continue  # paused or paced anew: look again
                if stop.is_set():
                    now = int((time.monotonic() - self.started_at) / step_s) - base
                    return self._cut(base, min(max(now, sim.clock), target))
                self._last_minute_at = time.monotonic()
            elif stop.is_set():
                return self._cut(base, sim.clock)
            else:
                # Let the loop run its other work (a signal's handler, a control socket)
                # between minutes: unpaced, nothing else would yield.
                await asyncio.sleep(0)
            self._minute = target
            if upcoming is None:
                self._minutes = base + DAY_MINUTES
                self._minute = 0
                return None
            found = sim.step(upcoming)
            self._flush_news()
            if found:
                events.extend(self._emit(found))

    def _cut(self, base: int, minute: int) -> int:
        self._minutes = base + minute
        self._minute = 0
        return minute

    async def _hold(self, stopper: asyncio.Future[Literal[True]]) -> None:
        """Wait while paused; the pause does not count against the pacing."""
        assert self._resumed is not None
        held_at = time.monotonic()
        while self._paused and not stopper.done():
            self._resumed.clear()
            waiter = asyncio.ensure_future(self._resumed.wait())
            try:
                await asyncio.wait((waiter, stopper), return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
        self.started_at += time.monotonic() - held_at

    def _emit(self, events: list[Event]) -> list[Event]:
        if events and self.on_events is not None:
            self.on_events(events)
        return events

    def _close(self, day: int, events: list[Event], cut: int | None) -> RunEnded | None:
        """Fold the day, hand it on; the ending it makes, if any."""
        try:
            report = None
            for event in events:
                report = self.tally.apply(event) or report
        except InvariantError as exc:
            self._on_day(events, None)
            return RunEnded(days=day + 1, cause=Cause.ERROR, detail=str(exc))
        self._on_day(events, report)
        assert report is not None  # close_day always ends with a DayEnded
        if cut is not None:
            return RunEnded(
                days=day + 1,
                cause=Cause.SIGNAL,
                detail=f"stopped by a signal during day {day + 1} at minute {cut}",
            )
        if report.waiting_users > self.config.explode_threshold:
            return RunEnded(
                days=day + 1,
                cause=Cause.EXPLODE,
                detail=f"{report.waiting_users} users still waiting at the end of day"
                f" {day + 1}, more than EXPLODE_THRESHOLD {self.config.explode_threshold}",
            )
        return None

    # -- talking to the role processes ---------------------------------------------------

    def note(self, child: _Child) -> _News:
        """What to tell operator process `child` after the minute."""
        return child.news

    def _flush_news(self) -> None:
        for op_child in self._operator_children():
            news = op_child.news
            if news.served or news.breaks:
                self._send(
                    op_child, OperatorNews(served=tuple(news.served), breaks=tuple(news.breaks))
                )
                news.served.clear()
                news.breaks.clear()

    def _operator_children(self) -> list[_Child]:
        return [c for name, c in self.children.items() if name.startswith("operators")]

    def _user_children(self) -> list[_Child]:
        return [c for name, c in self.children.items() if name.startswith("users")]

    def _ask_morning(self, day: int) -> None:
        """Every user and operator process plans the day; wait for all answers."""
        self._flush_news()
        asked = [*self._user_children(), *self._operator_children()]
        for user in self._users:
            user.visit = None
        message = DayStart(day=day)
        for child in asked:
            child.answered = False
            self._send(child, message)
        self._wait(asked, lambda: all(c.answered for c in asked), "its plans for the day")

    def ask_issuer(self, message: Down) -> Up:
        """Ask the ticket issuer and wait for its answer. Raises ChildLostError."""
        issuer = self.children["issuer"]
        issuer.answered = False
        issuer.answer = None
        self._send(issuer, message)
        self._wait([issuer], lambda: issuer.answered, "its tickets")
        assert issuer.answer is not None
        return issuer.answer

    def wait_for_draw(self, op: RemoteOperator) -> None:
        """Wait until operator `op`'s process sent its next draw. Raises ChildLostError."""
        self._wait([op.child], lambda: op.ahead is not None, f"operator {op.ident}'s next draw")

    def _send(self, child: _Child, message: Down) -> None:
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

    def _wait(self, children: list[_Child], done: Callable[[], bool], what: str) -> None:
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
                silent = ", ".join(c.label() for c in children)
                raise ChildLostError(f"no answer from {silent} in {REPLY_TIMEOUT_S:.0f} s ({what})")
            self._poll(left)
            todo = self._readable
            self._readable = set()

    def _drain(self, child: _Child) -> None:
        up = child.up
        if up is None:
            return
        while (message := up.read()) is not None:
            data = bytes(message.data)
            message.release()
            try:
                self._absorb(child, decode_up(data))
            except (PostOfficeError, IndexError, ValueError) as exc:
                raise ChildLostError(f"{child.label()} sent a bad answer: {exc}") from exc

    def _absorb(self, child: _Child, message: Up) -> None:
        match message:
            case Visits(visits=visits):
                for user, arrival, requests in visits:
                    self._own(child, user).visit = Visit(arrival=arrival, requests=requests)
                child.answered = True
            case Plans(plans=plans):
                for ident, due, took in plans:
                    op = self._operator_of(child, ident)
                    op.due, op.ahead = due, took
                child.answered = True
            case Draws(draws=draws):
                for ident, took in draws:
                    self._operator_of(child, ident).ahead = took
            case Issued() | Counted():
                child.answer = message
                child.answered = True

    def _own(self, child: _Child, user: int) -> RemoteUser:
        if not child.first <= user < child.first + child.count:
            raise ValueError(f"user {user} is not run there")
        return self._users[user]

    def _operator_of(self, child: _Child, ident: int) -> RemoteOperator:
        if not child.first <= ident < child.first + child.count:
            raise ValueError(f"operator {ident} is not run there")
        return self._operators[ident]

    def _poll(self, timeout_s: float | None) -> None:
        """Wait once for anything: an answer, a connection, a HELLO, a child's end.
        Raises ChildLostError for a child that died."""
        timeout_ms = None if timeout_s is None else max(1, math.ceil(timeout_s * 1000))
        for fd, _ in self._poller.poll(timeout_ms):
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

    def _ended(self, child: _Child) -> str:
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
        child = _Child(name="(connecting)", conn=conn)
        self._by_fd[conn.fileno()] = ("conn", child)
        self._poller.register(conn.fileno(), select.POLLIN)

    def _receive(self, child: _Child) -> None:
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

    def _user_lost(self, child: _Child) -> None:
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

    def _forget_conn(self, child: _Child) -> None:
        if child.conn is None:
            return
        fd = child.conn.fileno()
        self._by_fd.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError):
            self._poller.unregister(fd)
        child.conn.close()
        child.conn = None

    def _on_socket(self, conn_child: _Child, message: SocketMessage) -> None:
        match message:
            case Hello():
                self._hello(conn_child, message)
            case Lost(index=index, pid=pid, detail=detail):
                lost = self.children.get(f"users{index}")
                label = lost.label() if lost is not None else f"user process {index} (pid {pid})"
                raise ChildLostError(f"{label} {detail}")
            case AddUsers():
                raise ChildLostError(f"{conn_child.label()} sent ADD_USERS to the director")

    def _hello(self, conn_child: _Child, hello: Hello) -> None:
        name = process_name(hello.role, hello.index)
        child = self.children.get(name)
        if child is None:
            if hello.role != "users" or not self._users:
                raise ChildLostError(f"an unexpected {name} (pid {hello.pid}) said hello")
            child = self.children[name] = _Child(name=name)
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
        self._poller.register(fd, select.POLLIN)
        if hello.role == "operators":
            if len(hello.skills) != hello.count:
                raise ChildLostError(f"{child.label()} named {len(hello.skills)} skills")
            for ident, skill in zip(
                range(hello.first, hello.first + hello.count), hello.skills, strict=True
            ):
                self._operators.append(RemoteOperator(self, child, ident, skill))

    # -- starting and stopping -------------------------------------------------------------

    def _start(self) -> None:
        """Start the bus server and every role process, and wait until all said hello.
        Raises ChildLostError, BusError or OSError."""
        self.run_dir = Path(tempfile.mkdtemp(prefix="po-office-"))
        shm_base = _SHM if _SHM.is_dir() and os.access(_SHM, os.W_OK) else None
        self.shm_dir = Path(tempfile.mkdtemp(prefix="po-office-", dir=shm_base))
        self._start_bus()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.run_dir / DIRECTOR_SOCKET))
        self._listener.listen(1024)
        self._listener.setblocking(False)
        self._by_fd[self._listener.fileno()] = ("listener", None)
        self._poller.register(self._listener.fileno(), select.POLLIN)
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
        # Operator processes said hello in any order: the engine wants operators by id.
        self._operators.sort(key=lambda op: op.ident)
        if [op.ident for op in self._operators] != list(range(config.nof_workers)):
            raise ChildLostError("the operator processes do not run operators 0 .. NOF_WORKERS - 1")
        self._grow_users(config.nof_users)
        self.simulation = Simulation(
            config.roster,
            seed=self.seed,
            users=self._users,
            operators=self._operators,
            issuer=self._issuer,
            make_user=self._users.__getitem__,
        )

    def _grow_users(self, count: int) -> None:
        """Ask the users manager for processes for `count` more users; wait for them."""
        if count <= 0:
            return
        first = len(self._users)
        self._users.extend(RemoteUser(i) for i in range(first, first + count))
        per = self.users_per_process
        start = self._user_processes
        names = [f"users{i}" for i in range(start, start + math.ceil(count / per))]
        order = AddUsers(first=first, count=count, per_process=per, index=self._user_processes)
        self._user_processes += len(names)
        manager = self.children["manager"]
        assert manager.conn is not None
        manager.conn.sendall(encode_socket(order))
        self._await_hellos(names)

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

    def _launch(self, name: str, argv: list[str]) -> _Child:
        # A session of its own: a terminal's Ctrl-C reaches the director alone, which
        # then closes the day and stops the children itself.
        popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
        )
        child = _Child(name=name, popen=popen, pid=popen.pid)
        try:
            child.pidfd = os.pidfd_open(popen.pid)
        except OSError:
            popen.kill()
            popen.wait()
            raise
        self._by_fd[child.pidfd] = ("pidfd", child)
        self._poller.register(child.pidfd, select.POLLIN)
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
        server = self._bus_server = _Child(name="bus server")
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
        self._poller.register(server.pidfd, select.POLLIN)

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
        self._poller = select.poll()
        for directory in (self.run_dir, self.shm_dir):
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
        self.run_dir = self.shm_dir = None

    def __repr__(self) -> str:
        return (
            f"<ProcessDriver seed={self.seed} day={self._day} minute={self._minute}"
            f" processes={len(self.children)} run_dir={self.run_dir}>"
        )


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
