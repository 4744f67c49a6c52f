"""The one `postoffice` command: a click group per service, plus `up` and `sysinfo`."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, MutableMapping

import click

from postoffice import __version__


class _LazyCommands(MutableMapping[str, click.Command]):
    """The subcommands by name, each group's module imported the first time it is looked
    up: `postoffice command serve` (every server process the office, `up` and --workers
    start) pays for the command server's imports, not the dashboard's, the bus's or
    ingest's (about half a second of CPU at each start)."""

    def __init__(self, loaders: dict[str, Callable[[], click.Command]]) -> None:
        self._loaders = dict(loaders)
        self._loaded: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        if name not in self._loaded:
            loader = self._loaders[name]  # KeyError: no such command, as a dict says
            self._loaded[name] = loader()
        return self._loaded[name]

    def __setitem__(self, name: str, cmd: click.Command) -> None:
        self._loaders.pop(name, None)
        self._loaded[name] = cmd

    def __delitem__(self, name: str) -> None:
        found = self._loaders.pop(name, None) is not None
        if self._loaded.pop(name, None) is None and not found:
            raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter({**self._loaders, **self._loaded})

    def __len__(self) -> int:
        return len(self._loaders.keys() | self._loaded.keys())

    def __contains__(self, name: object) -> bool:
        return name in self._loaders or name in self._loaded


def _from(module: str, attr: str) -> Callable[[], click.Command]:
    def load() -> click.Command:
        cmd = getattr(importlib.import_module(module), attr)
        assert isinstance(cmd, click.Command), (module, attr)
        return cmd

    return load


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


def _lazy_services() -> None:
    defined_here = dict(main.commands)  # sysinfo
    main.commands = _LazyCommands(
        {
            "bus": _bus_group,
            "command": _from("postoffice.command.cli", "command"),
            "ingest": _from("postoffice.ingest.cli", "ingest"),
            "store": _from("postoffice.store.cli", "store"),
            "up": _from("postoffice.office.cli", "up"),
            "office": _from("postoffice.office.sim_cli", "office"),
            "dashboard": _from("postoffice.office.dashboard.cli", "dashboard"),
        }
    )
    main.commands.update(defined_here)


_lazy_services()
