"""Where the dashboard's figures come from: the simulation's control socket, the
director's status document and ready files under <data-dir>/run, and each service's
/metrics. Office layer; `LiveSource` does blocking I/O and is called from a thread."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol, final

from postoffice.core.errors import PostOfficeError
from postoffice.office.controlsocket import ControlClient, control_path
from postoffice.office.director import STATUS_FILE
from postoffice.office.services import SERVICES, ready_path, run_dir

__all__ = [
    "METRICS",
    "DashboardData",
    "DataSource",
    "LiveSource",
    "ServiceMetrics",
    "ServiceRow",
    "parse_metrics",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceMetrics:
    """Which of a service's metrics the dashboard shows, and on which listener."""

    listener: str  # the listener serving /metrics
    requests: str  # a counter of requests served
    connections: str  # a gauge of open client connections
    latency_p50: str | None = None  # gauges in seconds, where the service keeps them
    latency_p99: str | None = None


#: Per service of `postoffice up`: the bus has no HTTP port (its up or down comes from
#: the director and its ready file alone).
METRICS: Final[Mapping[str, ServiceMetrics]] = {
    "command": ServiceMetrics(
        listener="metrics",
        requests="postoffice_command_commands_total",
        connections="postoffice_command_connections_active",
    ),
    "store": ServiceMetrics(
        listener="metrics",
        requests="postoffice_store_requests_total",
        connections="postoffice_store_connections_active",
        latency_p50="postoffice_store_latency_p50_s",
        latency_p99="postoffice_store_latency_p99_s",
    ),
    "ingest": ServiceMetrics(
        listener="telemetry",
        requests="postoffice_ingest_chunks_total",
        connections="postoffice_ingest_connections_active",
    ),
}
_SCRAPE_TIMEOUT_S: Final = 1.0  # a service that takes longer is shown as not answering
_MAX_METRICS_BYTES: Final = 4 * 1024 * 1024
_OPENER: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceRow:
    """One service as the dashboard shows it. `state` is the director's word (`ready`,
    `starting`, `backoff`, ...), `up` (a ready file alone, no director), or `down`."""

    name: str
    state: str
    pid: int | None = None
    address: str = "-"
    requests_per_s: float | None = None
    latency_ms: tuple[float, float] | None = None  # p50, p99
    connections: int | None = None
    note: str = ""

    @property
    def up(self) -> bool:
        """Whether the service is serving."""
        return self.state in ("ready", "up")


@dataclass(frozen=True, slots=True, kw_only=True)
class DashboardData:
    """One refresh: the simulation's snapshot (None when none runs, and why) and the
    services' rows."""

    simulation: Mapping[str, object] | None
    simulation_note: str
    services: tuple[ServiceRow, ...]


class DataSource(Protocol):
    """What the dashboard reads and steers; the calls block (run them in a thread)."""

    def fetch(self) -> DashboardData:
        """Everything shown, now. Never raises for what is not running."""
        ...

    def add_users(self) -> str:
        """Ask for N_NEW_USERS more users; the answer as a line. Raises PostOfficeError."""
        ...

    def pause(self) -> str:
        """Hold the simulated clock. Raises PostOfficeError."""
        ...

    def resume(self) -> str:
        """Let the simulated clock go on. Raises PostOfficeError."""
        ...


