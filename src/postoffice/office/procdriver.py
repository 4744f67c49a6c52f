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
# Starting, watching and stopping the processes is procs.py's.

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, final

from postoffice.core.errors import PostOfficeError
from postoffice.office.engine import Simulation
from postoffice.office.errors import ChildLostError
from postoffice.office.events import Cause, Event, RunEnded
from postoffice.office.inprocess import DaySink, Outcome, end_of_day
from postoffice.office.procs import Child, RunProcesses, check_processes
from postoffice.office.roles_wire import (
    Count,
    Counted,
    DayStart,
    Down,
    Draws,
    Hello,
    Issue,
    Issued,
    OperatorNews,
    Plans,
    Up,
    Visits,
)
from postoffice.office.rules import DAY_MINUTES, Visit
from postoffice.office.simconfig import OfficeConfig
from postoffice.office.tally import Tally

__all__ = ["ProcessDriver", "RemoteIssuer", "RemoteOperator", "RemoteUser"]


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

    def __init__(self, driver: ProcessDriver, child: Child, ident: int, skill: int) -> None:
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
class ProcessDriver:
    """Runs one simulation across processes; `run` returns once it has ended and every
    process and file of the run is gone. Also the running simulation's handle: add_users,
    pause, resume, apply_config, on_events, day, minute, to be used from the thread of
    the event loop that runs it (`on_ready` is told when the clock is about to start)."""

    def __init__(
        self,
        config: OfficeConfig,
        *,
        seed: int,
        on_day: DaySink,
        users_per_process: int = 1,
        operators_per_process: int = 1,
        on_events: Callable[[list[Event]], object] | None = None,
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
        self.procs = RunProcesses(
            config,
            seed=seed,
            users_per_process=users_per_process,
            operators_per_process=operators_per_process,
            on_answer=self._absorb,
            on_hello=self._hello,
        )
        self.simulation: Simulation | None = None
        self._users: list[RemoteUser] = []
        self._issuer = RemoteIssuer(self)
        self._operators: list[RemoteOperator] = []
        self._news: dict[Child, _News] = {}
        self._visits: dict[Child, collections.deque[Visits]] = {}  # answers not yet used
        self._asked: dict[Child, int] = {}  # the last day each user process was asked
        self._pending_users = 0
        self._minutes = 0
        self._day = -1
        self._minute = 0  # the minute simulated last, or the day's closing minute
        self._at = 0  # minutes of the run the clock has reached, for pacing
        self._paused = False
        self._resumed: asyncio.Event | None = None
        self._wakeup: asyncio.Event | None = None  # the pace or the pause changed
        self._last_minute_at = 0.0
        self.started_at = 0.0

    # -- the handle ------------------------------------------------------------------------

    @property
    def day(self) -> int:
        """The current day, counted from 1 (0 before the first day starts)."""
        return self._day + 1

    @property
    def minute(self) -> int:
        """The minute of the day simulated last (0 to 479), or the closing minute (480,
        or earlier after a signal) once the day has closed."""
        return self._minute

    @property
    def paused(self) -> bool:
        """True while the clock is held."""
        return self._paused

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
            self.started_at = time.monotonic() - self._at * config.n_nano_secs / 1e9
        self.config = dataclasses.replace(
            self.config,
            n_nano_secs=config.n_nano_secs,
            explode_threshold=config.explode_threshold,
            n_new_users=config.n_new_users,
        )
        if self._wakeup is not None:
            self._wakeup.set()

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
            self.procs.close()
        if self.on_events is not None:
            self.on_events([ended])
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
                self._minute = DAY_MINUTES if cut is None else cut
                events.extend(self._emit(sim.close_day(at=self._minute)))
                ended = end_of_day(
                    self.tally, day, events, cut=cut, config=self.config, on_day=self._on_day
                )
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
                    watcher = self._watch()
                    try:
                        await asyncio.wait(
                            (stopper, waker, watcher),
                            timeout=delay,
                            return_when=asyncio.FIRST_COMPLETED,
                        )
                    finally:
                        waker.cancel()
                        watcher.cancel()
                    if watcher.done() and not watcher.cancelled():
                        self.procs.check()  # a child's end raises here, while we sleep
                    if not stop.is_set() and time.monotonic() < (
                        self.started_at + (base + target) * self.config.n_nano_secs / 1e9
                    ):
                        continue  # paused or paced anew: look again
                if stop.is_set():
                    now = int((time.monotonic() - self.started_at) / step_s) - base
                    return self._cut(base, min(max(now, sim.clock), target))
                self._last_minute_at = time.monotonic()
                self._at = base + target
            elif stop.is_set():
                return self._cut(base, sim.clock)
            else:
                # Let the loop run its other work (a signal's handler, a control socket)
                # between minutes: unpaced, nothing else would yield.
                await asyncio.sleep(0)
            if upcoming is None:
                self._minutes = self._at = base + DAY_MINUTES
                return None
            found = sim.step(upcoming)
            self._minute = upcoming
            self._flush_news()
            if found:
                events.extend(self._emit(found))

    def _cut(self, base: int, minute: int) -> int:
        self._minutes = self._at = base + minute
        return minute

    async def _hold(self, stopper: asyncio.Future[Literal[True]]) -> None:
        """Wait while paused; the pause does not count against the pacing."""
        assert self._resumed is not None
        held_at = time.monotonic()
        while self._paused and not stopper.done():
            self._resumed.clear()
            waiter = asyncio.ensure_future(self._resumed.wait())
            watcher = self._watch()
            try:
                await asyncio.wait((waiter, stopper, watcher), return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                watcher.cancel()
            if watcher.done() and not watcher.cancelled():
                self.procs.check()
        self.started_at += time.monotonic() - held_at

    def _watch(self) -> asyncio.Future[None]:
        """A future done when anything happens among the processes (see procs.check)."""
        loop = asyncio.get_running_loop()
        seen: asyncio.Future[None] = loop.create_future()
        fd = self.procs.fileno()

        def readable() -> None:
            if not seen.done():
                seen.set_result(None)

        loop.add_reader(fd, readable)
        seen.add_done_callback(lambda _: loop.remove_reader(fd))
        return seen

    def _emit(self, events: list[Event]) -> list[Event]:
        if events and self.on_events is not None:
            self.on_events(events)
        return events

    # -- talking to the role processes ---------------------------------------------------

    def note(self, child: Child) -> _News:
        """What to tell operator process `child` after the minute."""
        return self._news[child]

    def _flush_news(self) -> None:
        for op_child, news in self._news.items():
            if news.served or news.breaks:
                self.procs.send(
                    op_child, OperatorNews(served=tuple(news.served), breaks=tuple(news.breaks))
                )
                news.served.clear()
                news.breaks.clear()

    def _ask_morning(self, day: int) -> None:
        """Every user and operator process plans the day; wait for all answers."""
        self._flush_news()
        users, ops = self.procs.user_children(), self.procs.operator_children()
        message = DayStart(day=day)
        for child in users:
            if self._asked.get(child, -1) < day:
                self.procs.send(child, message)
                self._asked[child] = day
        for child in ops:
            child.answered = False
            self.procs.send(child, message)
        visits = self._visits
        self.procs.wait(
            [*users, *ops],
            lambda: all(visits.get(c) for c in users) and all(c.answered for c in ops),
            "its plans for the day",
        )
        for user in self._users:
            user.visit = None
        for child in users:
            for ident, arrival, requests in visits[child].popleft().visits:
                self._own(child, ident).visit = Visit(arrival=arrival, requests=requests)
        # A user's morning depends on nothing that happens during a day: ask for the next
        # one now, so the user processes plan it while this day runs, not while the
        # director waits for them.
        if day + 1 < self.config.sim_duration:
            ahead = DayStart(day=day + 1)
            for child in users:
                self.procs.send(child, ahead)
                self._asked[child] = day + 1

    def ask_issuer(self, message: Down) -> Up:
        """Ask the ticket issuer and wait for its answer. Raises ChildLostError."""
        issuer = self.procs.issuer()
        issuer.answered = False
        issuer.answer = None
        self.procs.send(issuer, message)
        self.procs.wait([issuer], lambda: issuer.answered, "its tickets")
        assert issuer.answer is not None
        return issuer.answer

    def wait_for_draw(self, op: RemoteOperator) -> None:
        """Wait until operator `op`'s process sent its next draw. Raises ChildLostError."""
        self.procs.wait(
            [op.child], lambda: op.ahead is not None, f"operator {op.ident}'s next draw"
        )

    def _absorb(self, child: Child, message: Up) -> None:
        match message:
            case Visits():
                self._visits.setdefault(child, collections.deque()).append(message)
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

    def _own(self, child: Child, user: int) -> RemoteUser:
        if not child.first <= user < child.first + child.count:
            raise ValueError(f"user {user} is not run there")
        return self._users[user]

    def _operator_of(self, child: Child, ident: int) -> RemoteOperator:
        if not child.first <= ident < child.first + child.count:
            raise ValueError(f"operator {ident} is not run there")
        return self._operators[ident]

    # -- starting and stopping -------------------------------------------------------------

    def _start(self) -> None:
        """Start every process, then build the engine with their stand-ins. Raises
        ChildLostError, BusError or OSError."""
        procs, config = self.procs, self.config
        procs.start()
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
        first = len(self._users)
        self._users.extend(RemoteUser(i) for i in range(first, first + count))
        self.procs.add_users(count)

    def _hello(self, child: Child, hello: Hello) -> None:
        if hello.role != "operators":
            return
        if len(hello.skills) != hello.count:
            raise ChildLostError(f"{child.label()} named {len(hello.skills)} skills")
        self._news[child] = _News()
        for ident, skill in zip(
            range(hello.first, hello.first + hello.count), hello.skills, strict=True
        ):
            self._operators.append(RemoteOperator(self, child, ident, skill))

    def __repr__(self) -> str:
        return (
            f"<ProcessDriver seed={self.seed} day={self._day} minute={self._minute} {self.procs!r}>"
        )
