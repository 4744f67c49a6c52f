"""`postoffice dashboard [--data-dir D] [--web PORT]`: the dashboard in this terminal, or
served to browsers on 127.0.0.1. Office layer (CLI)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from postoffice.core import config as core_config

__all__ = ["dashboard"]


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Watch what runs under this directory.  [default: $POSTOFFICE_DATA_DIR or ./var]",
)
@click.option(
    "--web",
    "web_port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve the dashboard to browsers at http://127.0.0.1:PORT instead.",
)
@click.option(
    "--refresh",
    "refresh_s",
    type=click.FloatRange(0.1, 60),
    default=0.5,
    show_default=True,
    help="Seconds between refreshes.",
)
def dashboard(data_dir: Path | None, web_port: int | None, refresh_s: float) -> None:
    """Watch the simulation (clock, queues, counters, users, daily statistics, its
    ending) and every service of `postoffice up` (up or down, requests/s, latency,
    connections). Keys: q quit, a add N_NEW_USERS users, p pause or resume the clock.
    Works with nothing running too: it shows what is not.
    """
    directory = (data_dir if data_dir is not None else core_config.data_dir()).absolute()
    if web_port is not None:
        from textual_serve.server import Server

        command = shlex.join(
            [
                sys.executable,
                "-m",
                "postoffice",
                "dashboard",
                "--data-dir",
                str(directory),
                "--refresh",
                str(refresh_s),
            ]
        )
        # One dashboard process per browser session, as textual-serve runs them; only
        # this machine may connect.
        Server(command, host="127.0.0.1", port=web_port, title="postoffice dashboard").serve()
        return
    from postoffice.office.dashboard.app import DashboardApp
    from postoffice.office.dashboard.sources import LiveSource

    source = LiveSource(directory)
    try:
        DashboardApp(source, refresh_s=refresh_s).run()
    finally:
        source.close()
