"""One worker process of a command server run with --workers N (the primary: primary.py).

It gets its settings, index and id range from the primary over the inherited channel,
serves the shared port with a CommandServer (SO_REUSEPORT), answers the primary's
questions about its own clients, and asks the primary for the server-wide commands.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Final, final

import click

from postoffice.command.config import settings_from_json
from postoffice.command.errors import CommandError
from postoffice.command.link import Link
from postoffice.command.server import CommandServer
from postoffice.core import logs, tracing
from postoffice.core.errors import PostOfficeError
from postoffice.core.runtime import raise_fd_limit, run

log = logging.getLogger(__name__)

#: A worker waits this long for the primary's answer: more than the primary's own
#: deadline for each worker (primary.WORKER_TIMEOUT_S), so the primary's clearer error
#: (which worker did not answer) arrives first.
PRIMARY_TIMEOUT_S: Final = 5.0


@final
class WorkerCluster:
    """The server-wide commands of one worker, asked of the primary (commands.Cluster)."""

    def __init__(self, link: Link) -> None:
        self.link = link

    def __repr__(self) -> str:
        return f"<WorkerCluster {self.link!r}>"

    def _ask(self, op: str, args: dict[str, object], label: str) -> asyncio.Future[object]:
        return self.link.call(op, args, timeout_s=PRIMARY_TIMEOUT_S, label=label)

    def client_lines(self, ids: list[int] | None) -> asyncio.Future[object]:
        return self._ask("clients", {"ids": ids}, "CLIENT LIST")

    def kill_clients(
        self, *, conn_id: int | None, addr: str | None, skip_id: int | None, caller_id: int | None
    ) -> asyncio.Future[object]:
        args: dict[str, object] = {
            "conn_id": conn_id,
            "addr": addr,
            "skip_id": skip_id,
            "caller_id": caller_id,
        }
        return self._ask("kill", args, "CLIENT KILL")

    def info(self) -> asyncio.Future[object]:
        return self._ask("info", {}, "INFO")

    def config_set(self, pairs: list[tuple[str, str]]) -> asyncio.Future[object]:
        return self._ask("config_set", {"pairs": [list(p) for p in pairs]}, "CONFIG SET")

    def reset_stats(self) -> asyncio.Future[object]:
        return self._ask("reset_stats", {}, "CONFIG RESETSTAT")

    def config_rewrite(self) -> asyncio.Future[object]:
        return self._ask("config_rewrite", {}, "CONFIG REWRITE")


@final
class WorkerCalls:
    """What the primary may ask of this worker about its own clients and settings."""

    def __init__(self) -> None:
        self.server: CommandServer | None = None

    def __repr__(self) -> str:
        return f"<WorkerCalls server={self.server!r}>"

    def answer(self, op: str, args: dict[str, object]) -> object:
        """Run one of the primary's calls; raises CommandError for a bad one."""
        server = self.server
        if server is None:
            raise CommandError(f"worker is still starting, cannot answer {op!r}")
        match op:
            case "clients":
                ids = _optional_ids(args.get("ids"))
                return [c.describe() for c in server.clients() if ids is None or c.conn_id in ids]
            case "kill":
                return server.kill_clients(
                    conn_id=_optional_int(args.get("conn_id"), "conn_id"),
                    addr=_optional_str(args.get("addr"), "addr"),
                    skip_id=_optional_int(args.get("skip_id"), "skip_id"),
                    caller_id=_optional_int(args.get("caller_id"), "caller_id"),
                )
            case "info":
                return server.info()
            case "stats":  # also the primary's heartbeat, which keeps the last answer
                return {**server.stats(), "calls": dict(server.counts.calls)}
            case "config_set":
                server.config_set(_pairs(args.get("pairs")))
                return None
            case "reset_stats":
                server.reset_stats()
                return None
            case _:
                raise CommandError(f"unknown worker call {op!r}")


