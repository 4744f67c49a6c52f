"""`postoffice store ...`: run the store server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import click

from postoffice.core.launch import config_options, serve_options, serve_service
from postoffice.store.client import Client
from postoffice.store.config import StoreConfig


@click.group()
def store() -> None:
    """The store: an append-only log with an LMDB index, served over TCP."""


@store.command()
@config_options(StoreConfig)
@serve_options("store")
def serve(
    config_path: str | None,
    ready_file: str | None,
    log_level: str,
    log_json: bool,
    **flags: object,
) -> None:
    """Run the store server until SIGINT or SIGTERM (then drain and exit 0); SIGHUP
    reloads the settings.

    Settings come from defaults < --config file < POSTOFFICE_STORE_* environment < flags.
    The protocol is in docs/protocols/store.md.
    """
    from postoffice.core.config import DATA_DIR_ENV
    from postoffice.core.reload import Reloads
    from postoffice.store.errors import StoreLockedError
    from postoffice.store.server import StoreServer

    reloads: Reloads[StoreConfig] = Reloads()

    async def start(config: StoreConfig, stop: asyncio.Event, ready: str | None) -> None:
        server = StoreServer(config)
        reloads.attach(server)
        try:
            await server.serve(stop, ready_file=ready)
        except StoreLockedError as exc:  # a command server with --store-dir, or another store
            server.pool.close()
            # a PostOfficeError: serve_service prints it and writes it to the ready file
            raise StoreLockedError(f"cannot open the store: {exc}") from exc

    serve_service(
        section="store",
        config_cls=StoreConfig,
        flags=flags,
        config_path=config_path,
        ready_file=ready_file,
        log_level=log_level,
        log_json=log_json,
        serve=start,
        shared_env={"data_dir": DATA_DIR_ENV},
        reloads=reloads,
    )


#: `postoffice store get`: the key has no value.
EXIT_NOT_FOUND: Final = 1
#: Bad usage (click's own code), or a key, value or bound over the protocol's limits.
EXIT_USAGE: Final = 2
#: The store cannot be reached, broke the connection, or refused the request.
EXIT_UNAVAILABLE: Final = 3


def _exit_status(*codes: str) -> str:
    """The `Exit status:` paragraph of a client command's --help, `codes` first."""
    return (
        "Exit status: "
        + "; ".join(
            [
                *codes,
                f"{EXIT_USAGE} bad usage, or an argument over the protocol's limits",
                f"{EXIT_UNAVAILABLE} the store cannot be reached, broke the connection or "
                "refused the request",
            ]
        )
        + "."
    )


_host = click.option("--host", default="127.0.0.1", show_default=True, help="Store address.")
_port = click.option("--port", type=int, default=7400, show_default=True, help="Store port.")


class _NotFound(click.ClickException):
    """Printed as `Error: ...`, exit status EXIT_NOT_FOUND."""

    exit_code = EXIT_NOT_FOUND


class _StoreUnavailable(click.ClickException):
    """Printed as `Error: ...`, exit status EXIT_UNAVAILABLE."""

    exit_code = EXIT_UNAVAILABLE


@contextmanager
def _client(host: str, port: int) -> Iterator[Client]:
    """A connected client; store errors inside become click errors with their exit status."""
    from postoffice.core.errors import PostOfficeError
    from postoffice.store.errors import StoreProtocolError

    try:
        with Client(host, port) as client:
            yield client
    except StoreProtocolError as exc:  # refused by our own encoder: nothing was sent
        raise click.UsageError(str(exc)) from exc
    except PostOfficeError as exc:
        raise _StoreUnavailable(str(exc)) from exc


@store.command(epilog=_exit_status("0 found", f"{EXIT_NOT_FOUND} no such key"))
@click.argument("key")
@_host
@_port
def get(key: str, host: str, port: int) -> None:
    """Print the value of KEY (exit 1 when there is none, 3 when the store cannot answer)."""
    with _client(host, port) as client:
        value = client.get(key.encode())
    if value is None:
        raise _NotFound(f"no such key {key!r}")
    click.echo(value.decode("utf-8", "replace"))


@store.command(epilog=_exit_status("0 stored"))
@click.argument("key")
@click.argument("value")
@_host
@_port
def put(key: str, value: str, host: str, port: int) -> None:
    """Store VALUE under KEY."""
    with _client(host, port) as client:
        client.put(key.encode(), value.encode())
    click.echo("OK")


@store.command(name="del", epilog=_exit_status("0 done"))
@click.argument("key")
@_host
@_port
def delete(key: str, host: str, port: int) -> None:
    """Delete KEY; prints 1 when it existed, 0 otherwise."""
    with _client(host, port) as client:
        click.echo("1" if client.delete(key.encode()) else "0")


@store.command(epilog=_exit_status("0 done"))
@click.option("--prefix", default=None, help="Only keys starting with this.")
@click.option("--start", default=None, help="First key (inclusive).")
@click.option("--end", default=None, help="Last key (exclusive).")
@click.option("--limit", type=int, default=100, show_default=True, help="At most this many.")
@_host
@_port
def scan(
    prefix: str | None, start: str | None, end: str | None, limit: int, host: str, port: int
) -> None:
    """Print keys and values in key order, one `key<TAB>value` per line."""
    with _client(host, port) as client:
        page = client.scan(
            prefix=prefix.encode() if prefix is not None else None,
            start=start.encode() if start is not None else None,
            end=end.encode() if end is not None else None,
            limit=limit,
        )
    for key, value in page.items:
        click.echo(f"{key.decode('utf-8', 'replace')}\t{value.decode('utf-8', 'replace')}")
    if page.more:
        click.echo("(more: raise --limit or continue with --start)", err=True)


@store.command(epilog=_exit_status("0 done"))
@_host
@_port
def stats(host: str, port: int) -> None:
    """Print the server's statistics as JSON."""
    import json

    with _client(host, port) as client:
        click.echo(json.dumps(client.stats(), indent=2, sort_keys=True))
