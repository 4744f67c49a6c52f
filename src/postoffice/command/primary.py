"""The primary of a command server run with --workers N: N worker processes, one port.

The primary fixes the port, starts the workers (command/worker.py, each a CommandServer
with SO_REUSEPORT on that port), answers their server-wide questions by asking every
worker over its channel (command/link.py), keeps the current settings for a worker it
restarts, serves /metrics (summed), /healthz and /readyz, and stops them all on SIGTERM,
SIGINT or SHUTDOWN. It serves no client itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Final, final

from postoffice.command.admin import primary_routes
from postoffice.command.aggregate import (
    PrimaryUsage,
    Retired,
    WorkerReport,
    WorkerState,
    merge_info,
    merge_stats,
)
from postoffice.command.commands import server_facts
from postoffice.command.config import CommandConfig, settings_json
from postoffice.command.errors import CommandError, WorkerUnavailableError
from postoffice.command.link import Link
from postoffice.command.server import (
    READ_ONLY_CONFIG,
    changed_config,
    config_pairs,
    rewrite_file,
    rss_bytes,
)
from postoffice.command.stats import INFO_COUNTERS, STATS_COUNTERS
from postoffice.core import metrics
from postoffice.core.errors import ConfigError
from postoffice.core.http import Response, serve_http
from postoffice.core.listeners import bound_address, make_socket
from postoffice.core.runtime import Backoff, announce

log = logging.getLogger(__name__)

#: The primary's deadline for each worker's answer to a server-wide command.
WORKER_TIMEOUT_S: Final = 2.0
#: A worker up this long has its restart backoff reset (as the director does).
HEALTHY_AFTER_S: Final = 10.0
#: Past a worker's own drain deadline (shutdown_timeout_s), how long before SIGKILL.
STOP_GRACE_S: Final = 5.0
#: The most time between two of the primary's heartbeats to a worker.
HEARTBEAT_EVERY_S: Final = 1.0
#: Connection ids of one worker start (generation * this * N) apart at each restart, so
#: a restarted worker never hands out an id its previous process gave a client.
ID_GENERATION_SPAN: Final = 1_000_000_000


@final
@dataclass(slots=True, kw_only=True)
class _Worker:
    """The primary's record of one worker slot and its current process."""

    index: int
    generation: int = -1  # bumped at each start
    state: str = "starting"
    pid: int = 0
    restarts: int = 0
    last_exit: str = ""
    link: Link | None = None
    process: asyncio.subprocess.Process | None = None
    sent_config: CommandConfig | None = None  # the settings its hello carried
    hung_s: float = 0.0  # > 0: the heartbeat found it hung this long and killed it
    last_stats: dict[str, object] | None = None  # its newest heartbeat answer

    def roster(self) -> WorkerState:
        return WorkerState(
            index=self.index,
            pid=self.pid,
            state=self.state,
            restarts=self.restarts,
            last_exit=self.last_exit,
        )


