"""The embedded keyspace on a real engine, without a server: what a closed store answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from postoffice.command.embedded import EmbeddedKeyspace
from postoffice.command.errors import StoreUnavailableError


async def test_a_closed_store_refuses_every_keyspace_command(tmp_path: Path) -> None:
    keyspace = EmbeddedKeyspace(tmp_path / "store", "always")
    await keyspace.start()
    assert keyspace.set(b"k", b"v") is not None
    await keyspace.close()
    with pytest.raises(StoreUnavailableError, match="store is not open"):
        keyspace.get(b"k")
    with pytest.raises(StoreUnavailableError, match="store is not open"):
        keyspace.set(b"k", b"w")
    with pytest.raises(StoreUnavailableError, match="store is not open"):
        keyspace.delete([b"k"])