def parse_metrics(text: str) -> dict[str, float]:
    """The unlabelled samples of a Prometheus text exposition: `name value` lines
    (comments, labelled samples and lines that do not parse are skipped)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or "{" in line:
            continue
        parts = line.split()
        if len(parts) < 2:
            continue
        with contextlib.suppress(ValueError):
            values[parts[0]] = float(parts[1])
    return values


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


def _read_json(path: Path) -> dict[str, object] | None:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def _listeners(raw: object) -> dict[str, tuple[str, int]]:
    found: dict[str, tuple[str, int]] = {}
    if isinstance(raw, dict):
        for name, address in raw.items():
            match address:
                case [str() as host, int() as port] if not isinstance(port, bool):
                    found[str(name)] = (host, port)
    return found


@final
class LiveSource:
    """The real data source: whatever runs under `data_dir`, read afresh each fetch."""

    def __init__(self, data_dir: Path, *, timeout_s: float = 2.0) -> None:
        self.data_dir = data_dir
        self._client = ControlClient(control_path(data_dir), timeout_s=timeout_s)
        # The app calls fetch and the key actions each in a thread of its own, and the
        # client is one blocking connection: one request at a time, or a thread reads
        # another's reply and the other waits out its timeout.
        self._control = threading.Lock()
        # service -> (monotonic time, requests counter) of the last scrape, for the rate
        self._last: dict[str, tuple[float, float]] = {}

    def fetch(self) -> DashboardData:
        """The snapshot and every service's row; what is not running is said so."""
        simulation: Mapping[str, object] | None = None
        note = ""
        with self._control:
            try:
                simulation = self._client.status()
            except PostOfficeError as exc:
                self._client.close()
                note = str(exc)
        return DashboardData(simulation=simulation, simulation_note=note, services=self._rows())

    def _rows(self) -> tuple[ServiceRow, ...]:
        document = _read_json(run_dir(self.data_dir) / STATUS_FILE)
        director_up = document is not None and _alive(document.get("pid"))
        entries = document.get("services") if document is not None and director_up else None
        rows = []
        for spec in SERVICES:
            name = spec.name
            entry = entries.get(name) if isinstance(entries, dict) else None
            if isinstance(entry, dict):
                state = str(entry.get("state", "down"))
                pid = entry.get("pid")
                listeners = _listeners(entry.get("listeners"))
                note = str(entry.get("last_exit") or "")
            else:
                ready = _read_json(ready_path(self.data_dir, name))
                pid = ready.get("pid") if ready is not None else None
                if ready is not None and "error" not in ready and _alive(pid):
                    state, listeners, note = "up", _listeners(ready.get("listeners")), ""
                else:
                    state, listeners = "down", {}
                    note = "not running" if ready is None else "its process is gone"
                    if ready is not None and isinstance(ready.get("error"), str):
                        note = str(ready["error"])
            rows.append(
                self._row(name, state, pid if isinstance(pid, int) else None, listeners, note)
            )
        # Whatever else the director runs (`up --cluster`: its nats-servers, S3 and ingest
        # nodes), in the director's order, after the services every `up` has.
        known = {spec.name for spec in SERVICES}
        for name, entry in entries.items() if isinstance(entries, dict) else ():
            if name in known or not isinstance(entry, dict):
                continue
            pid = entry.get("pid")
            rows.append(
                self._row(
                    str(name),
                    str(entry.get("state", "down")),
                    pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
                    _listeners(entry.get("listeners")),
                    str(entry.get("last_exit") or ""),
                )
            )
        return tuple(rows)

    def _row(
        self,
        name: str,
        state: str,
        pid: int | None,
        listeners: dict[str, tuple[str, int]],
        note: str,
    ) -> ServiceRow:
        first = next(iter(listeners.items()), None)
        address = "-"
        if first is not None:
            host, port = first[1]
            address = host if port == 0 else f"{host}:{port}"
        # A service named <kind>-<node> (`ingest-a`) is shown with its kind's metrics.
        wanted = METRICS.get(name) or METRICS.get(name.split("-", 1)[0])
        if state not in ("ready", "up") or wanted is None or wanted.listener not in listeners:
            if state not in ("ready", "up"):
                self._last.pop(name, None)
            return ServiceRow(name=name, state=state, pid=pid, address=address, note=note)
        host, port = listeners[wanted.listener]
        try:
            metrics = self._scrape(host, port)
        except OSError as exc:
            return ServiceRow(
                name=name,
                state=state,
                pid=pid,
                address=address,
                note=f"/metrics does not answer: {exc}",
            )
        now = time.monotonic()
        requests = metrics.get(wanted.requests)
        rate = None
        if requests is not None:
            last = self._last.get(name)
            if last is not None and now > last[0] and requests >= last[1]:
                rate = (requests - last[1]) / (now - last[0])
            self._last[name] = (now, requests)
        latency = None
        if wanted.latency_p50 and wanted.latency_p99:
            p50, p99 = metrics.get(wanted.latency_p50), metrics.get(wanted.latency_p99)
            if p50 is not None and p99 is not None:
                latency = (p50 * 1000, p99 * 1000)
        connections = metrics.get(wanted.connections)
        return ServiceRow(
            name=name,
            state=state,
            pid=pid,
            address=address,
            requests_per_s=rate,
            latency_ms=latency,
            connections=None if connections is None else int(connections),
            note=note,
        )

    def _scrape(self, host: str, port: int) -> dict[str, float]:
        # The services listen on this machine; a listener bound to every address is
        # read through the loopback one. Never through a proxy from the environment.
        local = {"127.0.0.1": "127.0.0.1", "0.0.0.0": "127.0.0.1", "localhost": "127.0.0.1"}
        if host not in local:
            raise OSError(f"{host} is not an address of this machine the dashboard reads")
        url = f"http://{local[host]}:{port}/metrics"
        try:
            with _OPENER.open(url, timeout=_SCRAPE_TIMEOUT_S) as response:
                body: bytes = response.read(_MAX_METRICS_BYTES)
        except urllib.error.URLError as exc:
            raise OSError(str(exc.reason)) from exc
        return parse_metrics(body.decode("utf-8", "replace"))

    def add_users(self) -> str:
        """Ask the simulation for N_NEW_USERS more users."""
        with self._control:
            return self._client.add_users().message

    def pause(self) -> str:
        """Hold the simulated clock."""
        with self._control:
            return self._client.pause().message

    def resume(self) -> str:
        """Let the simulated clock go on."""
        with self._control:
            return self._client.resume().message

    def close(self) -> None:
        """Close the control connection."""
        with self._control:
            self._client.close()

    def __repr__(self) -> str:
        return f"<LiveSource {self.data_dir}>"