@final
class Primary:
    """Runs and supervises the workers of one command server; see the module docstring.

    `serve(stop)` returns once every worker has stopped, after `stop` is set (SIGTERM,
    SIGINT) or a client sent SHUTDOWN. Raises ConfigError for settings a worker could
    not start with (a TLS pair that does not load).
    """

    def __init__(
        self,
        config: CommandConfig,
        *,
        log_level: str,
        log_json: bool,
        config_file: Path | None = None,
    ) -> None:
        self.config = config
        self.config_file = config_file  # CONFIG REWRITE's file; None: started without one
        self.started = time.time()
        self.addresses: dict[str, tuple[str, int]] = {}
        self.workers = [_Worker(index=i) for i in range(config.workers)]
        self._log_flags = ["--log-level", log_level, *(["--log-json"] if log_json else [])]
        self._placeholder: socket.socket | None = None
        self._http: asyncio.Server | None = None
        self._keepers: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._shutdown = asyncio.Event()  # a client's SHUTDOWN
        self._listened = asyncio.Event()  # a worker said it listens
        self._scraped: dict[str, int] = {}
        self._retired = Retired(counters=STATS_COUNTERS)  # what dead workers had counted
        self.registry = metrics.new_registry()
        self.registry.register(
            metrics.StatsCollector(
                "postoffice_command",
                lambda: self._scraped,
                counters=(*STATS_COUNTERS, "worker_restarts"),
            )
        )

    def __repr__(self) -> str:
        states = ",".join(w.state for w in self.workers)
        return f"<Primary {self.addresses.get('command')} workers={states}>"

    # -- lifecycle ---------------------------------------------------------------------

    async def serve(self, stop: asyncio.Event, *, ready_file: str | None = None) -> None:
        """Start the workers, announce once all listen, run until stopped, stop them."""
        _check_tls(self.config)
        port = self._fix_port()
        self.addresses["command"] = (self.config.host, port)
        if self.config.metrics_port is not None:
            routes = primary_routes(self, self._metrics, self._ready)
            self._http = await serve_http(
                routes, host=self.config.host, port=self.config.metrics_port
            )
            self.addresses["metrics"] = bound_address(self._http)
        self._keepers = [
            asyncio.get_running_loop().create_task(self._keep(w), name=f"worker-{w.index}")
            for w in self.workers
        ]
        log.info("primary started workers=%d port=%d pid=%d", len(self.workers), port, os.getpid())
        all_listening = asyncio.ensure_future(self._all_listening())
        ended = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._shutdown.wait())]
        await asyncio.wait((all_listening, *ended), return_when=asyncio.FIRST_COMPLETED)
        if all_listening.done() and not stop.is_set() and not self._shutdown.is_set():
            if ready_file:
                announce(ready_file, service="command", addresses=self.addresses)
            log.info("every worker listening workers=%d port=%d", len(self.workers), port)
            await asyncio.wait(ended, return_when=asyncio.FIRST_COMPLETED)
        all_listening.cancel()
        for waiter in ended:
            waiter.cancel()
        await self.shutdown()

    async def shutdown(self) -> None:
        """SIGTERM every worker, wait for their drain (SIGKILL past the deadline), close."""
        self._stopping.set()
        for worker in self.workers:
            worker.state = "stopping"
            _signal(worker, signal.SIGTERM)
        deadline = self.config.shutdown_timeout_s + STOP_GRACE_S
        _, late = await asyncio.wait(self._keepers, timeout=deadline) if self._keepers else ((), ())
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                log.warning(
                    "worker did not stop in time worker=%d pid=%d", worker.index, worker.pid
                )
                _signal(worker, signal.SIGKILL)
        if late:
            await asyncio.wait(late)
        if self._http is not None:
            self._http.close()
            await self._http.wait_closed()
        if self._placeholder is not None:
            self._placeholder.close()
        log.info("primary stopped workers=%d", len(self.workers))

    def _fix_port(self) -> int:
        """The port every worker binds. For port 0, bind one SO_REUSEPORT socket to learn
        a concrete port and keep it bound (never listening, so it takes no connection)
        until the end, so no other program can take the port between worker restarts."""
        if self.config.port != 0:
            return self.config.port
        try:
            sock = make_socket(self.config.host, 0, reuse_port=True)
        except OSError as exc:
            raise ConfigError(f"cannot bind {self.config.host} port 0: {exc}") from exc
        self._placeholder = sock
        return int(sock.getsockname()[1])

    async def _all_listening(self) -> None:
        while not all(w.state == "listening" for w in self.workers):
            await self._listened.wait()
            self._listened.clear()

    def _ready(self) -> bool:
        return not self._stopping.is_set() and any(w.state == "listening" for w in self.workers)

    # -- one worker slot ---------------------------------------------------------------

    async def _keep(self, worker: _Worker) -> None:
        """Run the worker, and start it again (with backoff) each time it exits."""
        loop = asyncio.get_running_loop()
        backoff = Backoff(initial_s=0.1, max_s=5.0)
        while not self._stopping.is_set():
            began = loop.time()
            try:
                reason = await self._run_once(worker)
            except OSError as exc:
                reason = f"start failed: {exc}"
            if self._stopping.is_set():
                return
            if loop.time() - began >= HEALTHY_AFTER_S:
                backoff.reset()
            delay = backoff.next_delay()
            worker.restarts += 1
            worker.state = "restarting"
            worker.last_exit = reason
            log.error(
                "worker exited worker=%d reason=%r restart_in_s=%.2f restarts=%d",
                worker.index,
                reason,
                delay,
                worker.restarts,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _run_once(self, worker: _Worker) -> str:
        """Start the worker's process and wait for it to exit; say why it did."""
        worker.generation += 1
        worker.state = "starting"
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        link = Link(
            f"worker {worker.index}",
            on_call=partial(self._answer, worker),
            on_notice=partial(self._notice, worker),
            on_lost=lambda: None,
        )
        try:
            ours.setblocking(False)
            await asyncio.get_running_loop().create_unix_connection(lambda: link, sock=ours)
            argv = [
                sys.executable,
                *("-m", "postoffice", "command", "serve"),
                *("--worker-channel", str(theirs.fileno()), *self._log_flags),
            ]
            # A session of its own: a terminal's Ctrl-C reaches the primary alone, which
            # stops the workers in order; a dead primary closes the channel instead.
            process = await asyncio.create_subprocess_exec(
                *argv,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            link.close()
            ours.close()
            raise
        finally:
            theirs.close()
        worker.process = process
        worker.pid = process.pid
        worker.link = link
        link.peer = f"worker {worker.index} (pid {process.pid})"
        if self._stopping.is_set():  # the stop came while it was being spawned
            _signal(worker, signal.SIGTERM)
        worker.hung_s = 0.0
        watchdog = asyncio.get_running_loop().create_task(self._watch(worker, link))
        try:
            code = await process.wait()
        finally:
            watchdog.cancel()
        link.close()
        worker.link = None
        worker.process = None
        worker.pid = 0
        if worker.last_stats is not None:
            self._retired.add(worker.last_stats)
            worker.last_stats = None
        if worker.hung_s:
            return f"hung for {worker.hung_s:.1f} s (no heartbeat answered); killed"
        return _exit_reason(code)

    async def _watch(self, worker: _Worker, link: Link) -> None:
        """The heartbeat: ask the worker for its statistics every second or so; one that
        answers nothing (not even a refusal) for `worker_timeout_s` is killed, so its
        share of the port's new connections is not lost to a stuck process.

        It also covers the start: a worker that never gets its loop going is hung too.
        During a stop the primary's own deadline applies instead.
        """
        timeout = self.config.worker_timeout_s
        if timeout <= 0:
            return
        loop = asyncio.get_running_loop()
        every = min(HEARTBEAT_EVERY_S, timeout / 3)
        answered = loop.time()
        while True:
            await asyncio.sleep(every)
            if self._stopping.is_set():
                return
            try:
                answer = await link.call("stats", {}, timeout_s=every, label="heartbeat")
                answered = loop.time()
                if isinstance(answer, dict):
                    worker.last_stats = answer
            except WorkerUnavailableError:
                pass  # no answer in time, or no channel yet
            except CommandError:
                answered = loop.time()  # a refusal ("still starting") is an answer too
            silent = loop.time() - answered
            if silent >= timeout and not self._stopping.is_set():
                worker.hung_s = silent
                log.error(
                    "worker hung, killing it worker=%d pid=%d silent_s=%.1f",
                    worker.index,
                    worker.pid,
                    silent,
                )
                _signal(worker, signal.SIGKILL)
                return

    # -- the workers' calls and notices ------------------------------------------------

    def _answer(self, worker: _Worker, op: str, args: dict[str, object]) -> object:
        """A worker's call: its hello, or a server-wide command to ask every worker."""
        match op:
            case "hello":
                return self._hello(worker)
            case "clients":
                return self._clients(args)
            case "kill":
                return self._kill(args)
            case "info":
                return self._info(worker)
            case "config_set":
                return self._config_set(worker, args)
            case "config_rewrite":
                return rewrite_file(self.config_file, self.config)
            case "reset_stats":
                self._retired.clear()
                for each in self.workers:
                    each.last_stats = None  # counted before the reset
                return self._each("reset_stats", {}, "CONFIG RESETSTAT", skip=worker)
            case _:
                raise CommandError(f"unknown primary call {op!r}")

    def _hello(self, worker: _Worker) -> dict[str, object]:
        count = len(self.workers)
        settings = replace(
            self.config,
            port=self.addresses["command"][1],
            reuse_port=True,
            metrics_port=None,
        )
        worker.sent_config = self.config
        return {
            "index": worker.index,
            "generation": worker.generation,
            "first_id": 1 + worker.index + worker.generation * ID_GENERATION_SPAN * count,
            "id_step": count,
            "settings": settings_json(settings),
        }

    def _notice(self, worker: _Worker, event: str, args: dict[str, object]) -> None:
        match event:
            case "listening":
                worker.state = "listening"
                self._listened.set()
                if worker.sent_config is not None and worker.sent_config != self.config:
                    # CONFIG SET arrived between its hello and now: it must not miss it.
                    self._catch_up(worker)
            case "shutdown":
                log.info("shutdown requested by a client worker=%d", worker.index)
                self._shutdown.set()
            case _:
                log.warning("unknown notice worker=%d event=%s", worker.index, event)

    def _catch_up(self, worker: _Worker) -> None:
        if worker.link is None:
            return
        pairs = [list(pair) for pair in config_pairs(self.config)]
        worker.sent_config = self.config
        future = worker.link.call(
            "config_set", {"pairs": pairs}, timeout_s=WORKER_TIMEOUT_S, label="CONFIG SET"
        )
        future.add_done_callback(_log_failure)

    async def _ask(
        self, op: str, args: dict[str, object], label: str, *, skip: _Worker | None = None
    ) -> list[tuple[_Worker, object]]:
        """Ask every listening worker but `skip`; their answers in worker order.

        Raises WorkerUnavailableError naming a worker that did not answer in time.
        """
        targets = [
            w
            for w in self.workers
            if w is not skip and w.state == "listening" and w.link is not None and w.link.connected
        ]
        futures = [
            w.link.call(op, args, timeout_s=WORKER_TIMEOUT_S, label=label)
            for w in targets
            if w.link is not None
        ]
        answers = await asyncio.gather(*futures, return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        return list(zip(targets, answers, strict=True))

    async def _each(
        self, op: str, args: dict[str, object], label: str, *, skip: _Worker | None
    ) -> None:
        await self._ask(op, args, label, skip=skip)

    async def _clients(self, args: dict[str, object]) -> list[str]:
        lines: list[str] = []
        for _, answer in await self._ask("clients", args, "CLIENT LIST"):
            if isinstance(answer, list):
                lines.extend(line for line in answer if isinstance(line, str))
        return lines

    async def _kill(self, args: dict[str, object]) -> int:
        answers = await self._ask("kill", args, "CLIENT KILL")
        return sum(answer for _, answer in answers if type(answer) is int)

    async def _info(self, origin: _Worker) -> dict[str, dict[str, object]]:
        answers = await self._ask("info", {}, "INFO")
        reports = [
            WorkerReport(index=w.index, pid=w.pid, sections=answer)
            for w, answer in answers
            if isinstance(answer, dict)
        ]
        reports.append(self._retired.report(INFO_COUNTERS))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        primary = PrimaryUsage(
            rss_bytes=rss_bytes(),
            peak_bytes=usage.ru_maxrss * 1024,
            cpu_sys_s=usage.ru_stime,
            cpu_user_s=usage.ru_utime,
        )
        return merge_info(
            reports,
            origin=origin.index,
            server=server_facts(self.addresses["command"][1], self.started),
            primary=primary,
            roster=[w.roster() for w in self.workers],
        )

    async def _config_set(self, origin: _Worker, args: dict[str, object]) -> None:
        raw = args.get("pairs")
        if not isinstance(raw, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in raw
        ):
            raise CommandError(f"config_set pairs are {raw!r:.100}, expected name-value pairs")
        pairs = [(p[0], p[1]) for p in raw]
        self.config = changed_config(self.config, pairs)  # what a restarted worker gets
        answers = await self._ask("config_set", {"pairs": raw}, "CONFIG SET", skip=origin)
        for worker, _ in answers:
            worker.sent_config = self.config

    async def reconfigure(self, new: CommandConfig) -> None:
        """A reload's live settings (core/reload.py), pushed to every worker as CONFIG
        SET pushes them; a worker starting meanwhile catches up once it listens, one
        restarted later gets them in its hello. A worker that does not answer in time is
        logged, not raised: the settings hold here and in the workers that answered."""
        before = set(config_pairs(self.config))
        pairs = [pair for pair in config_pairs(new) if pair not in before]
        self.config = new
        if not pairs:
            return
        try:
            answers = await self._ask("config_set", {"pairs": [list(p) for p in pairs]}, "reload")
        except WorkerUnavailableError as exc:
            log.error(
                "reload not taken by every worker (a restarted one gets it) error=%r", str(exc)
            )
            return
        for worker, _ in answers:
            worker.sent_config = new

    # -- HTTP --------------------------------------------------------------------------
    # The admin API (command/admin.py primary_routes) asks these; each raises
    # WorkerUnavailableError naming a worker that did not answer.

    async def info(self) -> dict[str, dict[str, object]]:
        """INFO over every worker, as a client of the first worker sees it."""
        return await self._info(self.workers[0])

    async def client_lines(self) -> list[str]:
        """CLIENT LIST over every worker."""
        return await self._clients({})

    def config_items(self) -> dict[str, str]:
        """CONFIG GET's settings: the primary keeps what every worker was told."""
        config = self.config
        items = {"bind": config.host, "port": str(self.addresses["command"][1])}
        items |= {"workers": str(config.workers), **READ_ONLY_CONFIG}
        return items | dict(config_pairs(config))

    async def config_set(self, pairs: list[tuple[str, str]]) -> None:
        """CONFIG SET on every worker; raises what `changed_config` raises first."""
        self.config = changed_config(self.config, pairs)
        args: dict[str, object] = {"pairs": [list(p) for p in pairs]}
        for worker, _ in await self._ask("config_set", args, "CONFIG SET"):
            worker.sent_config = self.config

    async def _metrics(self) -> Response:
        try:
            answers = await self._ask("stats", {}, "/metrics")
        except WorkerUnavailableError as exc:
            return Response(status=503, body=f"{exc}\n".encode())
        parts = [
            {k: v for k, v in answer.items() if type(v) is int}
            for _, answer in answers
            if isinstance(answer, dict)
        ]
        merged = merge_stats([*parts, self._retired.totals])
        merged["workers"] = len(self.workers)
        merged["workers_listening"] = sum(w.state == "listening" for w in self.workers)
        merged["worker_restarts"] = sum(w.restarts for w in self.workers)
        self._scraped = merged
        body, content_type = metrics.render(self.registry)
        return Response(status=200, body=body, content_type=content_type)


def _check_tls(config: CommandConfig) -> None:
    """Load the TLS pair once here, so a bad one is an error at start, not N crashing workers."""
    if config.tls_cert is None or config.tls_key is None:
        return
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load tls_cert/tls_key: {exc}") from exc


def _signal(worker: _Worker, signum: signal.Signals) -> None:
    process = worker.process
    if process is not None and process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)


def _exit_reason(code: int) -> str:
    """How a worker ended, as the log and INFO say it: "exit code 1", "signal SIGKILL"."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _log_failure(future: asyncio.Future[object]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("settings not applied in a restarted worker error=%r", str(future.exception()))


__all__ = [
    "HEALTHY_AFTER_S",
    "HEARTBEAT_EVERY_S",
    "ID_GENERATION_SPAN",
    "WORKER_TIMEOUT_S",
    "Primary",
]