async def run_worker(
    channel_fd: int, stop: asyncio.Event, *, log_level: str = "INFO", log_json: bool = False
) -> None:
    """Serve as a worker until `stop` (SIGTERM) or the primary goes away, then drain.

    Its log lines say `service=command.worker<index>` once the primary has named it.

    Raises PostOfficeError when the primary's hello cannot be had or its settings are bad.
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(fileno=channel_fd)
    sock.setblocking(False)
    calls = WorkerCalls()
    link = Link("the primary", on_call=calls.answer, on_notice=_ignore, on_lost=stop.set)
    await loop.create_unix_connection(lambda: link, sock=sock)
    asking = link.call("hello", {"pid": os.getpid()}, timeout_s=PRIMARY_TIMEOUT_S, label="hello")
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait((asking, stopped), return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not asking.done():  # stopped before the primary answered
        asking.cancel()
        link.close()
        return
    hello = asking.result()
    if not isinstance(hello, dict) or not isinstance(hello.get("settings"), dict):
        raise CommandError(f"bad hello from the primary: {hello!r:.200}")
    index = _optional_int(hello.get("index"), "index") or 0
    first_id = _optional_int(hello.get("first_id"), "first_id") or 1
    id_step = _optional_int(hello.get("id_step"), "id_step") or 1
    config = settings_from_json(hello["settings"])
    # The settings' level: a worker restarted after a reload or CONFIG SET loglevel logs
    # as the others do, whatever its command line said.
    logs.setup(level=config.log_level, json=log_json, service=f"command.worker{index}")
    tracing.setup(service="command", trace=config.trace)  # before the server takes it
    server = CommandServer(config, first_id=first_id, id_step=id_step)
    server.cluster = WorkerCluster(link)
    server.shutdown_hook = lambda: link.notify("shutdown")
    calls.server = server

    def listening() -> None:
        host, port = server.addresses["command"]
        link.notify("listening", {"pid": os.getpid(), "host": host, "port": port})
        log.info("worker listening worker=%d pid=%d port=%d", index, os.getpid(), port)

    try:
        await server.serve(stop, on_listening=listening)
    finally:
        if not link.connected:
            log.info("worker stopped worker=%d reason=primary gone", index)
        link.close()


def serve_worker(channel_fd: int, *, log_level: str, log_json: bool) -> None:
    """The worker process's entry point (the hidden `serve --worker-channel FD`).

    Raises click.ClickException (exit status 1) when the worker cannot start.
    """
    logs.setup(level=log_level, json=log_json, service="command")
    raise_fd_limit()
    try:
        run(lambda stop: run_worker(channel_fd, stop, log_level=log_level, log_json=log_json))
    except PostOfficeError as exc:
        raise click.ClickException(f"command worker cannot start: {exc}") from exc
    finally:
        tracing.shutdown()


def _ignore(event: str, args: dict[str, object]) -> None:
    log.warning("unexpected notice from the primary event=%s", event)


def _optional_int(value: object, what: str) -> int | None:
    if value is None or (type(value) is int and value >= 0):
        return value
    raise CommandError(f"worker call field {what!r} is {value!r}, expected an integer or null")


def _optional_str(value: object, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise CommandError(f"worker call field {what!r} is {value!r}, expected a string or null")


def _optional_ids(value: object) -> set[int] | None:
    if value is None:
        return None
    if isinstance(value, list) and all(type(v) is int for v in value):
        return set(value)
    raise CommandError(f"worker call field 'ids' is {value!r:.100}, expected integers or null")


def _pairs(value: object) -> list[tuple[str, str]]:
    if isinstance(value, list) and all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in value
    ):
        return [(p[0], p[1]) for p in value]
    raise CommandError(f"worker call field 'pairs' is {value!r:.100}, expected name-value pairs")


__all__ = ["PRIMARY_TIMEOUT_S", "WorkerCalls", "WorkerCluster", "run_worker", "serve_worker"]
