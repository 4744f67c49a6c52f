"""office.services, the director's pure parts: exit reasons, argv builders, backoff, files."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click
import pytest
from rich.console import Console

from postoffice.cli import main as cli_main
from postoffice.core.errors import ConfigError
from postoffice.core.runtime import Backoff
from postoffice.office.cli import restart_line, services_table
from postoffice.office.services import (
    SERVICES,
    ChildState,
    ChildStatus,
    Launch,
    ServiceFailedError,
    ServiceSpec,
    ServiceStartError,
    describe_exit,
    next_restart_delay,
    parse_ready,
    ready_path,
    select_services,
    serve_argv,
    status_document,
)

_DATA = Path("/srv/po")
_READY = _DATA / "run" / "command.ready.json"


@pytest.mark.parametrize(
    ("returncode", "reason"),
    [
        (0, "exited with code 0"),
        (1, "exited with code 1"),
        (255, "exited with code 255"),
        (-9, "killed by SIGKILL"),
        (-15, "killed by SIGTERM"),
        (-11, "killed by SIGSEGV"),
        (-200, "killed by signal 200"),
    ],
)
def test_describe_exit(returncode: int, reason: str) -> None:
    assert describe_exit(returncode) == reason


class TestArgv:
    def test_command_runs_this_interpreter_with_its_ready_file(self) -> None:
        (spec,) = (s for s in SERVICES if s.name == "command")
        argv = spec.argv(Launch(data_dir=_DATA, ready_file=_READY))
        assert argv == [
            sys.executable,
            *("-m", "postoffice", "command", "serve"),
            *("--ready-file", str(_READY), "--log-level", "INFO"),
        ]

    def test_command_is_pointed_at_a_running_store(self) -> None:
        (spec,) = (s for s in SERVICES if s.name == "command")
        peers = {"store": {"store": ("127.0.0.1", 7411), "metrics": ("127.0.0.1", 7412)}}
        argv = spec.argv(Launch(data_dir=_DATA, ready_file=_READY, peers=peers))
        assert argv[-2:] == ["--store", "127.0.0.1:7411"]

    def test_the_store_starts_before_the_command_server(self) -> None:
        names = [spec.name for spec in SERVICES]
        assert names.index("store") < names.index("command")

    def test_log_settings_are_passed_on(self) -> None:
        build = serve_argv("command")
        argv = build(Launch(data_dir=_DATA, ready_file=_READY, log_level="DEBUG", log_json=True))
        assert argv[-3:] == ["--log-level", "DEBUG", "--log-json"]

    def test_extra_flags_come_last(self) -> None:
        build = serve_argv("bus", lambda launch: ["--socket", str(launch.data_dir / "bus.sock")])
        argv = build(Launch(data_dir=_DATA, ready_file=_READY))
        assert argv[3:5] == ["bus", "serve"]
        assert argv[-2:] == ["--socket", "/srv/po/bus.sock"]

    @pytest.mark.parametrize("spec", SERVICES, ids=lambda spec: spec.name)
    def test_every_argv_names_a_real_serve_command_and_its_flags(self, spec: ServiceSpec) -> None:
        """The table and the CLI must not drift apart: each flag used must exist."""
        peers = {"store": {"store": ("127.0.0.1", 7400)}}
        argv = spec.argv(Launch(data_dir=_DATA, ready_file=_READY, log_json=True, peers=peers))
        assert argv[:3] == [sys.executable, "-m", "postoffice"]
        group = cli_main.commands[argv[3]]
        assert isinstance(group, click.Group)
        serve = group.commands[argv[4]]
        known = {opt for param in serve.params for opt in param.opts}
        used = {arg for arg in argv[5:] if arg.startswith("--")}
        assert used <= known

    def test_service_names_are_unique(self) -> None:
        names = [spec.name for spec in SERVICES]
        assert len(names) == len(set(names))


class TestSelectServices:
    def test_no_names_means_all_in_table_order(self) -> None:
        assert select_services(()) == SERVICES

    def test_names_keep_table_order(self) -> None:
        table = tuple(ServiceSpec(name=n, argv=serve_argv(n)) for n in ("a", "b", "c"))
        assert [s.name for s in select_services(("c", "a"), table)] == ["a", "c"]

    def test_unknown_name_is_refused(self) -> None:
        with pytest.raises(ConfigError, match=r"^unknown service 'nope', expected one of "):
            select_services(("nope",))

    def test_the_command_server_brings_the_store_it_keeps_keys_in(self) -> None:
        """Regression: `up --only command` ran a command server whose SET had no store."""
        assert [s.name for s in select_services(("command",))] == ["store", "command"]

    def test_needs_are_followed_through_and_keep_table_order(self) -> None:
        table = (
            ServiceSpec(name="a", argv=serve_argv("a")),
            ServiceSpec(name="b", argv=serve_argv("b"), needs=("a",)),
            ServiceSpec(name="c", argv=serve_argv("c"), needs=("b",)),
            ServiceSpec(name="d", argv=serve_argv("d")),
        )
        assert [s.name for s in select_services(("c",), table)] == ["a", "b", "c"]
        assert [s.name for s in select_services(("d", "b"), table)] == ["a", "b", "d"]

    def test_a_need_that_is_no_service_is_refused(self) -> None:
        table = (ServiceSpec(name="a", argv=serve_argv("a"), needs=("ghost",)),)
        with pytest.raises(
            ConfigError, match=r"^service 'a' needs 'ghost', which is not a service$"
        ):
            select_services(("a",), table)

    def test_every_need_comes_earlier_in_the_table(self) -> None:
        """The director starts in table order, so a service's needs must be up before it."""
        seen: set[str] = set()
        for spec in SERVICES:
            assert set(spec.needs) <= seen, spec.name
            seen.add(spec.name)


