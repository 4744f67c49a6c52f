"""`postoffice store ...`: run the store server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from postoffice.core.launch import serve_options, serve_service


@click.group()
def store() -> None:
    """The store (seeds 002 + 003): an append-only log with an LMDB index, over TCP."""


@store.command()
@click.option("--host", default=None, help="Address to listen on.  [default: 127.0.0.1]")
@click.option("--port", type=int, default=None, help="TCP port.  [default: 7400]")
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="HTTP port for /metrics, /healthz, /readyz.  [default: 7401]",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="State directory; the store lives in <data-dir>/store.  [default: var]",
)
@click.option(
    "--durability",
    type=click.Choice(["always", "interval", "never"]),
    default=None,
    help="always: an acknowledged write is on disk (group commit).  [default: always]",
)
@click.option("--max-connections", type=int, default=None, help="Clients at once.")
@click.option(
    "--idle-timeout",
    "idle_timeout_s",
    type=float,
    default=None,
    help="Close a client idle this many seconds (0: never).  [default: 300]",
)
@click.option(
    "--max-request-size",
    "max_request_bytes",
    type=int,
    default=None,
    help="Largest request frame payload, bytes.  [default: 16 MiB]",
)
@serve_options("store")
def serve(
    config_path: str | None,
    ready_file: str | None,
    log_level: str,
    log_json: bool,
    **flags: object,
) -> None:
    """Run the store server until SIGINT or SIGTERM (then drain and exit 0).

    Settings come from defaults < --config file < POSTOFFICE_STORE_* environment < flags.
    The protocol is in docs/protocols/store.md.
    """
    from postoffice.core.config import data_dir
    from postoffice.store.config import StoreConfig
    from postoffice.store.server import StoreServer

    if flags.get("data_dir") is None:
        flags["data_dir"] = data_dir()

    async def start(config: StoreConfig, stop: asyncio.Event, ready: str | None) -> None:
        await StoreServer(config).serve(stop, ready_file=ready)

    serve_service(
        section="store",
        config_cls=StoreConfig,
        flags=flags,
        config_path=config_path,
        ready_file=ready_file,
        log_level=log_level,
        log_json=log_json,
        serve=start,
    )
