"""The one `postoffice` command: a click group per service, plus `up` and `sysinfo`."""

from __future__ import annotations

import click

from postoffice import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="postoffice")
def main() -> None:
    """Post Office: four network services on one shared core.

    command (a Redis-compatible command server), ingest (chunked, compressed file
    uploads), store (an append-only log with an LMDB index) and bus (shared-memory
    publish/subscribe). Run them all, supervised, with `postoffice up`; run one with
    `postoffice <service> serve`.
    Every command explains itself with --help.
    """


@main.command()
@click.option("--data-dir", type=click.Path(), default=None, help="Directory to report on.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def sysinfo(data_dir: str | None, as_json: bool) -> None:
    """Print a snapshot of this machine: CPUs, caches, RAM, huge pages, disk and limits."""
    from postoffice.core import sysinfo as _sysinfo

    _sysinfo.print_snapshot(data_dir=data_dir, as_json=as_json)


def _bus_group() -> click.Command:
    """`postoffice bus`, or without the bus's C extension a command that says why."""
    try:
        from postoffice.bus.cli import bus
    except ImportError as exc:  # BusUnavailableError: the extension was not built
        reason = str(exc)

        @click.command(
            name="bus", context_settings={"ignore_unknown_options": True, "allow_extra_args": True}
        )
        @click.argument("args", nargs=-1, type=click.UNPROCESSED)
        def unavailable(args: tuple[str, ...]) -> None:
            """The bus (unavailable: its C extension is not built)."""
            raise click.ClickException(reason)

        return unavailable
    return bus


def _add_services() -> None:
    from postoffice.command.cli import command
    from postoffice.ingest.cli import ingest
    from postoffice.office.cli import up
    from postoffice.office.dashboard.cli import dashboard
    from postoffice.office.sim_cli import office
    from postoffice.store.cli import store

    main.add_command(_bus_group())
    main.add_command(command)
    main.add_command(ingest)
    main.add_command(store)
    main.add_command(up)
    main.add_command(office)
    main.add_command(dashboard)


_add_services()
