"""`postoffice command ...`: parse flags, build the config, run the server."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import click

from postoffice.core.launch import serve_options, serve_service

log = logging.getLogger(__name__)


@click.group()
def command() -> None:
    """The command server (seed 001): PING/PONG text lines and the Redis protocol."""


@command.command()
@click.option("--host", default=None, help="Address to listen on.  [default: 127.0.0.1]")
@click.option("--port", type=int, default=None, help="TCP port.  [default: 6380]")
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="HTTP port for /metrics, /healthz, /readyz.  [default: 6381]",
)
@click.option("--no-metrics", is_flag=True, help="Do not serve HTTP metrics.")
@click.option(
    "--threads", type=int, default=None, help="Worker threads for blocking commands.  [default: 4]"
)
@click.option(
    "--max-connections",
    type=int,
    default=None,
    help="Clients served at once; more are refused.  [default: 10000]",
)
@click.option(
    "--idle-timeout",
    "idle_timeout_s",
    type=float,
    default=None,
    help="Close a client idle this many seconds (0: never).  [default: 300]",
)
@click.option(
    "--rate-limit",
    "rate_limit_per_s",
    type=float,
    default=None,
    help="Commands per second per client (0: unlimited).  [default: 0]",
)
@click.option(
    "--rate-limit-burst",
    type=int,
    default=None,
    help="Commands a client may send at once.  [default: the rate]",
)
@click.option("--max-bulk-bytes", type=int, default=None, help="Largest argument accepted.")
@click.option("--requirepass", default=None, help="Password clients must AUTH with.")
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="PEM certificate: serve TLS instead of plain TCP.",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="PEM private key of --tls-cert.",
)
@click.option(
    "--reuse-port",
    is_flag=True,
    default=None,
    help="Set SO_REUSEPORT so several processes can share the port.",
)
@click.option(
    "--store",
    default=None,
    metavar="HOST:PORT",
    help="Serve GET/SET/DEL/MGET/MSET/EXISTS/SCAN/DBSIZE from the store server there.",
)
@click.option(
    "--store-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Serve those keys from the store in DIR, opened in this process (no store "
    "server; DIR is a store server's <data-dir>/store). Not with --store.",
)
@click.option(
    "store_durability",
    "--durability",
    type=click.Choice(["always", "interval", "never"]),
    default=None,
    help="With --store-dir, as `store serve --durability`: always: an OK for SET, MSET "
    "or DEL leaves only after the fsync that covers it (group commit); interval: fsync "
    "every 100 ms.  [default: always]",
)
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Processes serving the port (SO_REUSEPORT), for more than one core; CLIENT, "
    "INFO, CONFIG and SHUTDOWN see all of them. Not with --store-dir.  [default: 1]",
)
@click.option(
    "worker_timeout_s",
    "--worker-timeout",
    type=float,
    default=None,
    metavar="SECONDS",
    help="With --workers: a worker that answers none of the primary's heartbeats (one a "
    "second) for this long is killed and restarted; 0: never.  [default: 30]",
)
@click.option("--worker-channel", type=int, default=None, hidden=True)
@serve_options("command")
def serve(
    config_path: str | None,
    ready_file: str | None,
    log_level: str,
    log_json: bool,
    no_metrics: bool,
    worker_channel: int | None,
    **flags: object,
) -> None:
    """Run the command server until SIGINT, SIGTERM or SHUTDOWN.

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

        serve_worker(worker_channel, log_level=log_level, log_json=log_json)
        return
    if flags.get("store") is not None and flags.get("store_dir") is not None:
        raise click.UsageError("--store and --store-dir are mutually exclusive (pick one)")
    if flags.get("store_durability") is not None and flags.get("store") is not None:
        raise click.UsageError(
            "--durability applies only with --store-dir (a store server has its own)"
        )
    from postoffice.command.config import CommandConfig
    from postoffice.command.server import CommandServer
    from postoffice.core.errors import StorageError

    async def start(config: CommandConfig, stop: asyncio.Event, ready: str | None) -> None:
        if config.workers > 1:
            from postoffice.command.primary import Primary

            primary = Primary(config, log_level=log_level, log_json=log_json)
            await primary.serve(stop, ready_file=ready)
            return
        try:
            await CommandServer(config).serve(stop, ready_file=ready)
        except StorageError as exc:  # the store directory is locked or unreadable
            raise click.ClickException(f"cannot open the store: {exc}") from exc

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
    )
