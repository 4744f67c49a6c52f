"""The store server's HTTP port: /metrics, /healthz, /readyz and the admin API (/stats,
/clients, /config); docs/protocols/http.md.

Store server layer; it sees the server through the AdminHost Protocol.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final, Protocol

from prometheus_client.registry import Collector

from postoffice.core.admin import admin_endpoints, changed_settings, connection_entry, settings_of
from postoffice.core.connections import ConnectionManager
from postoffice.core.http import health_routes, metrics_route
from postoffice.core.httpapi import Endpoint, Response, Route, json_response
from postoffice.store.config import StoreConfig

log = logging.getLogger(__name__)

#: The settings PUT /config changes while the store runs: the limits the connection
#: manager and the SCAN handler read at each use. The rest (ports, paths, durability,
#: the request size every open connection's decoder was built with) need a restart.
LIVE_SETTINGS: Final = (
    "max_connections",
    "idle_timeout_s",
    "request_timeout_s",
    "max_partial_bytes",
    "output_hard_limit_bytes",
    "output_soft_limit_bytes",
    "output_soft_limit_s",
    "max_scan_page_bytes",
)


class AdminHost(Protocol):
    """What the HTTP port needs of the store server (store/server.py)."""

    config: StoreConfig

    @property
    def manager(self) -> ConnectionManager: ...

    @property
    def registry(self) -> Collector: ...

    def snapshot(self) -> dict[str, int | float]: ...


def apply_settings(server: AdminHost, settings: dict[str, str]) -> Response:
    """PUT /config: `settings` checked as the config checks them, then applied at once."""
    new = changed_settings(server.config, settings, LIVE_SETTINGS)
    if isinstance(new, Response):
        return new
    server.manager.limits = new.connection_limits()
    server.config = new
    log.info("config changed %s", " ".join(f"{k}={v}" for k, v in settings.items()))
    return json_response(settings_of(new))


def http_routes(server: AdminHost, ready: Callable[[], bool]) -> dict[str, Route | Endpoint]:
    """Every path of the store's HTTP port. The store has no password: the admin paths
    are as open as the store port itself."""
    manager = server.manager
    return {
        "/metrics": metrics_route(server.registry),
        **health_routes(ready),
        **admin_endpoints(
            stats=server.snapshot,
            clients=lambda: [connection_entry(c, manager.clock()) for c in manager],
            config=lambda: settings_of(server.config),
            put_config=lambda settings: apply_settings(server, settings),
        ),
    }


__all__ = ["LIVE_SETTINGS", "AdminHost", "apply_settings", "http_routes"]
