"""The service table of `postoffice up` and the director's pure parts.

Office layer: the services as command lines, their ready files, exit reasons, restart
delays and the status document. No processes here; `director` starts and watches them.
"""

from __future__ import annotations

import enum
import json
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from postoffice.core.errors import ConfigError
from postoffice.core.runtime import Backoff
from postoffice.office.errors import DirectorError, ServiceFailedError, ServiceStartError

__all__ = [
    "SERVICES",
    "ChildState",
    "ChildStatus",
    "DirectorError",
    "Launch",
    "ServiceFailedError",
    "ServiceSpec",
    "ServiceStartError",
    "describe_address",
    "describe_exit",
    "next_restart_delay",
    "parse_ready",
    "ready_path",
    "run_dir",
    "select_services",
    "serve_argv",
    "status_document",
]


# -- the service table ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Launch:
    """What the director hands a service's argv builder for one start of its child."""

    data_dir: Path
    ready_file: Path
    log_level: str = "INFO"
    log_json: bool = False
    #: Where the services that trace send their spans (`--trace`), or None.
    trace: str | None = None
    #: Where the services already ready listen: {service: {listener: (host, port)}}.
    peers: Mapping[str, Mapping[str, tuple[str, int]]] = field(default_factory=dict)


ArgvBuilder = Callable[[Launch], list[str]]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSpec:
    """One service the director runs: its name, how to build its command line, and the
    services it needs running (started with it, and before it)."""

    name: str
    argv: ArgvBuilder
    needs: tuple[str, ...] = ()
    #: Variables set in its environment over the director's (S3 credentials, say).
    env: Mapping[str, str] = field(default_factory=dict)


def serve_argv(
    group: str, extra: Callable[[Launch], Sequence[str]] | None = None, *, traced: bool = False
) -> ArgvBuilder:
    """An argv builder for `python -m postoffice <group> serve --ready-file ...`.

    The child runs with this interpreter, so the director and its children always share
    one installation. `extra` adds service-specific flags (a socket path under the data
    dir, say); settings not given keep the service's own defaults from its config.py. A
    `traced` service gets the director's `--trace` when it has one.
    """

    def build(launch: Launch) -> list[str]:
        argv = [sys.executable, "-m", "postoffice", group, "serve"]
        argv += ["--ready-file", str(launch.ready_file), "--log-level", launch.log_level]
        if launch.log_json:
            argv.append("--log-json")
        if traced and launch.trace is not None:
            argv += ["--trace", launch.trace]
        if extra is not None:
            argv += extra(launch)
        return argv

    return build


#: Every service `postoffice up` starts, in start order (a service may rely on earlier
#: ones). Each keeps its own defaults (command 6380/6381, ingest 7000-7003 and 7100+,
#: store 7400/7401, bus <data-dir>/run/bus.sock);
#: the environment (`POSTOFFICE_COMMAND_PORT=0`, ...) reaches them unchanged.
SERVICES: Final[tuple[ServiceSpec, ...]] = (
    ServiceSpec(
        name="store",
        argv=serve_argv("store", lambda launch: ["--data-dir", str(launch.data_dir)], traced=True),
    ),
    # The command server keeps its keys in the store: without it, GET and SET would fail.
    ServiceSpec(
        name="command",
        argv=serve_argv("command", lambda launch: _store_flag(launch), traced=True),
        needs=("store",),
    ),
    ServiceSpec(
        name="ingest",
        argv=serve_argv("ingest", lambda launch: ["--data-dir", str(launch.data_dir)], traced=True),
    ),
    # No port: its ready file names its socket, <data-dir>/run/bus.sock, as port 0.
    # --local: one machine and no peers, so no discovery socket or bridge listener.
    ServiceSpec(
        name="bus",
        argv=serve_argv("bus", lambda launch: ["--data-dir", str(launch.data_dir), "--local"]),
    ),
)


def _store_flag(launch: Launch) -> list[str]:
    """The command server's keys live in the store when the store runs too."""
    address = launch.peers.get("store", {}).get("store")
    return [] if address is None else ["--store", f"{address[0]}:{address[1]}"]


