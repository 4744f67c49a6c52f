"""The director behind `postoffice up`: starts every service as a supervised child process.

Office layer. It knows the services only as command lines (`postoffice <svc> serve`) and
the ready files they announce their listeners in; it imports none of them.

Design
------
Each service is one entry in `SERVICES`: a name and an argv builder. For each one the
director deletes a stale `<data-dir>/run/<name>.ready.json`, spawns the child with
`asyncio.create_subprocess_exec` and polls (bounded by `ready_timeout_s`) until the child
has written that file with its own pid. Services start one after another in table order,
so a later service can rely on an earlier one; a child that dies or stays silent before
it is ready fails the whole start, because a service that cannot start at all (a port in
use, a bad setting) is better reported at once than retried forever. So children get
POSTOFFICE_BIND_RETRY=0 (a busy port fails their start instead of being retried), and a
child that cannot start writes why into its ready file (`{"pid", "error"}`), which the
director repeats: `service 'store' could not start: cannot listen for store on ...`.

Once all are ready, one task per child waits for it to exit. Any exit the director did
not ask for is logged with its reason and followed by a restart after a `Backoff` delay;
the backoff starts over once a child has stayed up `healthy_after_s`. A relaunch that
fails is treated like another crash. Every change of state rewrites
`<data-dir>/run/director.json` atomically, for tests and the dashboard.

SIGHUP to the director is passed on to every ready child, which reads its settings
again; the director itself has none to reload.

On stop, the live children are stopped in reverse start order, so a service is still
there while those that rely on it drain (the command server's keys live in the store):
each gets SIGTERM, then SIGKILL if it is still running after `stop_timeout_s`. Children
run in their own session, so a Ctrl-C in the terminal reaches only the director, which
then stops them in that order; and on Linux each child asks the
kernel for SIGTERM when the director dies (PR_SET_PDEATHSIG), so a director killed with
SIGKILL leaves no orphan holding a port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Final, final

from postoffice.core.config import BIND_RETRY_ENV
from postoffice.core.logs import kv
from postoffice.core.runtime import Backoff
from postoffice.office.services import (
    ChildState,
    ChildStatus,
    DirectorError,
    Launch,
    ServiceFailedError,
    ServiceSpec,
    ServiceStartError,
    describe_address,
    describe_exit,
    next_restart_delay,
    parse_ready,
    ready_path,
    run_dir,
    status_document,
)

__all__ = [
    "DEFAULT_HEALTHY_AFTER_S",
    "DEFAULT_READY_TIMEOUT_S",
    "DEFAULT_STOP_TIMEOUT_S",
    "STATUS_FILE",
    "Director",
    "death_signal_hook",
]

log = logging.getLogger(__name__)

DEFAULT_READY_TIMEOUT_S: Final = 15.0  # a cold Python start plus listener setup, with margin
DEFAULT_STOP_TIMEOUT_S: Final = 10.0  # matches the services' own drain deadline
DEFAULT_HEALTHY_AFTER_S: Final = 10.0  # up this long, a crash is news, not a crash loop
STATUS_FILE: Final = "director.json"
_LOCK_FILE: Final = "director.lock"
_READY_POLL_S: Final = 0.05  # ready files are polled; 50 ms is invisible next to a start-up
_STDERR_FD: Final = 2

# prctl(2) option number from <linux/prctl.h>.
_PR_SET_PDEATHSIG: Final = 1


# -- the process side -------------------------------------------------------------------


def death_signal_hook() -> Callable[[], None] | None:
    """A preexec_fn that makes the kernel SIGTERM the child when its parent dies (the
    director, or the runner of a foreign server under it, office/natscluster.py).

    Without it a director killed by SIGKILL (or the OOM killer) would leave its children
    running, holding their ports, so the next `postoffice up` could not bind. The signal
    is SIGTERM rather than SIGKILL so the child still drains and removes what it owns.
    libc is loaded here, in the parent, because the child of a fork may only do
    async-signal-safe work before exec: one prctl syscall, one getppid, maybe one kill.
    (preexec_fn is unsafe in a parent with threads; the director runs none.) The kernel
    ties the signal to the parent *thread*, which is fine as the loop's thread is the
    process's main thread. Returns None off Linux, where no such call exists.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()

    def in_child() -> None:
        if prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        # The director may have died between fork and prctl; the kernel would not tell us.
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return in_child


