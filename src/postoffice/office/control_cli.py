"""`postoffice office status|add-users`: ask the simulation running under the data
directory, over its control socket, for its live state or for more users. Office layer
(CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from postoffice.core import config as core_config
from postoffice.core.errors import PostOfficeError
from postoffice.office.control import MAX_ADD_USERS
from postoffice.office.controlsocket import ControlClient, control_path

__all__ = ["add_users", "status"]

_DATA_DIR = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The data directory of the run to ask.  [default: $POSTOFFICE_DATA_DIR or ./var]",
)
_TIMEOUT = click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(0.1, 600),
    default=5.0,
    show_default=True,
    help="Seconds to wait for the simulation's answer.",
)


def _client(data_dir: Path | None, timeout_s: float) -> ControlClient:
    directory = data_dir if data_dir is not None else core_config.data_dir()
    return ControlClient(control_path(directory), timeout_s=timeout_s)


def _text(value: object) -> str:
    return "-" if value is None else str(value)


def print_status(console: Console, snap: dict[str, object]) -> None:
    """The live state as people read it: the clock line, users, queues, counters."""
    state = "paused" if snap.get("paused") else ("open" if snap.get("open") else "closed")
    console.print(
        f"run {_text(snap.get('run'))} (seed {_text(snap.get('seed'))}):"
        f" day {snap.get('day')}, {snap.get('clock')}, {state}",
        soft_wrap=True,
    )
    users = snap.get("users")
    if isinstance(users, dict):
        console.print(
            f"users: {users.get('total')} in all, {users.get('present')} in the office,"
            f" {users.get('waiting')} waiting, {users.get('being_served')} being served,"
            f" {users.get('served_today')} served today"
        )
    services = snap.get("services")
    if isinstance(services, list):
        table = Table(title="services", title_justify="left")
        for column in ("service", "queue", "counters"):
            table.add_column(column, justify="left" if column == "service" else "right")
        for row in services:
            if isinstance(row, dict):
                table.add_row(
                    _text(row.get("service")), _text(row.get("queue")), _text(row.get("counters"))
                )
        console.print(table)
    counters = snap.get("counters")
    if isinstance(counters, list):
        table = Table(title="counters", title_justify="left")
        for column in ("counter", "service", "operator", "serving"):
            table.add_column(column)
        for row in counters:
            if isinstance(row, dict):
                ticket = row.get("ticket")
                table.add_row(
                    _text(row.get("counter")),
                    _text(row.get("service")),
                    _text(row.get("operator")),
                    "-" if ticket is None else f"ticket {ticket}",
                )
        console.print(table)
    on_break = snap.get("on_break")
    if isinstance(on_break, list) and on_break:
        console.print("on a break: operators " + ", ".join(str(op) for op in on_break))
    days = snap.get("days")
    if isinstance(days, list) and days and isinstance(days[-1], dict):
        last = days[-1]
        daily = last.get("daily")
        if isinstance(daily, dict):
            console.print(
                f"day {last.get('day')}: {daily.get('users_served')} users served,"
                f" {daily.get('provided')} services provided, {daily.get('not_provided')}"
                f" not provided, {last.get('waiting_users')} users left waiting"
            )
    ended = snap.get("ended")
    if isinstance(ended, dict):
        console.print(
            f"ended: {ended.get('cause')} after {ended.get('days')} days ({ended.get('detail')})"
        )


@click.command()
@_DATA_DIR
@_TIMEOUT
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as one JSON object.")
def status(data_dir: Path | None, timeout_s: float, as_json: bool) -> None:
    """Show the running simulation now: clock, queues, counters, users, the last day."""
    try:
        with _client(data_dir, timeout_s) as client:
            snap = client.status()
    except PostOfficeError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(snap, separators=(",", ":")))
    else:
        print_status(Console(highlight=False), snap)


@click.command(name="add-users")
@click.argument("count", type=click.IntRange(1, MAX_ADD_USERS), required=False)
@_DATA_DIR
@_TIMEOUT
def add_users(count: int | None, data_dir: Path | None, timeout_s: float) -> None:
    """Add COUNT users to the running simulation from its next day on (default: its
    N_NEW_USERS)."""
    try:
        with _client(data_dir, timeout_s) as client:
            ok = client.add_users(count)
    except PostOfficeError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(ok.message)
