"""compare_configs: which changed keys a running simulation takes, which need a restart."""

from __future__ import annotations

import dataclasses

from postoffice.office.simconfig import (
    KEYS,
    LIVE_KEYS,
    Change,
    compare_configs,
    load_config,
    shipped_config,
)

BASE = load_config(shipped_config("timeout"), env={})


def test_the_same_config_changes_nothing() -> None:
    changes = compare_configs(BASE, BASE)
    assert (changes.live, changes.restart, changes.config) == ((), (), BASE)


def test_live_keys_are_taken_and_the_others_listed_for_a_restart() -> None:
    new = dataclasses.replace(
        BASE, n_nano_secs=1000, explode_threshold=7, nof_users=50, n_new_users=2, p_serv_max=0.9
    )
    changes = compare_configs(BASE, new)
    assert changes.live == (
        Change(key="N_NANO_SECS", old=2_500_000, new=1000),
        Change(key="EXPLODE_THRESHOLD", old=100, new=7),
        Change(key="N_NEW_USERS", old=5, new=2),
    )
    assert changes.restart == (
        Change(key="NOF_USERS", old=10, new=50),
        Change(key="P_SERV_MAX", old=0.8, new=0.9),
    )
    assert changes.config == dataclasses.replace(
        BASE, n_nano_secs=1000, explode_threshold=7, n_new_users=2
    )
    assert str(changes.live[0]) == "N_NANO_SECS 2500000 -> 1000"


def test_the_live_keys_are_keys_of_the_config() -> None:
    assert set(LIVE_KEYS) <= {k.name for k in KEYS}
