"""Fixtures of the bus's tests (a channel in a private /dev/shm directory), a pytest plugin.

Each test module starts with `pytest.importorskip("postoffice.bus", ...)`, so that
without the C extension the bus's tests are skipped with the reason the import gives;
this file therefore imports the bus only inside its fixtures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.bus.rig import Rig

MakeRig = Callable[..., "Rig"]


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
