"""`postoffice ingest ...`: run the server, or upload files to one."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from postoffice.core.errors import PostOfficeError
from postoffice.core.launch import config_options, serve_options, serve_service
from postoffice.core.reload import Reloads
from postoffice.ingest.config import IngestConfig

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress


@click.group()
def ingest() -> None:
    """The ingest server: compressed chunks in over X data ports, files out."""


@ingest.command()
@config_options(IngestConfig)
@serve_options("ingest")
def serve(
    config_path: str | None,
    ready_file: str | None,
    log_level: str,
    log_json: bool,
    **flags: object,
) -> None:
    """Run the ingest server until SIGINT or SIGTERM (then drain and exit 0); SIGHUP
    reloads the settings.

    Settings come from defaults < --config file < POSTOFFICE_INGEST_* environment <
    these flags. Upload with `postoffice ingest send FILE`.
    """
    from postoffice.core.config import DATA_DIR_ENV
    from postoffice.ingest.server import IngestServer

    reloads: Reloads[IngestConfig] = Reloads()

    async def start(config: IngestConfig, stop: asyncio.Event, ready: str | None) -> None:
        server = IngestServer(config)
        reloads.attach(server)
        await server.serve(stop, ready_file=ready)

    serve_service(
        section="ingest",
        config_cls=IngestConfig,
        flags=flags,
        config_path=config_path,
        ready_file=ready_file,
        log_level=log_level,
        log_json=log_json,
        serve=start,
        shared_env={"data_dir": DATA_DIR_ENV},
        reloads=reloads,
    )


@ingest.command()
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Ingest server address.")
@click.option("--sys-base", type=int, default=7000, show_default=True, help="Its first port.")
@click.option(
    "--node",
    "nodes",
    multiple=True,
    metavar="HOST:PORT",
    help="A node of a cluster, at its health port (sys-base); repeat it or give a comma "
    "list. In place of --host and --sys-base.",
)
@click.option(
    "--failover",
    "failover_s",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds to look for another node when the one sent to stops answering.",
)
@click.option(
    "--data-base",
    type=int,
    default=None,
    help="Its first data port (default: asked from the health port).",
)
@click.option("--ports", type=int, default=None, help="How many data ports (with --data-base).")
@click.option(
    "--chunk-size",
    type=int,
    default=4 * 1024 * 1024,
    show_default=True,
    help="Bytes per chunk (at most 8 MiB).",
)
@click.option(
    "--parallel",
    type=int,
    default=4,
    show_default=True,
    help="Connections used at once, spread over the data ports.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=300.0,
    show_default=True,
    help="Seconds to wait for the server's publish event.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def send(
    files: tuple[Path, ...],
    host: str,
    sys_base: int,
    nodes: tuple[str, ...],
    failover_s: float,
    data_base: int | None,
    ports: int | None,
    chunk_size: int,
    parallel: int,
    timeout_s: float,
    quiet: bool,
) -> None:
    """Upload FILES: compress (an existing .zst goes as it is), chunk, send, verify.

    An interrupted upload resumes: sending the same file again sends only the chunks the
    server does not have. With --node, the client follows an upload to the node that
    owns it and fails over to the other nodes when one stops answering.
    """
    from rich.console import Console

    from postoffice.ingest.client import IngestClient
    from postoffice.ingest.client.routing import parse_nodes

    console = Console(stderr=True)
    try:
        addresses = parse_nodes(nodes) if nodes else None
    except PostOfficeError as exc:
        raise click.BadParameter(str(exc), param_hint="--node") from exc
    if addresses is not None and data_base is not None and len(addresses) > 1:
        raise click.BadParameter("not with several --node", param_hint="--data-base")
    where = host if addresses is None else ", ".join(f"{h}:{p}" for h, p in addresses)

    async def main() -> int:
        async with IngestClient(
            host,
            sys_base,
            data_base if data_base is not None else 0,
            ports=ports if data_base is not None else None,
            chunk_size=chunk_size,
            parallel=parallel,
            timeout_s=timeout_s,
            nodes=addresses,
            failover_s=failover_s,
        ) as client:
            with progress_bar(console, disable=quiet) as bar:
                for path in files:
                    advance = track_upload(bar, path.name, _file_size(path))
                    result = await client.send(path, progress=advance)
                    click.echo(
                        f"{path}: published as {result.name} ({result.size} bytes, xxh3-128 "
                        f"{result.digest.hex()}, {result.sent_chunks} chunks sent, "
                        f"{result.skipped_chunks} already there)"
                    )
        return 0

    try:
        sys.exit(asyncio.run(main()))
    except PostOfficeError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot reach the ingest server at {where}: {exc}") from exc


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc}") from exc


def progress_bar(console: Console, *, disable: bool = False) -> Progress:
    """The bar of `ingest send`: the file's bytes, then the compressed bytes beside them.

    A task's `completed` and `total` count the file's own bytes, so the bar, the
    `done/total` figure and the speed are what the user sent; the compressed bytes (what
    crosses the wire, what the server acknowledged) are shown beside, from the task's
    field `compressed`.
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        "{task.fields[compressed]}",
        TransferSpeedColumn(),
        console=console,
        disable=disable,
    )


def track_upload(bar: Progress, description: str, size: int) -> Callable[[int, int], None]:
    """Add a task of `size` file bytes to `bar`; return the `progress(done, total)` callback.

    The client reports compressed bytes acknowledged of the compressed total; the file's
    bytes done are taken in the same proportion (compression is not uniform across a
    file, so mid-upload this is an estimate; at the end it is exact).
    """
    task = bar.add_task(description, total=size, compressed="")

    def advance(done: int, total: int) -> None:
        completed = size * done // total if total else size
        bar.update(task, completed=completed, compressed=compressed_text(done, total))

    return advance


def compressed_text(sent: int, payload: int) -> str:
    """`(compressed 1.2/4.9 kB)`, in the units of rich's DownloadColumn."""
    from rich.filesize import pick_unit_and_suffix

    unit, suffix = pick_unit_and_suffix(
        payload, ["bytes", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"], 1000
    )
    if unit == 1:
        return f"(compressed {sent}/{payload} {suffix})"
    return f"(compressed {sent / unit:,.1f}/{payload / unit:,.1f} {suffix})"
