"""`postoffice office run|report|runs` in this process: the shipped configs' endings,
reproducibility, the report recomputed from the event log, and refusals."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from postoffice.cli import main

FAST = {"POSTOFFICE_OFFICE_N_NANO_SECS": "0"}


def _office(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(
        main, ["office", *args, "--data-dir", str(tmp_path / "var")], env=env or FAST
    )


def _lines(result: Result) -> list[dict[str, object]]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines()]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_explode_ini_ends_with_explode(tmp_path: Path, seed: int) -> None:
    lines = _lines(
        _office(
            tmp_path, "run", "--config", "explode", "--in-process", "--seed", str(seed), "--json"
        )
    )
    end = next(line for line in lines if line["type"] == "end")
    assert end["cause"] == "explode"
    days = [line for line in lines if line["type"] == "day"]
    assert days[-1]["waiting_users"] > 5  # type: ignore[operator]
    assert end["final"] == days[-1]["totals"]


@pytest.mark.parametrize("seed", [1, 2])
def test_timeout_ini_ends_with_timeout_after_its_days(tmp_path: Path, seed: int) -> None:
    lines = _lines(
        _office(
            tmp_path, "run", "--config", "timeout", "--in-process", "--seed", str(seed), "--json"
        )
    )
    end = next(line for line in lines if line["type"] == "end")
    assert (end["cause"], end["days"]) == ("timeout", 10)
    assert [line["day"] for line in lines if line["type"] == "day"] == list(range(1, 11))


def test_the_same_seed_prints_the_same_statistics(tmp_path: Path) -> None:
    def stats(seed: str) -> list[dict[str, object]]:
        result = _office(
            tmp_path, "run", "--config", "explode", "--in-process", "--seed", seed, "--json"
        )
        return [line for line in _lines(result) if line["type"] in ("day", "end")]

    assert stats("99") == stats("99")
    assert stats("99") != stats("100")


def test_without_a_seed_one_is_chosen_and_printed(tmp_path: Path) -> None:
    result = _office(tmp_path, "run", "--config", "timeout", "--in-process")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("run ")
    assert ": seed " in result.output.splitlines()[0]
    assert "run ended: timeout (10 days simulated)" in result.output
    assert "final statistics after 10 days" in result.output


def test_report_prints_the_run_statistics_again(tmp_path: Path) -> None:
    run = _office(tmp_path, "run", "--config", "explode", "--in-process", "--seed", "5")
    assert run.exit_code == 0, run.output
    run_id = run.output.split()[1].rstrip(":")
    report = _office(tmp_path, "report", run_id)
    assert report.exit_code == 0, report.output
    # everything between the header line and the run's own timing line
    body = run.output.split("\n", 1)[1].rsplit("\n", 2)[0]
    assert report.output.split("\n", 1)[1].rstrip("\n") == body
    assert "run ended: explode" in body

    run_json = _office(
        tmp_path, "run", "--config", "explode", "--in-process", "--seed", "5", "--json"
    )
    lines = _lines(run_json)
    again = _lines(_office(tmp_path, "report", str(lines[0]["run"]), "--json"))
    assert again[1:] == lines[1:-1]  # all but the header and the timing


def test_runs_lists_each_run_with_its_ending(tmp_path: Path) -> None:
    for config in ("explode", "timeout"):
        assert (
            _office(tmp_path, "run", "--config", config, "--in-process", "--seed", "3").exit_code
            == 0
        )
    listed = _lines(_office(tmp_path, "runs", "--json"))
    assert [(r["seed"], r["cause"]) for r in listed] == [(3, "explode"), (3, "timeout")]
    assert listed[0]["run"] != listed[1]["run"]
    table = _office(tmp_path, "runs")
    assert "explode" in table.output
    assert "timeout" in table.output


def test_csv_holds_daily_and_total_rows(tmp_path: Path) -> None:
    out = tmp_path / "csv"
    result = _office(
        tmp_path, "run", "--config", "timeout", "--in-process", "--seed", "8", "--csv", str(out)
    )
    assert result.exit_code == 0, result.output
    with (out / "daily.csv").open() as handle:
        daily = list(csv.DictReader(handle))
    with (out / "totals.csv").open() as handle:
        totals = list(csv.DictReader(handle))
    scopes = {row["scope"] for row in daily}
    assert {"all", "parcels", "watches", "counter 0", "counter 9"} <= scopes
    last_day = [row for row in totals if row["day"] == "10" and row["scope"] == "all"]
    daily_all = [int(row["provided"]) for row in daily if row["scope"] == "all"]
    assert int(last_day[0]["provided"]) == sum(daily_all)


def test_a_multi_process_run_needing_too_many_processes_is_refused_before_any_starts(
    tmp_path: Path,
) -> None:
    env = {**FAST, "POSTOFFICE_OFFICE_NOF_USERS": "600"}
    result = _office(tmp_path, "run", "--config", "timeout", env=env)
    assert result.exit_code == 1
    assert (
        "600 users and 10 operators need 611 role processes, more than 500: give each"
        " process more users (--users-per-process) or operators (--operators-per-process)"
    ) in " ".join(result.output.split())


def test_a_bad_config_stops_the_run_naming_the_key(tmp_path: Path) -> None:
    env = {**FAST, "POSTOFFICE_OFFICE_NOF_WORKERS": "many"}
    result = _office(tmp_path, "run", "--config", "timeout", "--in-process", env=env)
    assert result.exit_code == 1
    assert "NOF_WORKERS" in result.output
    assert "must be an integer, got 'many'" in result.output


def test_report_of_an_unknown_run_is_an_error(tmp_path: Path) -> None:
    result = _office(tmp_path, "report", "20250101T000000Z-s1")
    assert result.exit_code == 1
    assert "no run 20250101T000000Z-s1" in result.output


def test_without_the_bus_the_multi_process_run_says_so_and_points_to_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "postoffice.office.procs", None)  # as if unbuildable
    result = _office(tmp_path, "run", "--config", "timeout")
    assert result.exit_code == 1
    assert "--in-process runs without it" in result.output
