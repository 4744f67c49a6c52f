"""STYLE.md's rules for the tests themselves, checked on tests/ with `ast`: unit tests never
sleep and open no sockets or processes; every integration module carries the marker."""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
INTEGRATION = TESTS / "integration"
#: Attacks on the real servers: real sockets and processes, marked `integration` by the
#: folder's conftest.py.
ADVERSARIAL = TESTS / "adversarial"

#: Modules a unit test must not import: each opens real sockets or starts processes.
REAL_IO_MODULES = {"socket", "subprocess", "multiprocessing", "socketserver", "ssl"}
#: Calls that open real sockets or start processes, by their last name.
REAL_IO_CALLS = {
    "open_connection",
    "open_unix_connection",
    "start_server",
    "start_unix_server",
    "create_connection",
    "create_server",
    "create_unix_connection",
    "create_unix_server",
    "create_datagram_endpoint",
    "create_subprocess_exec",
    "create_subprocess_shell",
    "fork",
    "Popen",
}

#: Places that may do what the rules forbid, each with its reason. Empty: keep it so.
ALLOWED: dict[str, str] = {}


def unit_test_modules() -> list[Path]:
    return sorted(
        p
        for p in TESTS.rglob("*.py")
        if INTEGRATION not in p.parents and ADVERSARIAL not in p.parents
    )


def _called_name(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


def _is_zero(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value == 0


def wall_clock_sleeps(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Every call of a `sleep` whose delay is not the literal 0 (a loop turn is fine)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _called_name(node) == "sleep":
            delay = node.args[0] if node.args else None
            for keyword in node.keywords:
                if keyword.arg in ("delay", "secs", "seconds"):
                    delay = keyword.value
            if delay is None or not _is_zero(delay):
                yield node.lineno, ast.unparse(node)


def real_io(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Every import of a socket or process module, and every call that opens one."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in REAL_IO_MODULES:
                    yield node.lineno, f"import {alias.name}"
        elif isinstance(node, ast.ImportFrom):
            if node.module and node.module.split(".")[0] in REAL_IO_MODULES:
                yield node.lineno, f"from {node.module} import ..."
        elif isinstance(node, ast.Call) and _called_name(node) in REAL_IO_CALLS:
            yield node.lineno, ast.unparse(node.func)


def _offences(find: Callable[[ast.AST], Iterator[tuple[int, str]]]) -> list[str]:
    found: list[str] = []
    for path in unit_test_modules():
        relative = path.relative_to(TESTS.parent).as_posix()
        for line, what in find(ast.parse(path.read_text(), filename=str(path))):
            if f"{relative}:{what}" not in ALLOWED:
                found.append(f"{relative}:{line}: {what}")
    return found


def test_unit_tests_never_sleep() -> None:
    """Wait for an event the code under test sets, advance a FakeClock, or turn the loop
    with `await asyncio.sleep(0)`: a wall-clock sleep makes a test slow or flaky."""
    assert _offences(wall_clock_sleeps) == []


def test_unit_tests_open_no_sockets_or_processes() -> None:
    """Those belong in tests/integration/, marked `integration`; unit tests use the fake
    transport of tests/fakes.py."""
    assert _offences(real_io) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("time.sleep(0.01)", ["time.sleep(0.01)"]),
        ("await asyncio.sleep(delay)", ["asyncio.sleep(delay)"]),
        ("sleep(seconds=1)", ["sleep(seconds=1)"]),
        ("await asyncio.sleep(0)", []),
        ("time.sleep(0)", []),
        ("clock.advance(5)", []),
    ],
)
def test_the_sleep_check_tells_a_loop_turn_from_a_wait(source: str, expected: list[str]) -> None:
    tree = ast.parse(source if "await" not in source else f"async def f():\n    {source}")
    assert [what for _, what in wall_clock_sleeps(tree)] == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import socket", ["import socket"]),
        ("from subprocess import run", ["from subprocess import ..."]),
        ("asyncio.open_connection('127.0.0.1', 1)", ["asyncio.open_connection"]),
        ("loop.create_server(f, port=0)", ["loop.create_server"]),
        ("subprocess.Popen(['x'])", ["subprocess.Popen"]),
        ("FakeTransport(conn)", []),
    ],
)
def test_the_io_check_finds_sockets_and_processes(source: str, expected: list[str]) -> None:
    assert [what for _, what in real_io(ast.parse(source))] == expected


def test_every_integration_module_is_marked() -> None:
    """`-m "not integration"` must leave out every test that needs the network."""
    unmarked = []
    for path in sorted(INTEGRATION.glob("test_*.py")):
        tree = ast.parse(path.read_text())
        marks = [
            ast.unparse(node.value)
            for node in tree.body
            if isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets)
        ]
        if not any("pytest.mark.integration" in mark for mark in marks):
            unmarked.append(path.name)
    assert unmarked == []


def test_integration_tests_live_only_where_make_integration_collects() -> None:
    """`make integration` collects tests/integration and tests/adversarial only (the
    other folders' modules are never imported there): a module elsewhere marked
    `integration` would run in neither `make unit` nor `make integration`."""
    misplaced = [
        str(path.relative_to(TESTS))
        for path in sorted(TESTS.rglob("test_*.py"))
        if not path.is_relative_to(INTEGRATION)
        and not path.is_relative_to(ADVERSARIAL)
        and "pytest.mark.integration" in path.read_text()
        and path.name != "test_hygiene.py"
    ]
    assert misplaced == []
