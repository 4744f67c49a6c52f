"""core.tracing: the `trace` setting, the trace context value, and when setup switches
tracing on (the flag, the OTEL_* environment) or leaves it off."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from postoffice.core import tracing
from postoffice.core.errors import ConfigError
from postoffice.core.otel import Tracing
from postoffice.core.tracecontext import TraceContext
from postoffice.core.tracing import TraceTarget, parse_trace


@pytest.fixture(autouse=True)
def _off_afterwards() -> Iterator[None]:
    yield
    tracing.shutdown()


@pytest.mark.parametrize(
    ("value", "target"),
    [
        (None, None),
        ("", None),
        ("none", None),
        ("otlp://127.0.0.1:4318", TraceTarget(host="127.0.0.1", port=4318)),
        ("otlp://collector.local:1", TraceTarget(host="collector.local", port=1)),
        ("otlp://[::1]:4318", TraceTarget(host="[::1]", port=4318)),
    ],
)
def test_trace_setting_names_an_otlp_target_or_nothing(
    value: str | None, target: TraceTarget | None
) -> None:
    assert parse_trace(value) == target


@pytest.mark.parametrize(
    "value",
    [
        "127.0.0.1:4318",
        "http://127.0.0.1:4318",
        "otlp://127.0.0.1",
        "otlp://127.0.0.1:0",
        "otlp://127.0.0.1:65536",
        "otlp://:4318",
        "otlp://host:4318/v1/traces",
    ],
)
def test_a_bad_trace_setting_is_a_config_error(value: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"^setting 'trace' must be otlp://HOST:PORT, got {value!r}$"
    ):
        parse_trace(value)


def test_the_target_url_is_the_otlp_http_traces_path() -> None:
    assert TraceTarget(host="h", port=4318).url == "http://h:4318/v1/traces"


def test_a_trace_context_refuses_zero_ids_and_wide_flags() -> None:
    with pytest.raises(ConfigError, match=r"^trace id 0 out of range 1..2\*\*128-1$"):
        TraceContext(trace_id=0, span_id=1)
    with pytest.raises(ConfigError, match=r"^span id 0 out of range 1..2\*\*64-1$"):
        TraceContext(trace_id=1, span_id=0)
    with pytest.raises(ConfigError, match=r"^trace flags 256 out of range 0..255$"):
        TraceContext(trace_id=1, span_id=1, flags=256)
    assert TraceContext(trace_id=1, span_id=1, flags=1).sampled
    assert not TraceContext(trace_id=1, span_id=1, flags=0).sampled


def test_setup_without_flag_or_environment_leaves_tracing_off() -> None:
    assert tracing.setup(service="store", trace=None, env={}) is None
    assert tracing.active() is None


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},  # no exporter named
    ],
)
def test_the_environment_can_leave_tracing_off(env: dict[str, str]) -> None:
    assert tracing.setup(service="store", trace=None, env=env) is None


def test_sdk_disabled_wins_over_the_flag() -> None:
    env = {"OTEL_SDK_DISABLED": "true"}
    assert tracing.setup(service="store", trace="otlp://127.0.0.1:4318", env=env) is None


def test_the_flag_switches_tracing_on_with_the_service_named() -> None:
    on = tracing.setup(service="command", trace="otlp://127.0.0.1:4318", env={})
    assert isinstance(on, Tracing)
    assert tracing.active() is on
    assert on.provider.resource.attributes["service.name"] == "postoffice-command"


def test_otel_service_name_overrides_the_default_name() -> None:
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SERVICE_NAME": "edge-store"}
    on = tracing.setup(service="store", trace=None, env=env)
    assert on is not None
    assert on.provider.resource.attributes["service.name"] == "edge-store"


def test_an_unknown_exporter_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^environment OTEL_TRACES_EXPORTER must be one of otlp, console, none, "
        r"got 'zipkin'$",
    ):
        tracing.setup(service="store", trace=None, env={"OTEL_TRACES_EXPORTER": "zipkin"})


def test_otlp_over_grpc_is_refused_by_name() -> None:
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    with pytest.raises(
        ConfigError,
        match=r"^environment OTEL_EXPORTER_OTLP_PROTOCOL must be http/protobuf, got 'grpc'$",
    ):
        tracing.setup(service="store", trace=None, env=env)


def test_shutdown_switches_tracing_off() -> None:
    tracing.setup(service="ingest", trace="otlp://127.0.0.1:4318", env={})
    tracing.shutdown()
    assert tracing.active() is None
    tracing.shutdown()  # a second time: nothing to do
