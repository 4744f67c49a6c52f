"""The store's modules say what they hold in a short docstring; design notes are comments."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import postoffice.store

STORE = Path(postoffice.store.__file__).parent
MODULES = sorted(STORE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(STORE)))
def test_module_docstring_is_one_to_three_lines_and_names_no_seed(path: Path) -> None:
    docstring = ast.get_docstring(ast.parse(path.read_text()))
    assert docstring
    lines = [line for line in docstring.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 3, f"{len(lines)} lines"
    assert not re.search(r"\bseeds? \d", docstring)
