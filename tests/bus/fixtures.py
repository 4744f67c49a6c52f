"""Fixtures of the bus's tests (a channel in a private /dev/shm directory), a pytest plugin.

Each test module starts with `pytest.importorskip("postoffice.bus", ...)`, so that
without the C extension the bus's tests are skipped with the reason the import gives;
this file therefore imports the bus only inside its fixtures.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.bus.rig import Rig

MakeRig = Callable[..., "Rig"]


@pytest.fixture(autouse=True)
def shm_directories_removed() -> Iterator[None]:
    """The /dev/shm directories a test made go when it ends (a test that checks a server
    left no files behind checks before this runs)."""
    yield
    # Only a test that imported the rig (and so the bus) can have made one.
    rig = sys.modules.get("tests.bus.rig")
    made: list[Path] = getattr(rig, "MADE", [])
    while made:
        shutil.rmtree(made.pop(), ignore_errors=True)


@pytest.fixture
def make_rig() -> Iterator[MakeRig]:
    """Make channels (ChannelSpec fields as keywords); all are removed afterwards."""
    from tests.bus.rig import Rig

    rigs: list[Rig] = []

    def make(**spec: object) -> Rig:
        rig = Rig.make(**spec)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()


@pytest.fixture
def rig(make_rig: MakeRig) -> Rig:
    """A channel of 8 slots of 64 bytes."""
    return make_rig()
