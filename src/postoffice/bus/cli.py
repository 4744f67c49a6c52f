"""`postoffice bus ...`: run the bus server, list its channels, publish, subscribe and
measure."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import click

from postoffice.bus.client import Client
from postoffice.bus.config import BusConfig
from postoffice.bus.errors import BusConnectionError, BusError
from postoffice.bus.wire import (
    CHANNEL_CHECKSUM,
    CHANNEL_FIXED_SIZE,
    CHANNEL_MUX,
    ChannelInfo,
    ChannelStatsRecord,
)
from postoffice.core.launch import config_options, serve_options, serve_service

#: A refusal of the server (a mismatch, an unknown channel, a limit).
EXIT_REFUSED: Final = 1
#: The server cannot be reached, or broke the connection.
EXIT_UNAVAILABLE: Final = 3
#: How long `pub --reliable` waits for a slot before it gives up.
_RELIABLE_WAIT_S: Final = 60.0


@click.group()
def bus() -> None:
    """The bus: shared-memory publish/subscribe channels, set up by a server on a Unix
    socket (docs/protocols/bus.md)."""


@bus.command()
@config_options(BusConfig)
@click.option(
    "--peer",
    "peers",
    multiple=True,
    metavar="HOST:PORT",
    help="Another server's discovery address (repeat for each).  [default: none]",
)
@click.option(
    "--plugin",
    "plugins",
    multiple=True,
    metavar="MODULE",
    help="A Python module to load as a plugin (repeat for each).  [default: none]",
)
@serve_options("bus")
def serve(
    config_path: str | None,
    ready_file: str | None,
    log_level: str,
    log_json: bool,
    peers: tuple[str, ...],
    plugins: tuple[str, ...],
    **flags: object,
) -> None:
    """Run the bus server until SIGINT or SIGTERM (then remove every file and exit 0).

    Settings come from defaults < --config file < POSTOFFICE_BUS_* environment < flags.
    The ready file names the socket as the listener `bus` (port 0), and unless --local
    the discovery socket (`discovery`) and the bridge listener (`bridge`).
    """
    # Repeated flags not given fall through to the environment and the file.
    flags["peers"] = peers or None
    flags["plugins"] = plugins or None
    from postoffice.bus.server import BusServer
    from postoffice.core.config import DATA_DIR_ENV
    from postoffice.core.runtime import serve_until_stopped

    async def start(config: BusConfig, stop: asyncio.Event, ready: str | None) -> None:
        await serve_until_stopped(BusServer(config), stop, service="bus", ready_file=ready)

    serve_service(
        section="bus",
        config_cls=BusConfig,
        flags=flags,
        config_path=config_path,
        ready_file=ready_file,
        log_level=log_level,
        log_json=log_json,
        serve=start,
        shared_env={"data_dir": DATA_DIR_ENV},
    )


_socket = click.option(
    "--socket",
    "socket_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The server's socket.  [default: <data-dir>/run/bus.sock]",
)


class _Refused(click.ClickException):
    exit_code = EXIT_REFUSED


class _Unavailable(click.ClickException):
    exit_code = EXIT_UNAVAILABLE


_EPILOG: Final = (
    f"Exit status: 0 done; {EXIT_REFUSED} the server refused the request; 2 bad usage; "
    f"{EXIT_UNAVAILABLE} the server cannot be reached or broke the connection."
)


@contextmanager
def _client(socket_path: Path | None, name: str) -> Iterator[Client]:
    """A connected client; bus errors inside become click errors with their status."""
    try:
        with Client(socket_path, name=name) as client:
            yield client
    except BusConnectionError as exc:
        raise _Unavailable(str(exc)) from exc
    except BusError as exc:
        raise _Refused(str(exc)) from exc


@bus.command(epilog=_EPILOG)
@_socket
@click.option("--json", "as_json", is_flag=True, help="One JSON object per channel and line.")
def ls(socket_path: Path | None, as_json: bool) -> None:
    """List the channels (muxes, and each mux's virtual channels after it): name, type,
    slots, slot size, publishers and subscribers."""
    with _client(socket_path, "postoffice bus ls") as client:
        infos = client.channel_info()
    if as_json:
        for info in infos:
            click.echo(json.dumps(_info_dict(info)))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="bus channels", title_justify="left")
    for column in ("id", "name", "type", "slots", "slot size", "flags", "pubs", "subs"):
        table.add_column(column)
    for info in infos:
        flags = ",".join(
            word
            for bit, word in (
                (CHANNEL_FIXED_SIZE, "fixed"),
                (CHANNEL_CHECKSUM, "checksum"),
                (CHANNEL_MUX, "mux"),
            )
            if info.flags & bit
        )
        if info.mux:
            flags = f"vchan of {info.mux}"
        table.add_row(
            str(info.channel_id), info.name, info.type or "-", str(info.num_slots),
            str(info.slot_size), flags or "-",
            f"{info.publishers} ({info.reliable_publishers} reliable)",
            f"{info.subscribers} ({info.reliable_subscribers} reliable)",
        )  # fmt: skip
    Console(width=120).print(table)


def _info_dict(record: ChannelInfo | ChannelStatsRecord) -> dict[str, object]:
    return dataclasses.asdict(record)


@bus.command(epilog=_EPILOG)
@click.argument("channel", required=False)
@_socket
def stats(channel: str | None, socket_path: Path | None) -> None:
    """Print each channel's statistics (or CHANNEL's) as one JSON object per line."""
    with _client(socket_path, "postoffice bus stats") as client:
        records = client.channel_stats(channel)
    for record in records:
        click.echo(json.dumps(_info_dict(record)))


@bus.command(epilog=_EPILOG)
@click.argument("channel")
@_socket
@click.option("--reliable", is_flag=True, help="Wait for reliable subscribers to read.")
@click.option("--slot-size", type=int, default=0, help="Slot size (0: the channel's or default).")
@click.option("--num-slots", type=int, default=0, help="Slots (0: the channel's or default).")
@click.option("--type", "type_", default="", help="The channel's type.")
def pub(
    channel: str,
    socket_path: Path | None,
    reliable: bool,
    slot_size: int,
    num_slots: int,
    type_: str,
) -> None:
    """Publish each line of stdin (without its newline) as one message on CHANNEL.

    An empty line is skipped: a message has at least one byte. A reliable publisher
    waits up to 60 s for a slot when every slot is still unread.
    """
    with _client(socket_path, "postoffice bus pub") as client:
        publisher = client.create_publisher(
            channel, reliable=reliable, slot_size=slot_size, num_slots=num_slots, type=type_
        )
        for raw in sys.stdin.buffer:
            line = raw.rstrip(b"\n")
            if not line:
                continue
            while publisher.publish_bytes(line) is None:
                if not publisher.wait(_RELIABLE_WAIT_S):
                    raise _Refused(f"no free slot on {channel!r} in {_RELIABLE_WAIT_S:g} s")


@bus.command(epilog=_EPILOG)
@click.argument("channel")
@_socket
@click.option("--reliable", is_flag=True, help="Subscribe reliably (publishers wait for us).")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after N messages.")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0),
    default=None,
    help="Stop when no message came for this many seconds.  [default: never]",
)
@click.option("--type", "type_", default="", help="Only a channel of this type.")
@click.option(
    "--newest", is_flag=True, help="Start at the newest message, not the oldest still there."
)
def sub(
    channel: str,
    socket_path: Path | None,
    reliable: bool,
    count: int | None,
    timeout_s: float | None,
    type_: str,
    newest: bool,
) -> None:
    """Print each message of CHANNEL on its own line (creating the channel if need be).

    The first message is the oldest the channel still holds (with --newest, its newest:
    the current state of /bus/directory or /bus/stats), then each one as it comes.
    """
    out = sys.stdout.buffer
    with _client(socket_path, "postoffice bus sub") as client:
        subscriber = client.create_subscriber(channel, reliable=reliable, type=type_)
        seen = 0
        while count is None or seen < count:
            message = subscriber.read(newest=newest and seen == 0)
            if message is None:
                if not subscriber.wait(timeout_s):
                    break
                continue
            with message:
                out.write(bytes(message.data) + b"\n")
            out.flush()
            seen += 1


@bus.command(epilog=_EPILOG)
@_socket
@click.option(
    "--size",
    type=click.IntRange(min=20, max=1 << 30),
    default=1024,
    show_default=True,
    help="Bytes per message (at least 20: the header each message carries).",
)
@click.option(
    "--count",
    type=click.IntRange(min=1, max=10_000_000),
    default=10_000,
    show_default=True,
    help="Messages in each phase (latency, then throughput).",
)
@click.option(
    "--slots",
    "num_slots",
    type=click.IntRange(min=1, max=65536),
    default=64,
    show_default=True,
    help="Slots of the channel the run makes.",
)
@click.option("--reliable", is_flag=True, help="A reliable publisher and subscriber.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, no table.")
def bench(
    socket_path: Path | None,
    size: int,
    count: int,
    num_slots: int,
    reliable: bool,
    as_json: bool,
) -> None:
    """Measure the bus of the running server: a new channel, this process publishing,
    a child process subscribing. First COUNT messages one at a time (one-way latency,
    publish to read: median and p99), then COUNT back to back (messages/s and GB/s until
    the last one was read; an unreliable subscriber that falls behind counts drops).
    The channel goes when the run ends."""
    from postoffice.bus.benchmark import run

    try:
        result = run(socket_path, size=size, count=count, reliable=reliable, num_slots=num_slots)
    except BusConnectionError as exc:
        raise _Unavailable(str(exc)) from exc
    except BusError as exc:
        raise _Refused(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(result)))
        return
    from rich.console import Console
    from rich.table import Table

    mode = "reliable" if result.reliable else "unreliable"
    table = Table(
        title=f"bus bench: {result.count} x {result.size} bytes, {mode}, {result.num_slots} slots",
        title_justify="left",
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("one-way latency, median", f"{result.latency_median_us:.1f} µs")
    table.add_row("one-way latency, p99", f"{result.latency_p99_us:.1f} µs")
    table.add_row("one-way latency, min .. max",
                  f"{result.latency_min_us:.1f} .. {result.latency_max_us:.1f} µs")  # fmt: skip
    table.add_row("messages/s", f"{result.messages_per_s:,.0f}")
    table.add_row("GB/s", f"{result.gb_per_s:.3f}")
    table.add_row("received (drops)", f"{result.received} ({result.drops})")
    Console(width=100).print(table)
