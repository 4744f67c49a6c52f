"""`postoffice office run|report|runs`: run the simulation, show a past run's statistics
again from its event log, list the runs. Office layer (CLI)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from postoffice.core import config as core_config
from postoffice.core.errors import PostOfficeError
from postoffice.core.runtime import run as run_loop
from postoffice.office.control_cli import add_users, status
from postoffice.office.errors import InvariantError
from postoffice.office.events import Cause, Event, RunEnded
from postoffice.office.inprocess import Driver, Outcome
from postoffice.office.live import LiveView
from postoffice.office.report import CsvWriter, print_day, print_end, report_json
from postoffice.office.runcontrol import controlled
from postoffice.office.runlog import RunLog, list_runs, read_events, read_meta
from postoffice.office.simconfig import SHIPPED, load_config, shipped_config
from postoffice.office.tally import DayReport, Tally

if TYPE_CHECKING:
    from postoffice.office.procdriver import ProcessDriver

__all__ = ["office"]

_MAX_SEED = 2**63 - 1
_WIDTH = 150  # tables are this wide when stdout is not a terminal


def _console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=_WIDTH)
    return console


def _data_dir(value: Path | None) -> Path:
    return value if value is not None else core_config.data_dir()


_DATA_DIR = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=(
        "Where all state lives; runs go to <data-dir>/office/runs."
        "  [default: $POSTOFFICE_DATA_DIR or ./var]"
    ),
)


@click.group(name="office")
def office() -> None:
    """The post office simulation: run it, watch it (status), add users, list past runs,
    report one again."""


office.add_command(status)
office.add_command(add_users)


@office.command(name="run")
@click.option(
    "--config",
    "config_path",
    required=True,
    help=f"The INI file; {' or '.join(SHIPPED)} names a shipped one.",
)
@click.option(
    "--seed",
    type=click.IntRange(0, _MAX_SEED),
    default=None,
    help="Seed every draw.  [default: a random seed, printed]",
)
@click.option("--in-process", is_flag=True, help="Run every role in this process.")
@click.option(
    "--users-per-process",
    type=click.IntRange(1, 1_000_000),
    default=1,
    show_default=True,
    help="Users each user process runs (without --in-process).",
)
@click.option(
    "--operators-per-process",
    type=click.IntRange(1, 100_000),
    default=1,
    show_default=True,
    help="Operators each operator process runs (without --in-process).",
)
@click.option(
    "--csv",
    "csv_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write daily.csv and totals.csv there.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of tables.")
@_DATA_DIR
def run_command(
    config_path: str,
    seed: int | None,
    in_process: bool,
    users_per_process: int,
    operators_per_process: int,
    csv_dir: Path | None,
    as_json: bool,
    data_dir: Path | None,
) -> None:
    """Simulate the post office day by day and print each day's statistics.

    Ends with timeout (SIM_DURATION days), explode (more than EXPLODE_THRESHOLD users
    waiting at a day's end), signal (Ctrl-C or SIGTERM: the day closes at once) or error,
    then prints the cause and the final statistics. SIGUSR1 asks the users manager for
    N_NEW_USERS more users; SIGHUP re-reads the config file and takes N_NANO_SECS,
    EXPLODE_THRESHOLD and N_NEW_USERS at once. `postoffice office status|add-users` and
    `postoffice dashboard` talk to the run over <data-dir>/run/office.sock.
    Exit status 0, or 1 after an error ending.

    Without --in-process the ticket issuer, the operators, the users manager and the
    users run as processes of their own (K users, and K operators, to a process),
    talking to this one over a private bus server; any of them dying ends the run with
    cause error, and every process and shared-memory file of the run goes at its end.
    """
    path = Path(config_path)
    if not path.exists() and config_path in SHIPPED:
        path = shipped_config(config_path)
    try:
        config = load_config(path)
    except PostOfficeError as exc:
        raise click.ClickException(str(exc)) from exc
    if not in_process:
        try:
            # The run's processes talk over the bus, which needs its C extension.
            from postoffice.office.procs import check_processes

            check_processes(config, config.nof_users, users_per_process, operators_per_process)
        except (PostOfficeError, ImportError) as exc:
            raise click.ClickException(
                f"{exc}"
                + ("; --in-process runs without it" if isinstance(exc, ImportError) else "")
            ) from exc
    chosen = seed if seed is not None else secrets.randbelow(2**32)
    console = _console()
    meta: dict[str, object] = {
        "seed": chosen,
        "config_path": str(path),
        "config": config.as_ini(),
        "mode": "in-process" if in_process else "multi-process",
    }
    try:
        log = RunLog.create(_data_dir(data_dir), seed=chosen, meta=meta)
    except PostOfficeError as exc:
        raise click.ClickException(str(exc)) from exc
    csv = CsvWriter(csv_dir) if csv_dir is not None else None
    if as_json:
        click.echo(
            json.dumps(
                {
                    "type": "run",
                    "run": log.run_id,
                    "seed": chosen,
                    "config": str(path),
                    "log": str(log.path),
                }
            )
        )
    else:
        console.print(
            f"run {log.run_id}: seed {chosen}, config {path}, events in {log.path}", soft_wrap=True
        )

    view = LiveView(run_id=log.run_id, seed=chosen, tally=False)

    def on_day(events: list[Event], report: DayReport | None) -> None:
        log.append(events)
        if report is None:
            return
        view.add_report(report)
        if csv is not None:
            csv.write(report)
        if as_json:
            click.echo(report_json(report))
        else:
            print_day(console, report)

    driver: Driver | ProcessDriver
    if in_process:
        driver = Driver(config, seed=chosen, on_day=on_day, on_events=view.apply)
    else:
        from postoffice.office.procdriver import ProcessDriver

        driver = ProcessDriver(
            config,
            seed=chosen,
            on_day=on_day,
            users_per_process=users_per_process,
            operators_per_process=operators_per_process,
            on_events=view.apply,
        )

    async def main(stop: asyncio.Event) -> Outcome:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, driver.add_users)
        try:
            async with controlled(
                driver, view, data_dir=_data_dir(data_dir), config_path=path, config=config
            ):
                return await driver.run(stop)
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)

    try:
        outcome = run_loop(main)
    except PostOfficeError as exc:
        outcome = Outcome(
            ended=RunEnded(days=driver.tally.days, cause=Cause.ERROR, detail=str(exc)),
            last=driver.tally.last,
            minutes=0,
            elapsed_s=0.0,
            drift_s=0.0,
        )
    finally:
        if csv is not None:
            csv.close()
    try:
        log.append([outcome.ended])
        log.close()
    except PostOfficeError as exc:
        click.echo(f"warning: {exc}", err=True)
    _show_end(console, as_json, outcome.ended, outcome.last)
    timing = {
        "type": "timing",
        "minutes": outcome.minutes,
        "elapsed_s": round(outcome.elapsed_s, 6),
        "drift_s": round(outcome.drift_s, 6),
        "n_nano_secs": config.n_nano_secs,
    }
    if as_json:
        click.echo(json.dumps(timing))
    elif config.n_nano_secs:
        console.print(
            f"{outcome.minutes} minutes in {outcome.elapsed_s:.3f} s,"
            f" {config.n_nano_secs} ns each: drift {outcome.drift_s * 1000:+.1f} ms"
        )
    else:
        rate = outcome.ended.days / outcome.elapsed_s if outcome.elapsed_s else 0.0
        console.print(f"{outcome.ended.days} days in {outcome.elapsed_s:.3f} s ({rate:.0f} days/s)")
    if outcome.ended.cause is Cause.ERROR:
        sys.exit(1)


def _show_end(console: Console, as_json: bool, ended: RunEnded, last: DayReport | None) -> None:
    if as_json:
        click.echo(report_json(last, ended))
    else:
        print_end(console, ended, last)


@office.command()
@click.argument("run_id", metavar="RUN")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of tables.")
@click.option(
    "--csv",
    "csv_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write daily.csv and totals.csv there.",
)
@_DATA_DIR
def report(run_id: str, as_json: bool, csv_dir: Path | None, data_dir: Path | None) -> None:
    """Print a past run's statistics again, recomputed from its event log."""
    directory = _data_dir(data_dir)
    try:
        meta = read_meta(directory, run_id)
    except PostOfficeError as exc:
        raise click.ClickException(str(exc)) from exc
    console = _console()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "type": "run",
                    "run": run_id,
                    "seed": meta.get("seed"),
                    "config": meta.get("config_path"),
                }
            )
        )
    else:
        console.print(
            f"run {run_id}: seed {meta.get('seed')}, config {meta.get('config_path')}",
            soft_wrap=True,
        )
    tally = Tally()
    csv = CsvWriter(csv_dir) if csv_dir is not None else None
    ended: RunEnded | None = None
    broken = False  # the run broke a rule here when it ran: its RunEnded says so
    try:
        for event in read_events(directory, run_id):
            if isinstance(event, RunEnded):
                ended = event
                continue
            if broken:
                continue
            try:
                day = tally.apply(event)
            except InvariantError:
                broken = True
                continue
            if day is None:
                continue
            if csv is not None:
                csv.write(day)
            if as_json:
                click.echo(report_json(day))
            else:
                print_day(console, day)
    except PostOfficeError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        if csv is not None:
            csv.close()
    if ended is None:
        ended = RunEnded(
            days=tally.days, cause=Cause.ERROR, detail="no end recorded: the run was killed"
        )
    _show_end(console, as_json, ended, tally.last)


@office.command()
@_DATA_DIR
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per run.")
def runs(data_dir: Path | None, as_json: bool) -> None:
    """List the runs under the data directory, oldest first."""
    found = list_runs(_data_dir(data_dir))
    if as_json:
        for info in found:
            click.echo(
                json.dumps(
                    {
                        "run": info.run_id,
                        "seed": info.seed,
                        "config": info.config,
                        "days": info.days,
                        "cause": info.cause,
                        "detail": info.detail,
                    }
                )
            )
        return
    table = Table(title="office runs", title_justify="left")
    for column in ("run", "seed", "config", "days", "ended"):
        table.add_column(column)
    for info in found:
        ending = f"{info.cause} ({info.detail})" if info.cause else info.detail
        table.add_row(
            info.run_id,
            str(info.seed if info.seed is not None else "-"),
            os.path.basename(info.config) or "-",
            str(info.days if info.days is not None else "-"),
            ending,
        )
    _console().print(table)