def select_services(
    names: Sequence[str], services: Sequence[ServiceSpec] = SERVICES
) -> tuple[ServiceSpec, ...]:
    """The services named in `names` (all of them when empty) and those they need, in
    table order.

    Raises ConfigError naming an unknown service, or a need no service in the table meets.
    """
    by_name = {spec.name: spec for spec in services}
    for name in names:
        if name not in by_name:
            listed = ", ".join(repr(spec.name) for spec in services)
            raise ConfigError(f"unknown service {name!r}, expected one of {listed}")
    if not names:
        return tuple(services)
    wanted: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in wanted:
            continue
        wanted.add(name)
        for need in by_name[name].needs:
            if need not in by_name:
                raise ConfigError(f"service {name!r} needs {need!r}, which is not a service")
            pending.append(need)
    return tuple(spec for spec in services if spec.name in wanted)


# -- pure helpers -----------------------------------------------------------------------


def run_dir(data_dir: Path) -> Path:
    """Where the director keeps ready files, its lock and its status file."""
    return data_dir / "run"


def ready_path(data_dir: Path, name: str) -> Path:
    """The ready file the child for service `name` announces its listeners in."""
    return run_dir(data_dir) / f"{name}.ready.json"


def describe_address(host: str, port: int) -> str:
    """A listener as people read it: `host:port`, or a Unix socket's path alone (port 0
    and an absolute path, as the bus announces its socket)."""
    return host if port == 0 and host.startswith("/") else f"{host}:{port}"


def describe_exit(returncode: int) -> str:
    """Say why a child ended: `exited with code 3` or `killed by SIGKILL`.

    A negative return code is asyncio's way of saying the child died of that signal.
    """
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"killed by {name}"


def next_restart_delay(
    backoff: Backoff, *, uptime_s: float | None, healthy_after_s: float
) -> float:
    """The delay before restarting a child that ran `uptime_s` after it was ready.

    `uptime_s` is None when the child never got ready. A child that stayed up at least
    `healthy_after_s` starts the backoff over; quick crashes make the delay grow.
    """
    if uptime_s is not None and uptime_s >= healthy_after_s:
        backoff.reset()
    return backoff.next_delay()


def parse_ready(text: str, *, pid: int) -> dict[str, tuple[str, int]] | None:
    """The listeners announced in ready-file `text`, or None if another pid wrote it.

    The file is what `core.runtime.announce` writes: {"service", "pid", "listeners":
    {name: [host, port]}}, or what `announce_failure` writes when the child could not
    start: {"service", "pid", "error"}, raised here as ServiceFailedError. Raises
    ServiceStartError if it is of neither shape.
    """
    try:
        body: object = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ServiceStartError(f"ready file is not JSON: {exc}") from exc
    if isinstance(body, dict) and "error" in body:
        error = body["error"]
        if not isinstance(error, str):
            raise ServiceStartError(f"ready file 'error' must be a string, got {error!r}")
        if body.get("pid") != pid:
            return None
        raise ServiceFailedError(error)
    if not isinstance(body, dict) or not isinstance(body.get("listeners"), dict):
        raise ServiceStartError(f"ready file has no 'listeners' object: {text[:200]!r}")
    if body.get("pid") != pid:
        return None
    listeners: dict[str, tuple[str, int]] = {}
    for name, address in body["listeners"].items():
        match address:
            case [str() as host, int() as port] if not isinstance(port, bool):
                listeners[str(name)] = (host, port)
            case _:
                raise ServiceStartError(
                    f"ready file listener {name!r} must be [host, port], got {address!r}"
                )
    return listeners


class ChildState(enum.Enum):
    """Where one supervised child is in its life."""

    STARTING = "starting"  # spawned, ready file not yet written
    READY = "ready"  # listening and announced
    BACKOFF = "backoff"  # exited unexpectedly; waiting to restart
    STOPPING = "stopping"  # sent SIGTERM by the director
    STOPPED = "stopped"  # exited on the director's request


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildStatus:
    """A snapshot of one child: what the status file and the CLI show."""

    name: str
    pid: int | None
    state: ChildState
    restarts: int
    listeners: Mapping[str, tuple[str, int]]
    last_exit: str | None


def status_document(
    *, director_pid: int, data_dir: Path, children: Sequence[ChildStatus]
) -> dict[str, object]:
    """The JSON body of `director.json` for these children."""
    return {
        "pid": director_pid,
        "data_dir": str(data_dir),
        "services": {
            child.name: {
                "pid": child.pid,
                "state": child.state.value,
                "restarts": child.restarts,
                "listeners": {k: [host, port] for k, (host, port) in child.listeners.items()},
                "last_exit": child.last_exit,
            }
            for child in children
        },
    }
