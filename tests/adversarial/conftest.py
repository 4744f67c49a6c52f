"""Attacks on the real servers, as a hostile client on loopback would make them.

Every test here runs real server processes (the fixtures of tests/integration/conftest.py)
and is marked `integration`, so `make test` runs it with the other real-process tests.
Each attack is bounded in count and time, and each test checks two things: the attacker
gets the documented refusal (docs/security.md), and every other client goes on being
served.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)
