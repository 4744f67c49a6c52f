"""Distributed tracing, off by default: the `trace` setting, the trace context a request
carries between services, and the process's one `Tracing` (core layer; OpenTelemetry is
imported only once tracing is switched on)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from postoffice.core.config import setting
from postoffice.core.errors import ConfigError
from postoffice.core.tracecontext import TRACE_CONTEXT_BYTES, TraceContext

if TYPE_CHECKING:
    from postoffice.core.otel import Tracing

# Design
# ------
# A server asks `active()` once, when it is built, and keeps the answer: None when tracing
# is off, so a request's path pays one `is not None` test and nothing else (no import of
# OpenTelemetry, no exporter thread). `setup` switches tracing on for the process from
# the `trace` setting (`--trace otlp://HOST:PORT`) or, when that is unset, from the
# standard OTEL_* environment, whose other variables (endpoint, headers, sampler, batch
# delays) the OpenTelemetry SDK reads itself. Spans go out as OTLP over HTTP/protobuf.

__all__ = [
    "TRACE_CONTEXT_BYTES",
    "TraceContext",
    "TraceTarget",
    "active",
    "install",
    "parse_trace",
    "setup",
    "shutdown",
    "trace_setting",
    "uninstall",
]

_TARGET: Final = re.compile(
    r"^otlp://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$"
)
#: The exporters OTEL_TRACES_EXPORTER may name here; "none" leaves tracing off.
_EXPORTERS: Final = ("otlp", "console", "none")


def trace_setting() -> str | None:
    """The `trace` field every serve command's config declares (one declaration, one flag)."""
    value: str | None = setting(
        None,
        help="Send OpenTelemetry spans as OTLP over HTTP/protobuf to HOST:PORT "
        "(default: off, or as the OTEL_* environment says).",
        metavar="otlp://HOST:PORT",
    )
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceTarget:
    """Where spans go: an OTLP/HTTP collector at `host`:`port`."""

    host: str
    port: int

    @property
    def url(self) -> str:
        """The collector's traces URL."""
        return f"http://{self.host}:{self.port}/v1/traces"


def parse_trace(value: str | None) -> TraceTarget | None:
    """The target a `trace` setting names: None for unset, "" or "none".

    Raises ConfigError for anything but `otlp://HOST:PORT` with a port 1..65535.
    """
    if value is None or value.strip().lower() in ("", "none"):
        return None
    match = _TARGET.match(value.strip())
    port = int(match["port"]) if match else 0
    if match is None or not 0 < port <= 65535:
        raise ConfigError(f"setting 'trace' must be otlp://HOST:PORT, got {value!r}")
    return TraceTarget(host=match["host"], port=port)


_active: Tracing | None = None


def active() -> Tracing | None:
    """The process's tracing, or None when it is off."""
    return _active


def install(tracing: Tracing | None) -> None:
    """Make `tracing` the process's (tests install one with an in-memory exporter)."""
    global _active  # the process's one switch, read when servers are built
    _active = tracing


def uninstall() -> None:
    """Switch tracing off again (servers built before keep what they took)."""
    install(None)


def setup(
    *, service: str, trace: str | None, env: Mapping[str, str] | None = None
) -> Tracing | None:
    """Switch tracing on for this process if `trace` (the setting) or the environment asks.

    `trace` wins; unset, OTEL_TRACES_EXPORTER decides (`otlp`: the SDK's OTLP/HTTP
    exporter, configured by OTEL_EXPORTER_OTLP_*; `console`: spans printed; unset or
    `none`: off). OTEL_SDK_DISABLED=true turns it off whatever else is set. The resource's
    service.name is `postoffice-<service>` unless OTEL_SERVICE_NAME names another. Returns
    the installed Tracing, or None when off. Raises ConfigError for a bad setting, an
    exporter or protocol this build does not speak, or a missing `trace` extra.
    """
    environ = os.environ if env is None else env
    target = parse_trace(trace)
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter = "otlp" if target is not None else _env_exporter(environ)
    if exporter == "none":
        return None
    for var in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = environ.get(var, "").strip()
        if exporter == "otlp" and protocol and protocol != "http/protobuf":
            raise ConfigError(f"environment {var} must be http/protobuf, got {protocol!r}")
    try:
        from postoffice.core import otel  # only once tracing is on
    except ImportError as exc:
        raise ConfigError(
            f"tracing needs the 'trace' extra (pip install 'postoffice[trace]'): {exc}"
        ) from exc
    service_name = environ.get("OTEL_SERVICE_NAME", "").strip() or f"postoffice-{service}"
    tracing = otel.Tracing.exporting(
        service_name=service_name,
        url=None if target is None else target.url,
        console=exporter == "console",
    )
    install(tracing)
    return tracing


def shutdown() -> None:
    """Send the spans still queued and stop the exporter; a no-op when tracing is off."""
    tracing = _active
    if tracing is not None:
        uninstall()
        tracing.shutdown()


def _env_exporter(environ: Mapping[str, str]) -> str:
    value = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "none"
    if value not in _EXPORTERS:
        raise ConfigError(
            f"environment OTEL_TRACES_EXPORTER must be one of {', '.join(_EXPORTERS)}, "
            f"got {value!r}"
        )
    return value
