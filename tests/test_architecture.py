"""The layering rules of STYLE.md and DESIGN.md, checked on the source tree."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "postoffice"

#: Protocol modules are pure: bytes in, events out, no I/O and no clock.
PURE_MODULES = [
    "core/framing.py",
    "core/resp/__init__.py",
    "core/resp/globs.py",
    "core/resp/parser.py",
    "core/resp/refusals.py",
    "core/resp/replies.py",
    "ingest/messages.py",
    "ingest/chunkdigest.py",
    "ingest/protocol.py",
    "bus/memory.py",
    "bus/wire/__init__.py",
    "bus/wire/messages.py",
    "bus/wire/requests.py",
    "bus/wire/replies.py",
    "bus/fields.py",
    "bus/netwire.py",
    "store/errors.py",
    "store/wire/__init__.py",
    "store/wire/messages.py",
    "store/wire/requests.py",
    "store/wire/responses.py",
]
FORBIDDEN_IN_PURE = {"asyncio", "socket", "selectors", "time", "os", "io", "pathlib", "ssl"}
SERVICES = {"command", "ingest", "store", "bus", "office"}


def module_name(path: Path) -> str:
    """`postoffice.store.engine` for src/postoffice/store/engine/__init__.py."""
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(SRC.rglob("*.py"))}


def imports(path: Path) -> Iterator[tuple[str, str | None]]:
    """Every (module, name) the file imports, `name` None for `import module`.

    Imports under `if TYPE_CHECKING:` and inside functions count: a circle is a circle
    whether or not it is taken at run time.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path.parent)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield base, alias.name


def imported_modules(path: Path) -> set[str]:
    return {module for module, _ in imports(path)}


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it names (a `from pkg import sub` names pkg.sub too)."""
    modules = all_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for module, imported in imports(path):
            if imported is not None and f"{module}.{imported}" in modules:
                edges.add(f"{module}.{imported}")
            elif module in modules:
                edges.add(module)
        edges.discard(name)
        graph[name] = edges
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def public_api(service: str) -> set[str]:
    """The names a service's `__init__.py` lists in `__all__`."""
    tree = ast.parse((SRC / service / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            return set(value)
    return set()


def import_unless_unbuilt(name: str) -> object | None:
    """The module, or None for a bus module when the bus's C extension is not built:
    `import postoffice.bus` then raises BusUnavailableError (the bus's own tests skip)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if type(exc).__name__ == "BusUnavailableError":
            return None
        raise


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


def test_a_service_uses_another_only_through_its_public_api() -> None:
    wrong: list[str] = []
    for service in sorted(SERVICES):
        folder = SRC / service
        if not folder.exists():
            continue
        for path in sorted(folder.rglob("*.py")):
            where = path.relative_to(SRC)
            for module, name in imports(path):
                parts = module.split(".")
                if parts[0] != "postoffice" or len(parts) < 2 or parts[1] not in SERVICES:
                    continue
                other = parts[1]
                if other == service:
                    continue
                if len(parts) > 2 or name is None:
                    wrong.append(f"{where} imports {module} (only postoffice.{other} is public)")
                elif name not in public_api(other):
                    wrong.append(f"{where} imports {name}, not in postoffice.{other}.__all__")
    assert not wrong, "\n".join(wrong)


def test_the_circle_finder_finds_a_circle() -> None:
    """The check above can fail: a made-up graph with one circle is reported."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]


def test_every_public_name_exists() -> None:
    """What a service's `__all__` promises, its package really exports."""

    for service in sorted(SERVICES):
        if not (SRC / service / "__init__.py").exists():
            continue
        package = import_unless_unbuilt(f"postoffice.{service}")
        if package is None:
            continue
        missing = [name for name in public_api(service) if not hasattr(package, name)]
        assert not missing, f"postoffice.{service} lacks {missing}"


def test_every_module_has_a_docstring_and_future_annotations() -> None:
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), f"{path.relative_to(SRC)} has no module docstring"
        futures = [
            n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "__future__"
        ]
        assert futures, f"{path.relative_to(SRC)} lacks from __future__ import annotations"


def test_no_import_circles() -> None:
    """No circle of imports anywhere in the package, not even under TYPE_CHECKING."""
    found = circles(import_graph())
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_only_the_transport_moves_a_connection() -> None:
    """A connection's lifecycle changes in core/transport.py alone: no other module that
    knows BaseProtocol assigns `cycle` or `state` on a connection."""
    wrong: list[str] = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "core" / "transport.py" or "BaseProtocol" not in path.read_text():
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            for target in targets:
                if isinstance(target, ast.Attribute) and target.attr in {"cycle", "state"}:
                    wrong.append(f"{path.relative_to(SRC)}:{target.lineno} sets .{target.attr}")
    assert not wrong, "\n".join(wrong)


def test_every_error_class_lives_in_an_errors_module() -> None:
    """A newcomer finds a package's errors in its errors.py: no public exception class is
    defined anywhere else (a module-private one, named with an underscore, may be)."""
    import inspect

    wrong: list[str] = []
    for name in sorted(all_modules()):
        module = import_unless_unbuilt(name)
        if module is None:
            continue
        for attr, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == name
                and not attr.startswith("_")
                and not name.endswith(".errors")
            ):
                wrong.append(f"{name}.{attr}")
    assert not wrong, "error classes outside errors.py:\n" + "\n".join(wrong)
