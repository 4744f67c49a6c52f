"""`postoffice up`: parse flags, run the director, print where every service listens."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from postoffice.core import config as core_config
from postoffice.core import logs
from postoffice.core.errors import ConfigError, PostOfficeError
from postoffice.core.logs import kv
from postoffice.core.runtime import run
from postoffice.core.tracing import parse_trace
from postoffice.office.director import DEFAULT_STOP_TIMEOUT_S, STATUS_FILE, Director
from postoffice.office.natscluster import (
    BLOCK_PORTS,
    DEFAULT_BUCKET,
    DEFAULT_CLUSTER_BASE,
    INGEST_NODES,
    NATS_NODES,
    ClusterPlan,
    cluster_ports,
    cluster_services,
    find_moto_server,
    find_nats_server,
    send_line,
)
from postoffice.office.services import (
    SERVICES,
    ChildStatus,
    ServiceSpec,
    describe_address,
    run_dir,
    select_services,
)

if TYPE_CHECKING:
    from rich.table import Table

log = logging.getLogger(__name__)

__all__ = ["cluster_lines", "restart_line", "services_table", "up"]


def _cluster_plan(base: int, s3_url: str | None, bucket: str | None) -> ClusterPlan:
    """The demo cluster `up --cluster` runs. Raises ConfigError for a bad port base, a
    half-given store, or a missing nats-server or moto_server (saying how to get one)."""
    if (s3_url is None) != (bucket is None) and s3_url is not None:
        raise ConfigError("--s3 needs --bucket NAME too")
    ports = cluster_ports(base)
    nats = find_nats_server()
    if s3_url is not None:
        assert bucket is not None
        return ClusterPlan(ports=ports, nats_server=nats, bucket=bucket, s3_url=s3_url)
    moto = find_moto_server()
    return ClusterPlan(
        ports=ports, nats_server=nats, bucket=bucket or DEFAULT_BUCKET, moto_server=moto
    )


def cluster_lines(statuses: Sequence[ChildStatus]) -> str:
    """What `up --cluster` says once ready: the NATS URLs, the S3 store, and how to send."""
    by_name = {status.name: status for status in statuses}
    nats = ",".join(
        f"nats://{describe_address(*by_name[n].listeners['client'])}"
        for n in NATS_NODES
        if n in by_name and "client" in by_name[n].listeners
    )
    health = [
        by_name[n].listeners["health"]
        for n in INGEST_NODES
        if n in by_name and "health" in by_name[n].listeners
    ]
    lines = [f"cluster: NATS {nats}"]
    if "s3" in by_name and "s3" in by_name["s3"].listeners:
        lines.append(f"cluster: S3 http://{describe_address(*by_name['s3'].listeners['s3'])}")
    lines.append(f"cluster: {send_line(health)}")
    return "\n".join(lines)


def services_table(statuses: Sequence[ChildStatus]) -> Table:
    """A rich table with one row per listener: service, pid, listener name, address."""
    from rich.table import Table

    table = Table(title="postoffice up", title_justify="left")
    for column in ("service", "pid", "listener", "address"):
        table.add_column(column)
    for status in statuses:
        pid = "-" if status.pid is None else str(status.pid)
        listeners = list(status.listeners.items()) or [("-", ("-", 0))]
        for index, (name, (host, port)) in enumerate(listeners):
            first = index == 0
            address = "-" if name == "-" else describe_address(host, port)
            table.add_row(status.name if first else "", pid if first else "", name, address)
    return table


def restart_line(status: ChildStatus) -> str:
    """One line announcing a restarted service, why it last ended, its new pid and addresses.

    The reason stands after a colon, not inside a sentence: it is `describe_exit`'s
    phrase (`killed by SIGKILL`) or, after a failed relaunch, that failure's message.
    """
    addresses = ", ".join(
        f"{name} {describe_address(host, port)}" for name, (host, port) in status.listeners.items()
    )
    reason = status.last_exit or "unknown"
    return (
        f"{status.name} restarted (restart {status.restarts}; last exit: {reason}):"
        f" pid {status.pid}, {addresses or 'no listeners'}"
    )


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where all state lives.  [default: $POSTOFFICE_DATA_DIR or ./var]",
)
@click.option(
    "--only",
    multiple=True,
    type=click.Choice([spec.name for spec in SERVICES]),
    help=(
        "Start only this service, and those it needs (command needs store); repeat for"
        " several.  [default: all]"
    ),
)
@click.option(
    "--cluster",
    is_flag=True,
    help="Also run a demo ingest cluster on this machine: three nats-servers with JetStream,"
    " moto_server as S3 (or --s3), and two ingest nodes in cluster mode. --only limits the"
    " other services, never these.",
)
@click.option(
    "--cluster-base",
    type=click.IntRange(0, 65535),
    default=DEFAULT_CLUSTER_BASE,
    show_default=True,
    help=f"With --cluster: the first of its {BLOCK_PORTS} loopback ports (0: free ones).",
)
@click.option(
    "--s3",
    "s3_url",
    default=None,
    metavar="URL",
    help="With --cluster: a real S3-compatible store in place of moto_server (needs"
    " --bucket; credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY).",
)
@click.option(
    "--bucket",
    default=None,
    metavar="NAME",
    help=f"With --cluster: the S3 bucket.  [default: {DEFAULT_BUCKET}, made in moto_server]",
)
@click.option("--log-level", default="INFO", show_default=True, help="DEBUG, INFO, WARNING...")
@click.option("--log-json", is_flag=True, help="Log one JSON object per line (children too).")
@click.option(
    "--trace",
    default=None,
    metavar="otlp://HOST:PORT",
    help="Pass --trace to the command, store and ingest servers: their OpenTelemetry spans "
    "go to that OTLP/HTTP collector.  [default: off]",
)
def up(
    data_dir: Path | None,
    only: tuple[str, ...],
    cluster: bool,
    cluster_base: int,
    s3_url: str | None,
    bucket: str | None,
    log_level: str,
    log_json: bool,
    trace: str | None,
) -> None:
    """Start every service as a supervised child process and print where each listens.

    A child that exits is restarted after a growing delay. Ctrl-C or SIGTERM stops them
    all (SIGKILL after 10 s) and exits 0; SIGHUP is passed on to each child, which reads
    its settings again. Children log to stderr; the table of services
    goes to stdout, and `<data-dir>/run/director.json` holds the same as JSON.
    """
    cluster_specs: tuple[ServiceSpec, ...] = ()
    try:
        logs.setup(level=log_level, json=log_json, service="director")
        services = select_services(only)
        parse_trace(trace)  # a bad one fails here, not in every child
        if cluster:
            cluster_specs = cluster_services(_cluster_plan(cluster_base, s3_url, bucket))
        elif s3_url is not None or bucket is not None:
            raise ConfigError("--s3 and --bucket go with --cluster")
    except PostOfficeError as exc:
        raise click.ClickException(str(exc)) from exc
    for added in (spec for spec in services if only and spec.name not in only):
        needers = [spec.name for spec in services if added.name in spec.needs]
        log.info(
            "starting a needed service too %s", kv(service=added.name, needed_by=",".join(needers))
        )
    services += cluster_specs  # never limited by --only
    directory = data_dir if data_dir is not None else core_config.data_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(f"cannot create data dir {directory}: {exc}") from exc

    from rich.console import Console

    console = Console()

    def started(statuses: Sequence[ChildStatus]) -> None:
        console.print(services_table(statuses))
        if cluster:
            console.print(cluster_lines(statuses), highlight=False, soft_wrap=True)
        console.print(
            f"status: {run_dir(directory.absolute()) / STATUS_FILE}; Ctrl-C stops all,"
            f" last started first (each gets SIGKILL after {DEFAULT_STOP_TIMEOUT_S:g} s)",
            highlight=False,
        )

    def restarted(status: ChildStatus) -> None:
        console.print(restart_line(status), highlight=False, soft_wrap=True)

    director = Director(
        services,
        data_dir=directory,
        log_level=log_level,
        log_json=log_json,
        trace=trace,
        on_started=started,
        on_restarted=restarted,
    )
    try:
        run(director.run, on_hangup=director.hangup)
    except PostOfficeError as exc:
        raise click.ClickException(str(exc)) from exc
