"""`postoffice up --trace`: the command, store and ingest servers get the flag (the bus,
which makes no spans, does not), and a bad value fails the start before any child."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from postoffice.cli import main as cli_main
from postoffice.office.services import SERVICES, Launch, ServiceSpec

_TARGET = "otlp://127.0.0.1:4318"
_TRACED = {"command", "store", "ingest"}


@pytest.mark.parametrize("spec", SERVICES, ids=lambda spec: spec.name)
def test_each_traced_service_gets_the_directors_trace(spec: ServiceSpec) -> None:
    launch = Launch(data_dir=Path("/srv/po"), ready_file=Path("/srv/po/r.json"), trace=_TARGET)
    argv = spec.argv(launch)
    if spec.name in _TRACED:
        assert argv[argv.index("--trace") + 1] == _TARGET
        group = cli_main.commands[argv[3]]
        assert isinstance(group, click.Group)
        assert "--trace" in {opt for p in group.commands["serve"].params for opt in p.opts}
    else:
        assert "--trace" not in argv


@pytest.mark.parametrize("spec", SERVICES, ids=lambda spec: spec.name)
def test_without_trace_no_child_gets_the_flag(spec: ServiceSpec) -> None:
    argv = spec.argv(Launch(data_dir=Path("/srv/po"), ready_file=Path("/srv/po/r.json")))
    assert "--trace" not in argv


def test_a_bad_trace_fails_up_before_any_child(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli_main, ["up", "--data-dir", str(tmp_path), "--trace", "127.0.0.1:4318"]
    )
    assert result.exit_code == 1
    assert "setting 'trace' must be otlp://HOST:PORT, got '127.0.0.1:4318'" in result.output
    assert not (tmp_path / "run").exists()