class TestRestartDelay:
    def test_quick_crashes_double_the_delay_up_to_the_cap(self) -> None:
        backoff = Backoff(initial_s=0.1, max_s=0.5)
        delays = [next_restart_delay(backoff, uptime_s=1.0, healthy_after_s=10.0) for _ in range(5)]
        assert delays == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])

    def test_a_child_up_long_enough_starts_over(self) -> None:
        backoff = Backoff(initial_s=0.1, max_s=5.0)
        for _ in range(3):
            next_restart_delay(backoff, uptime_s=0.5, healthy_after_s=10.0)
        assert next_restart_delay(backoff, uptime_s=10.0, healthy_after_s=10.0) == 0.1

    def test_a_child_never_ready_keeps_growing(self) -> None:
        backoff = Backoff(initial_s=1.0, max_s=5.0)
        delays = [next_restart_delay(backoff, uptime_s=None, healthy_after_s=0.0) for _ in range(3)]
        assert delays == [1.0, 2.0, 4.0]


class TestParseReady:
    _TEXT = json.dumps(
        {
            "service": "command",
            "pid": 42,
            "listeners": {"command": ["127.0.0.1", 6380], "metrics": ["127.0.0.1", 6381]},
        }
    )

    def test_listeners_of_our_child(self) -> None:
        assert parse_ready(self._TEXT, pid=42) == {
            "command": ("127.0.0.1", 6380),
            "metrics": ("127.0.0.1", 6381),
        }

    def test_a_file_written_by_another_pid_is_not_ready(self) -> None:
        assert parse_ready(self._TEXT, pid=43) is None

    def test_a_child_that_could_not_start_says_why(self) -> None:
        text = json.dumps({"service": "store", "pid": 42, "error": "cannot listen: busy"})
        with pytest.raises(ServiceFailedError, match=r"^cannot listen: busy$") as failed:
            parse_ready(text, pid=42)
        assert failed.value.reason == "cannot listen: busy"

    def test_another_pids_failure_is_not_ours(self) -> None:
        text = json.dumps({"service": "store", "pid": 41, "error": "cannot listen: busy"})
        assert parse_ready(text, pid=42) is None

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("{", r"^ready file is not JSON: "),
            ('{"pid": 42, "error": 7}', r"^ready file 'error' must be a string, got 7$"),
            ("[]", r"^ready file has no 'listeners' object: '\[\]'$"),
            ('{"pid": 42}', r"^ready file has no 'listeners' object: "),
            (
                '{"pid": 42, "listeners": {"command": ["h", "6380"]}}',
                r"^ready file listener 'command' must be \[host, port\], got \['h', '6380'\]$",
            ),
            (
                '{"pid": 42, "listeners": {"command": ["h", true]}}',
                r"^ready file listener 'command' must be \[host, port\], got \['h', True\]$",
            ),
        ],
    )
    def test_malformed_files_are_refused(self, text: str, message: str) -> None:
        with pytest.raises(ServiceStartError, match=message):
            parse_ready(text, pid=42)


_STATUS = ChildStatus(
    name="command",
    pid=1234,
    state=ChildState.READY,
    restarts=1,
    listeners={"command": ("127.0.0.1", 6380), "metrics": ("127.0.0.1", 6381)},
    last_exit="killed by SIGKILL",
)


def test_ready_file_lives_under_run() -> None:
    assert ready_path(_DATA, "command") == _READY


def test_status_document_round_trips_through_json() -> None:
    body = status_document(director_pid=7, data_dir=_DATA, children=[_STATUS])
    assert json.loads(json.dumps(body)) == {
        "pid": 7,
        "data_dir": "/srv/po",
        "services": {
            "command": {
                "pid": 1234,
                "state": "ready",
                "restarts": 1,
                "listeners": {"command": ["127.0.0.1", 6380], "metrics": ["127.0.0.1", 6381]},
                "last_exit": "killed by SIGKILL",
            }
        },
    }


def test_services_table_has_a_row_per_listener() -> None:
    console = Console(record=True, width=100, color_system=None)
    store = dataclasses.replace(_STATUS, name="store", pid=None, listeners={})
    console.print(services_table([_STATUS, store]))
    lines = [line.strip("│ ") for line in console.export_text().splitlines()]
    rows = [" ".join(line.replace("│", " ").split()) for line in lines]
    assert "command 1234 command 127.0.0.1:6380" in rows
    assert "metrics 127.0.0.1:6381" in rows
    assert "store - - -" in rows


def test_restart_line_names_pid_reason_and_addresses() -> None:
    assert restart_line(_STATUS) == (
        "command restarted (restart 1; last exit: killed by SIGKILL): pid 1234,"
        " command 127.0.0.1:6380, metrics 127.0.0.1:6381"
    )


@pytest.mark.parametrize(
    "last_exit",
    [
        describe_exit(-9),
        describe_exit(3),
        "service 'command' ended before it was ready: exited with code 1",
        None,
    ],
)
def test_restart_line_reads_well_whatever_the_last_exit(last_exit: str | None) -> None:
    """Regression: the reason was spliced in after "after it", giving "after it killed by"."""
    line = restart_line(dataclasses.replace(_STATUS, last_exit=last_exit))
    assert "after it" not in line
    assert f"; last exit: {last_exit or 'unknown'}): pid 1234, " in line
