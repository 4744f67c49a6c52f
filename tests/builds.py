"""Which build a test runs on: the sources as they are (`.venv`), or the wheel whose hot
modules mypyc compiled (`make test-compiled`); for the few behaviours that differ."""

from __future__ import annotations

from types import ModuleType


def compiled(module: ModuleType) -> bool:
    """Whether `module` was loaded from an extension module (mypyc's), not its source."""
    return (module.__file__ or "").endswith(".so")
