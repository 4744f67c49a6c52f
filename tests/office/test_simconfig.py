"""The simulation config: the shipped files, environment overrides, and bad files
rejected with the key named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from postoffice.office.errors import OfficeConfigError
from postoffice.office.simconfig import SHIPPED, load_config, shipped_config

GOOD = """\
[simulation]
SIM_DURATION = 10
N_NANO_SECS = 0
EXPLODE_THRESHOLD = 100
[users]
NOF_USERS = 10
P_SERV_MIN = 0.5
P_SERV_MAX = 0.8
N_REQUESTS = 3
[workers]
NOF_WORKERS = 10
NOF_WORKER_SEATS = 10
NOF_PAUSE = 2
[users_manager]
N_NEW_USERS = 5
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "office.ini"
    path.write_text(text)
    return path


def test_the_shipped_configs_hold_the_rules_values() -> None:
    explode = load_config(shipped_config("explode"), env={})
    timeout = load_config(shipped_config("timeout"), env={})
    assert (explode.sim_duration, explode.n_nano_secs, explode.explode_threshold) == (
        5,
        1_250_000,
        5,
    )
    assert (explode.nof_users, explode.p_serv_min, explode.p_serv_max) == (100, 0.1, 0.9)
    assert (explode.n_requests, explode.nof_workers, explode.nof_worker_seats) == (5, 5, 5)
    assert (explode.nof_pause, explode.n_new_users) == (2, 5)
    assert (timeout.sim_duration, timeout.n_nano_secs, timeout.explode_threshold) == (
        10,
        2_500_000,
        100,
    )
    assert (timeout.nof_users, timeout.p_serv_min, timeout.p_serv_max) == (10, 0.5, 0.8)
    assert (timeout.n_requests, timeout.nof_workers, timeout.nof_worker_seats) == (3, 10, 10)
    assert (timeout.nof_pause, timeout.n_new_users) == (2, 5)
    assert SHIPPED == ("timeout", "explode")


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    env = {"POSTOFFICE_OFFICE_NOF_USERS": "77", "POSTOFFICE_OFFICE_P_SERV_MAX": "0.9"}
    config = load_config(_write(tmp_path, GOOD), env=env)
    assert (config.nof_users, config.p_serv_max, config.sim_duration) == (77, 0.9, 10)


def _bad(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


BAD_FILES = [
    (_bad("NOF_USERS = 10", "NOF_USERS ="), "key NOF_USERS in [users] of {path} is empty"),
    (
        _bad("NOF_PAUSE = 2", "NOF_PAUSE = 2\nNOF_PAUSE = 3"),
        "duplicate key NOF_PAUSE in [workers] of {path} (line 14)",
    ),
    (
        _bad("N_NEW_USERS = 5", "N_NEW_USERS = 5\nCOLOUR = 1"),
        "unknown key 'COLOUR' in [users_manager] of {path}",
    ),
    (
        _bad("SIM_DURATION = 10", "sim_duration = 10"),
        "unknown key 'sim_duration' in [simulation] of {path}"
        " (did you mean SIM_DURATION in [simulation]?)",
    ),
    (
        _bad("NOF_PAUSE = 2", "NOF_PAUSE = 2\nNOF_USERS = 3"),
        "unknown key 'NOF_USERS' in [workers] of {path} (did you mean NOF_USERS in [users]?)",
    ),
    (
        _bad("N_REQUESTS = 3", "N_REQUESTS = three"),
        "key N_REQUESTS in [users] of {path} must be an integer, got 'three'",
    ),
    (
        _bad("N_REQUESTS = 3", "N_REQUESTS = 2.5"),
        "key N_REQUESTS in [users] of {path} must be an integer, got '2.5'",
    ),
    (
        _bad("P_SERV_MIN = 0.5", "P_SERV_MIN = nan"),
        "key P_SERV_MIN in [users] of {path} must be a finite number, got 'nan'",
    ),
    (
        _bad("P_SERV_MAX = 0.8", "P_SERV_MAX = 1.5"),
        "key P_SERV_MAX in [users] of {path} must be between 0.0 and 1.0, got 1.5",
    ),
    (
        _bad("NOF_WORKERS = 10", "NOF_WORKERS = 0"),
        "key NOF_WORKERS in [workers] of {path} must be between 1 and 100000, got 0",
    ),
    (
        _bad("SIM_DURATION = 10", "SIM_DURATION = -1"),
        "key SIM_DURATION in [simulation] of {path} must be between 1 and 1000000, got -1",
    ),
    (_bad("P_SERV_MIN = 0.5", "P_SERV_MIN = 0.9"), "P_SERV_MIN 0.9 must not exceed P_SERV_MAX 0.8"),
    (
        _bad("EXPLODE_THRESHOLD = 100\n", ""),
        "missing key EXPLODE_THRESHOLD in [simulation] of {path}"
        " (or environment POSTOFFICE_OFFICE_EXPLODE_THRESHOLD)",
    ),
    (
        _bad("[users_manager]", "[users_manager]\n[extra]"),
        "unknown section [extra] in {path};"
        " the sections are [simulation], [users], [workers], [users_manager]",
    ),
    (_bad("[workers]", "[users]"), "duplicate section [users] in {path} (line 10)"),
    (
        "SIM_DURATION = 1\n" + GOOD,
        "config file {path} line 1: 'SIM_DURATION = 1' is outside any section",
    ),
    (
        _bad("N_REQUESTS = 3", "N_REQUESTS 3"),
        "config file {path} is not valid INI: line 9: 'N_REQUESTS 3'",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES)
def test_a_bad_file_is_rejected_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    pattern = "^" + re.escape(message.format(path=path)).replace(r"\.\*", ".*") + "$"
    with pytest.raises(OfficeConfigError, match=pattern):
        load_config(path, env={})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"POSTOFFICE_OFFICE_NOF_USER": "3"},
            "unknown key 'NOF_USER' in environment POSTOFFICE_OFFICE_NOF_USER; the keys are .*",
        ),
        (
            {"POSTOFFICE_OFFICE_N_NANO_SECS": "soon"},
            "key N_NANO_SECS in environment POSTOFFICE_OFFICE_N_NANO_SECS"
            " must be an integer, got 'soon'",
        ),
        (
            {"POSTOFFICE_OFFICE_NOF_PAUSE": " "},
            "key NOF_PAUSE in environment POSTOFFICE_OFFICE_NOF_PAUSE is empty",
        ),
    ],
)
def test_a_bad_variable_is_rejected_naming_it(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    pattern = "^" + re.escape(message).replace(r"\.\*", ".*") + "$"
    with pytest.raises(OfficeConfigError, match=pattern):
        load_config(_write(tmp_path, GOOD), env=env)


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(OfficeConfigError, match=r"^config file .*nope.ini does not exist$"):
        load_config(tmp_path / "nope.ini", env={})
