"""`postoffice command ...`: parse flags, build the config, run the server."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import click

from postoffice.command.config import CommandConfig
from postoffice.core.launch import config_options, serve_options, serve_service
from postoffice.core.reload import Reloads

log = logging.getLogger(__name__)


@click.group()
def command() -> None:
    """The command server: PING/PONG text lines and the Redis protocol on one port."""


@command.command()
@config_options(CommandConfig)
@click.option("--no-metrics", is_flag=True, help="Do not serve HTTP metrics.")
@click.option("--worker-channel", type=int, default=None, hidden=True)
@serve_options("command")
def serve(
    config_path: str | None,
    ready_file: str | None,
    log_level: str | None,
    log_json: bool,
    no_metrics: bool,
    worker_channel: int | None,
    **flags: object,
) -> None:
    """Run the command server until SIGINT, SIGTERM or SHUTDOWN; SIGHUP reloads settings.

    Settings come from defaults < --config file < POSTOFFICE_COMMAND_* environment <
    these flags. Try it: `redis-cli -p 6380 ping` or `printf 'PING\\n' | nc 127.0.0.1 6380`.

    The keyspace commands (GET, SET, DEL, MGET, MSET, EXISTS, SCAN, DBSIZE) need a
    store: a store server (--store HOST:PORT) or a store directory this process opens
    itself (--store-dir DIR, faster: one process, no second hop). A directory is open in
    one process at a time: a store server and a command server cannot share it.

    With --workers N (N > 1) this process is the primary: it starts N worker processes
    on the same port and supervises them; it serves /metrics, and stops them all on
    SIGTERM, SIGINT or SHUTDOWN.
    """
    if worker_channel is not None:  # started by a primary: settings come over the channel
        from postoffice.command.worker import serve_worker

        serve_worker(worker_channel, log_level=log_level or "INFO", log_json=log_json)
        return
    if flags.get("store") is not None and flags.get("store_dir") is not None:
        raise click.UsageError("--store and --store-dir are mutually exclusive (pick one)")
    if flags.get("store_durability") is not None and flags.get("store") is not None:
        raise click.UsageError(
            "--durability applies only with --store-dir (a store server has its own)"
        )
    from postoffice.command.server import CommandServer
    from postoffice.core.errors import StorageError

    reloads: Reloads[CommandConfig] = Reloads()
    config_file = None if config_path is None else Path(config_path).absolute()

    async def start(config: CommandConfig, stop: asyncio.Event, ready: str | None) -> None:
        if config.workers > 1:
            from postoffice.command.primary import Primary

            primary = Primary(
                config, log_level=config.log_level, log_json=log_json, config_file=config_file
            )
            reloads.attach(primary)
            await primary.serve(stop, ready_file=ready)
            return
        server = CommandServer(config, config_file=config_file)
        reloads.attach(server)
        try:
            await server.serve(stop, ready_file=ready)
        except StorageError as exc:  # the store directory is locked or unreadable
            # still a StorageError: serve_service prints it and writes it to the ready file
            raise StorageError(f"cannot open the store: {exc}") from exc

    serve_service(
        section="command",
        config_cls=CommandConfig,
        flags=flags,
        config_path=config_path,
        ready_file=ready_file,
        log_level=log_level,
        log_json=log_json,
        serve=start,
        adjust=(lambda c: dataclasses.replace(c, metrics_port=None)) if no_metrics else None,
        reloads=reloads,
    )