@final
class _Child:
    """The director's record of one service and its current process."""

    def __init__(self, spec: ServiceSpec) -> None:
        self.spec = spec
        self.process: asyncio.subprocess.Process | None = None
        self.state = ChildState.STARTING
        self.restarts = 0
        self.listeners: dict[str, tuple[str, int]] = {}
        self.last_exit: str | None = None
        self.ready_at: float | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def status(self) -> ChildStatus:
        return ChildStatus(
            name=self.spec.name,
            pid=None if self.process is None else self.process.pid,
            state=self.state,
            restarts=self.restarts,
            listeners=dict(self.listeners),
            last_exit=self.last_exit,
        )

    def __repr__(self) -> str:
        pid = None if self.process is None else self.process.pid
        return f"<_Child {self.spec.name} pid={pid} {self.state.name} restarts={self.restarts}>"


@final
class Director:
    """Starts `services` as child processes, restarts any that exit, stops them all.

    `run(stop)` is the whole life: start (raising ServiceStartError, after stopping the
    others, if a child fails to get ready), call `on_started`, supervise until `stop` is
    set, then stop every child. `on_restarted` is called each time a restarted child is
    ready again. Raises DirectorError if another director holds the data dir.
    """

    def __init__(
        self,
        services: Sequence[ServiceSpec],
        *,
        data_dir: Path,
        log_level: str = "INFO",
        log_json: bool = False,
        trace: str | None = None,
        ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
        stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
        healthy_after_s: float = DEFAULT_HEALTHY_AFTER_S,
        on_started: Callable[[Sequence[ChildStatus]], None] | None = None,
        on_restarted: Callable[[ChildStatus], None] | None = None,
    ) -> None:
        self.data_dir = data_dir.absolute()
        self._children = [_Child(spec) for spec in services]
        self._log_level = log_level
        self._log_json = log_json
        self._trace = trace  # each traced child's --trace
        self._ready_timeout_s = ready_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._healthy_after_s = healthy_after_s
        self._on_started = on_started
        self._on_restarted = on_restarted
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._lock: IO[bytes] | None = None
        self._preexec = death_signal_hook()
        # Children see the same data dir whatever their own defaults say. A busy port
        # fails a child's start at once, with the port in its ready file, instead of
        # being retried until the ready timeout says nothing of why.
        self._env = {
            **os.environ,
            "POSTOFFICE_DATA_DIR": str(self.data_dir),
            BIND_RETRY_ENV: "0",
        }

    def __repr__(self) -> str:
        children = " ".join(repr(child) for child in self._children)
        state = "stopping" if self._stopping.is_set() else "running"
        return f"<Director {self.data_dir} {state} {children}>"

    @property
    def restarts(self) -> dict[str, int]:
        """Restarts so far, per service."""
        return {child.spec.name: child.restarts for child in self._children}

    def statuses(self) -> list[ChildStatus]:
        """A snapshot of every child, in start order."""
        return [child.status() for child in self._children]

    async def run(self, stop: asyncio.Event) -> None:
        """Start everything, supervise until `stop` is set, then stop every child."""
        try:
            started = await self.start(stop)
            if started and self._on_started is not None:
                self._on_started(self.statuses())
            if started:
                await stop.wait()
        finally:
            await self.shutdown()

    async def start(self, stop: asyncio.Event) -> bool:
        """Start each service in order and wait until it is ready; then supervise them.

        Returns False if `stop` was set before all were ready. Raises ServiceStartError
        when a child fails to start, DirectorError when the data dir is taken.
        """
        self._take_lock()
        forward = asyncio.ensure_future(self._forward_stop(stop))
        self._tasks.append(forward)
        for child in self._children:
            if not await self._launch(child):
                return False
        for child in self._children:
            self._tasks.append(asyncio.ensure_future(self._keep(child, Backoff())))
        return True

    async def shutdown(self) -> None:
        """Stop every live child, last started first: SIGTERM, then SIGKILL after the deadline."""
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._lock is None:
            return  # never started: the run dir belongs to whoever holds the lock
        live = [child for child in self._children if child.alive]
        for child in live:
            child.state = ChildState.STOPPING
        self._publish()
        for child in reversed(live):
            await self._terminate(child)
        for child in self._children:
            # A ready file outlives its process; nobody should mistake it for a live one.
            with contextlib.suppress(OSError):
                ready_path(self.data_dir, child.spec.name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (run_dir(self.data_dir) / STATUS_FILE).unlink(missing_ok=True)
        self._release_lock()

    def hangup(self) -> None:
        """SIGHUP's work: pass it on to every ready child, which reads its own settings
        again (core/reload.py), and log each. A child still starting is left alone: it
        reads them anyway, and a SIGHUP before its handler is set would end it."""
        for child in self._children:
            process = child.process
            if process is None or process.returncode is not None:
                continue
            if child.state is not ChildState.READY:
                log.info(
                    "SIGHUP not forwarded, service not ready %s",
                    kv(child=child.spec.name, pid=process.pid, state=child.state.name.lower()),
                )
                continue
            # Our own, not yet reaped child: its pid cannot have been reused.
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGHUP)
            log.info("SIGHUP forwarded %s", kv(child=child.spec.name, pid=process.pid))

    # -- internals ----------------------------------------------------------------------

    async def _forward_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._stopping.set()

    def _take_lock(self) -> None:
        """Hold `run/director.lock` for our whole life: one director per data dir."""
        directory = run_dir(self.data_dir)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            lock = (directory / _LOCK_FILE).open("a+b")
        except OSError as exc:
            raise DirectorError(f"cannot use data dir {self.data_dir}: {exc}") from exc
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            lock.close()
            raise DirectorError(f"another director is running on data dir {self.data_dir}") from exc
        self._lock = lock

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _publish(self) -> None:
        """Rewrite `run/director.json` atomically (write a temporary, then rename)."""
        body = status_document(
            director_pid=os.getpid(), data_dir=self.data_dir, children=self.statuses()
        )
        target = run_dir(self.data_dir) / STATUS_FILE
        tmp = target.with_name(f".{STATUS_FILE}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(body))
            os.replace(tmp, target)
        except OSError as exc:
            # The status file is a report, not state: losing one update stops nothing.
            log.warning("cannot write status file %s", kv(path=target, error=exc))

    async def _launch(self, child: _Child) -> bool:
        """Spawn `child` and wait for its ready file; False if stopping meanwhile.

        Raises ServiceStartError if it cannot be spawned, dies, or is not ready in time.
        """
        name = child.spec.name
        ready = ready_path(self.data_dir, name)
        try:
            ready.unlink(missing_ok=True)
        except OSError as exc:
            raise ServiceStartError(f"service {name!r}: cannot remove {ready}: {exc}") from exc
        launch = Launch(
            data_dir=self.data_dir,
            ready_file=ready,
            log_level=self._log_level,
            log_json=self._log_json,
            trace=self._trace,
            peers={c.spec.name: dict(c.listeners) for c in self._children if c.listeners},
        )
        argv = child.spec.argv(launch)
        child.state = ChildState.STARTING
        child.listeners = {}
        child.ready_at = None
        try:
            # stdout goes to our stderr: the director's stdout is only its tables.
            child.process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=_STDERR_FD,
                stderr=None,
                env={**self._env, **child.spec.env},
                start_new_session=True,
                preexec_fn=self._preexec,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            child.process = None
            raise ServiceStartError(f"service {name!r} could not be spawned: {exc}") from exc
        log.info("service spawned %s", kv(child=name, pid=child.process.pid))
        self._publish()
        try:
            listeners = await self._await_ready(child, child.process, ready)
        except ServiceStartError as exc:
            if isinstance(exc.__cause__, ServiceFailedError):
                # It reported its failure and is exiting: let it, rather than signal it.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(child.process.wait(), timeout=self._stop_timeout_s)
            await self._terminate(child)  # alive if silent or its ready file was bad
            child.last_exit = str(exc)
            raise
        if listeners is None:
            return False
        child.listeners = listeners
        child.state = ChildState.READY
        child.ready_at = asyncio.get_running_loop().time()
        self._publish()
        shown = ",".join(f"{k}={describe_address(h, p)}" for k, (h, p) in listeners.items())
        log.info(
            "service ready %s",
            kv(child=name, pid=child.process.pid, restarts=child.restarts, listeners=shown),
        )
        return True

    async def _await_ready(
        self, child: _Child, process: asyncio.subprocess.Process, ready: Path
    ) -> dict[str, tuple[str, int]] | None:
        """Poll `ready` until `process` announces itself; None if stopping meanwhile."""
        name = child.spec.name
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._ready_timeout_s
        exited = asyncio.ensure_future(process.wait())
        try:
            while True:
                listeners = self._read_ready(name, ready, process.pid)
                if listeners is not None:
                    return listeners
                if exited.done():
                    reason = describe_exit(exited.result())
                    child.last_exit = reason
                    # It may have said why just before it exited, after our last look.
                    self._read_ready(name, ready, process.pid)
                    raise ServiceStartError(f"service {name!r} ended before it was ready: {reason}")
                if self._stopping.is_set():
                    return None
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise ServiceStartError(
                        f"service {name!r} was not ready within {self._ready_timeout_s:g} s"
                        f" (no {ready})"
                    )
                await asyncio.wait({exited}, timeout=min(_READY_POLL_S, remaining))
        finally:
            exited.cancel()

    @staticmethod
    def _read_ready(name: str, ready: Path, pid: int) -> dict[str, tuple[str, int]] | None:
        try:
            text = ready.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise ServiceStartError(f"service {name!r}: cannot read {ready}: {exc}") from exc
        try:
            return parse_ready(text, pid=pid)
        except ServiceFailedError as exc:
            raise ServiceStartError(f"service {name!r} could not start: {exc.reason}") from exc
        except ServiceStartError as exc:
            raise ServiceStartError(f"service {name!r}: {ready}: {exc}") from exc

    async def _keep(self, child: _Child, backoff: Backoff) -> None:
        """Wait for `child` to exit and restart it with backoff, until stopping."""
        loop = asyncio.get_running_loop()
        name = child.spec.name
        while not self._stopping.is_set():
            uptime_s: float | None = None
            process = child.process
            if process is not None and child.state is ChildState.READY:
                returncode = await self._exit_or_stop(process)
                if returncode is None:
                    return
                if child.ready_at is not None:
                    uptime_s = loop.time() - child.ready_at
                child.last_exit = describe_exit(returncode)
            delay = next_restart_delay(
                backoff, uptime_s=uptime_s, healthy_after_s=self._healthy_after_s
            )
            child.state = ChildState.BACKOFF
            self._publish()
            log.warning(
                "service down %s",
                kv(
                    child=name,
                    pid=None if process is None else process.pid,
                    reason=child.last_exit,
                    uptime_s="-" if uptime_s is None else f"{uptime_s:.1f}",
                    restart_in_s=f"{delay:.2f}",
                    restarts=child.restarts,
                ),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
            if self._stopping.is_set():
                return
            child.restarts += 1
            try:
                if not await self._launch(child):
                    return
            except ServiceStartError as exc:
                log.error("service restart failed %s", kv(child=name, error=exc))
                continue
            except Exception as exc:
                # The supervision boundary: a bug here must not end this child's watch.
                log.error("service restart crashed %s", kv(child=name), exc_info=exc)
                continue
            if self._on_restarted is not None:
                self._on_restarted(child.status())

    async def _exit_or_stop(self, process: asyncio.subprocess.Process) -> int | None:
        """The return code once `process` exits, or None if stopping comes first."""
        exited = asyncio.ensure_future(process.wait())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
            stopping.cancel()
        if self._stopping.is_set():
            return None
        return process.returncode

    async def _terminate(self, child: _Child) -> None:
        """SIGTERM our child, wait up to the deadline, then SIGKILL it."""
        process = child.process
        if process is None or process.returncode is not None:
            return
        name = child.spec.name
        # Process.send_signal targets our own, not yet reaped child: its pid cannot have
        # been reused by another process.
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            returncode = await asyncio.wait_for(process.wait(), timeout=self._stop_timeout_s)
        except TimeoutError:
            log.warning(
                "service did not stop in time, killing %s",
                kv(child=name, pid=process.pid, deadline_s=self._stop_timeout_s),
            )
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            returncode = await process.wait()
        child.last_exit = describe_exit(returncode)
        child.state = ChildState.STOPPED
        log.info("service stopped %s", kv(child=name, pid=process.pid, reason=child.last_exit))
