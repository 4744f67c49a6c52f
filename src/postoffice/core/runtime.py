"""The process runtime: uvloop, signals to a graceful shutdown, backoff, and supervision."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import signal
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar, final

from postoffice.core.errors import ClosedError

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_NOFILE: Final = 65536  # enough descriptors for the 1000s of clients the seeds ask for


@dataclass(slots=True, kw_only=True)
class Backoff:
    """Exponential backoff: `initial_s`, doubling up to `max_s`; `reset()` after success."""

    initial_s: float = 0.1
    max_s: float = 5.0
    factor: float = 2.0
    _next: float = field(default=0.0, init=False)

    def next_delay(self) -> float:
        """The delay to wait before the next attempt."""
        delay = min(self.max_s, self._next or self.initial_s)
        self._next = min(self.max_s, delay * self.factor)
        return delay

    def reset(self) -> None:
        """Start again from `initial_s`."""
        self._next = 0.0


def raise_fd_limit(wanted: int = DEFAULT_NOFILE) -> int:
    """Raise the soft RLIMIT_NOFILE towards `wanted` (capped by the hard limit); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
    return soft


def run(
    main: Callable[[asyncio.Event], Coroutine[Any, Any, T]],
    *,
    on_hangup: Callable[[], None] | None = None,
) -> T:
    """Run `main(stop)` on uvloop; SIGINT and SIGTERM set `stop` (a second one is fatal).

    SIGHUP calls `on_hangup` (a reload of the settings); without one it is logged and
    ignored, so a hangup never kills a server that has nothing to reload. `main` is
    expected to return once it has shut down gracefully after `stop` is set.
    """
    import uvloop

    async def _wrapper() -> T:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        hits = 0

        def _on_signal(signum: int) -> None:
            nonlocal hits
            hits += 1
            if hits > 1:
                log.warning("second signal=%s, exiting at once", signal.Signals(signum).name)
                raise SystemExit(1)
            log.info("signal=%s received, shutting down", signal.Signals(signum).name)
            stop.set()

        signums = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        for signum in signums[:2]:
            loop.add_signal_handler(signum, _on_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, on_hangup or _hangup_ignored)
        try:
            return await main(stop)
        finally:
            # Left installed, the handlers outlive the loop and swallow every later
            # SIGINT/SIGTERM: the process could no longer be interrupted after run().
            for signum in signums:
                loop.remove_signal_handler(signum)

    return uvloop.run(_wrapper())


def _hangup_ignored() -> None:
    log.info("signal=SIGHUP received, nothing to reload in this process")


@final
class Supervisor:
    """Runs named components as tasks and restarts one that crashes, with backoff.

    A component is a coroutine factory. A crash (any exception) is logged with its reason
    and the component is started again after the next backoff delay; the process goes on.
    A component that runs for `healthy_after_s` resets its backoff.
    """

    def __init__(self, *, healthy_after_s: float = 10.0) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.restarts: dict[str, int] = {}
        self._healthy_after_s = healthy_after_s
        self._stopping = False

    def start(
        self, name: str, factory: Callable[[], Awaitable[None]], *, backoff: Backoff | None = None
    ) -> None:
        """Start supervising `factory()` under `name`.

        Raises ClosedError after `stop`, and ValueError when `name` is still running.
        """
        if self._stopping:
            raise ClosedError(f"supervisor is stopped, cannot start component {name!r}")
        running = self._tasks.get(name)
        if running is not None and not running.done():
            # Replacing it would orphan the old task: `stop` could no longer cancel it.
            raise ValueError(f"component {name!r} is already running")
        self.restarts.setdefault(name, 0)
        self._tasks[name] = asyncio.get_running_loop().create_task(
            self._keep(name, factory, backoff or Backoff()), name=f"supervised:{name}"
        )

    async def _keep(
        self, name: str, factory: Callable[[], Awaitable[None]], backoff: Backoff
    ) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            began = loop.time()
            try:
                await factory()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if loop.time() - began >= self._healthy_after_s:
                    backoff.reset()
                delay = backoff.next_delay()
                self.restarts[name] += 1
                log.error(
                    "component crashed component=%s reason=%r restart_in_s=%.2f restarts=%d",
                    name,
                    exc,
                    delay,
                    self.restarts[name],
                    exc_info=exc,
                )
                await asyncio.sleep(delay)
            else:
                return

    async def stop(self) -> None:
        """Cancel every component and wait for them to finish."""
        self._stopping = True
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def __repr__(self) -> str:
        return f"<Supervisor components={sorted(self._tasks)} restarts={self.restarts}>"


async def unless_stopped(work: Awaitable[T], stop: asyncio.Event) -> tuple[bool, T | None]:
    """Await `work`, or cancel it as soon as `stop` is set: (True, its result) or (False, None).

    A start-up that waits (a bind retried until a busy port frees) must not make a
    SIGTERM wait with it. Raises whatever `work` raises.
    """
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        return False, None
    return True, task.result()


class Servable(Protocol):
    """A server as `serve_until_stopped` runs it (the command, ingest and store servers)."""

    @property
    def addresses(self) -> Mapping[str, tuple[str, int]]:
        """Where it listens, by listener name, once started."""
        ...

    async def startup(self) -> None:
        """Open what it serves and bind its listeners."""
        ...

    async def shutdown(self) -> None:
        """Stop accepting, finish what is in flight, close; safe after a failed start-up."""
        ...


async def serve_until_stopped(
    server: Servable,
    stop: asyncio.Event,
    *,
    service: str,
    ready_file: str | None = None,
    also_stop: asyncio.Event | None = None,
    on_listening: Callable[[], None] | None = None,
) -> None:
    """Start `server`, announce it, serve until `stop` (or `also_stop`) is set, shut down.

    A `stop` while the start-up still waits (a busy port being retried) ends it at once.
    The server is shut down whatever happens; a start-up that fails raises its error after
    that (an error of the shutdown itself is then only logged). `on_listening` runs once
    every listener is up, after the ready file is written.
    """
    try:
        started, _ = await unless_stopped(server.startup(), stop)
    except BaseException:
        try:
            await server.shutdown()
        except Exception:
            log.exception("shutdown after a failed start-up failed service=%s", service)
        raise
    try:
        if started:
            if ready_file:
                announce(ready_file, service=service, addresses=server.addresses)
            if on_listening is not None:
                on_listening()
            ends = [asyncio.ensure_future(stop.wait())]
            if also_stop is not None:
                ends.append(asyncio.ensure_future(also_stop.wait()))
            try:
                await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for end in ends:
                    end.cancel()
    finally:
        await server.shutdown()


def announce(
    path: str | os.PathLike[str], *, service: str, addresses: Mapping[str, tuple[str, int]]
) -> None:
    """Write where a service listens as JSON, atomically (the director and tests read it).

    The file holds {"service", "pid", "listeners": {name: [host, port]}}.
    """
    _write_report(
        Path(path),
        {
            "service": service,
            "pid": os.getpid(),
            "listeners": {k: list(v) for k, v in addresses.items()},
        },
    )


def announce_failure(path: str | os.PathLike[str], *, service: str, error: str) -> None:
    """Write why a service could not start into its ready file, atomically.

    The file holds {"service", "pid", "error"}: whoever waits for the ready file (the
    director) can then say why, instead of only that the child exited.
    """
    _write_report(Path(path), {"service": service, "pid": os.getpid(), "error": error})


def _write_report(target: Path, body: Mapping[str, object]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(body))
    os.replace(tmp, target)
