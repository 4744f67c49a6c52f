"""The layering rules of STYLE.md and DESIGN.md, checked on the source tree."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "postoffice"

#: Protocol modules are pure: bytes in, events out, no I/O and no clock.
PURE_MODULES = [
    "core/framing.py",
    "core/resp/__init__.py",
    "core/resp/parser.py",
    "core/resp/replies.py",
    "ingest/messages.py",
    "ingest/chunkdigest.py",
    "ingest/protocol.py",
    "core/storewire/__init__.py",
    "core/storewire/messages.py",
    "core/storewire/requests.py",
    "core/storewire/responses.py",
]
FORBIDDEN_IN_PURE = {"asyncio", "socket", "selectors", "time", "os", "io", "pathlib", "ssl"}
SERVICES = {"command", "ingest", "store", "bus", "office"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", PURE_MODULES)
def test_protocol_modules_do_no_io(module: str) -> None:
    roots = {name.split(".")[0] for name in imported_modules(SRC / module)}
    assert not roots & FORBIDDEN_IN_PURE, f"{module} imports {sorted(roots & FORBIDDEN_IN_PURE)}"


def test_core_imports_no_service() -> None:
    for path in sorted((SRC / "core").rglob("*.py")):
        for name in imported_modules(path):
            parts = name.split(".")
            if parts[0] == "postoffice" and len(parts) > 1:
                assert parts[1] not in SERVICES, f"{path.name} imports {name}"


def test_services_import_no_other_service() -> None:
    for service in SERVICES - {"office"}:
        folder = SRC / service
        if not folder.exists():
            continue
        for path in sorted(folder.rglob("*.py")):
            for name in imported_modules(path):
                parts = name.split(".")
                if parts[0] == "postoffice" and len(parts) > 1 and parts[1] in SERVICES:
                    assert parts[1] == service, f"{service}/{path.name} imports {name}"


def test_every_module_has_a_docstring_and_future_annotations() -> None:
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), f"{path.relative_to(SRC)} has no module docstring"
        futures = [
            n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "__future__"
        ]
        assert futures, f"{path.relative_to(SRC)} lacks from __future__ import annotations"
