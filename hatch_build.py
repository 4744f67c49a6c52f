"""Build hook: the bus's C extension, and the hot modules compiled by mypyc, into the wheel.

A wheel (`pip install .`, `make setup`'s compiled venv) gets both where a C compiler is
present; without one it says so in one line and is pure Python. An editable install gets
only the bus extension, in place: its modules stay the sources being edited.
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
SRC = ROOT / "src"
SOURCE = SRC / "postoffice" / "bus" / "_atomics.c"
MODULE = "_atomics"
WHEEL_DIR = "postoffice/bus"

#: "0" builds pure Python wheels (no mypyc); anything else, or unset, compiles.
SWITCH_ENV = "POSTOFFICE_COMPILE"
#: Where compiled builds are kept, one directory per key (default: build/compiled here).
CACHE_ENV = "POSTOFFICE_BUILD_CACHE"
#: Written last into a cached build: a directory without it is a build that did not finish.
COMPLETE = ".complete"
#: mypyc's build runs this long at most (a loaded 2-core machine takes about a minute).
BUILD_TIMEOUT_S = 900


def extension_name() -> str:
    """`_atomics.cpython-311-x86_64-linux-gnu.so` for the running interpreter."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    return MODULE + suffix


def compiler() -> list[str]:
    """The C compiler this Python was built with (sysconfig's CC), or $CC if set."""
    named = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shlex.split(named)


def compile_extension(output: Path) -> str | None:
    """Compile SOURCE into `output`; None on success, else why it could not be built."""
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").exists():
        return f"Python's C headers are missing (no Python.h in {include})"
    command = compiler()
    if shutil.which(command[0]) is None:
        return f"no C compiler: {command[0]!r} (sysconfig's CC, or $CC) is not on PATH"
    output.parent.mkdir(parents=True, exist_ok=True)
    # Build under a temporary name and rename, so a failed build never leaves half a .so.
    with tempfile.TemporaryDirectory(dir=output.parent) as scratch:
        partial = Path(scratch) / output.name
        argv = [
            *command,
            "-O2",
            "-fPIC",
            "-shared",
            "-std=gnu11",
            "-Wall",
            "-Wextra",
            "-Wno-unused-parameter",
            f"-I{include}",
            str(SOURCE),
            "-o",
            str(partial),
        ]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return f"{shlex.join(argv)} failed:\n{done.stderr.strip()}"
        partial.replace(output)
    return None


def build_in_place() -> Path:
    """Compile the extension beside its source, as an editable install wants it."""
    target = SOURCE.parent / extension_name()
    problem = compile_extension(target)
    if problem is not None:
        raise SystemExit(f"cannot build the bus extension: {problem}")
    return target


# The compiled modules
# --------------------
# pyproject.toml lists them (`mypyc-modules` of this hook). mypyc turns them into one
# shared library plus a small extension per module, built by setuptools in a child
# process (so a compiler that crashes or hangs costs only the compiled part). The result
# is kept under a key: the listed modules and every module of the package they import,
# directly or not (mypyc compiles against their types), this file, mypy's version and the
# interpreter. A build whose key is cached is reused; any other edit costs nothing.


def compiled_modules() -> list[Path]:
    """The modules pyproject.toml lists for mypyc, as paths under ROOT."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        config = tomllib.load(f)
    hook = config["tool"]["hatch"]["build"]["targets"]["wheel"]["hooks"]["custom"]
    return [ROOT / name for name in hook.get("mypyc-modules", [])]


def _module_path(name: str) -> Path | None:
    """The source of module `name` under SRC (a package's __init__), or None."""
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_of(path: Path) -> str:
    relative = path.relative_to(SRC).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def imported_closure(paths: list[Path]) -> list[Path]:
    """`paths` and every module of the package they import, directly or not (each
    package's __init__ on the way included), sorted."""
    seen: set[Path] = set()
    todo = list(paths)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        package = _package_of(path)
        is_init = path.name == "__init__.py"
        names: list[str] = []
        for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    keep = len(parts) - node.level + (1 if is_init else 0)
                    base = ".".join(parts[:keep])
                    module = f"{base}.{node.module}" if node.module else base
                else:
                    module = node.module or ""
                names.append(module)
                names.extend(f"{module}.{alias.name}" for alias in node.names)
        for name in names:
            if not name.startswith("postoffice"):
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # the packages on the way are imported too
                found = _module_path(".".join(parts[:i]))
                if found is not None and found not in seen:
                    todo.append(found)
    return sorted(seen)


def build_key(modules: list[Path]) -> str:
    """What a compiled build depends on, hashed: see the note above."""
    digest = hashlib.sha256()
    try:
        from mypy.version import __version__ as mypy_version
    except ImportError:
        mypy_version = "none"
    for part in (
        sys.version,
        sysconfig.get_config_var("EXT_SUFFIX") or "",
        mypy_version,
        shlex.join(compiler()),
        "\n".join(str(m.relative_to(ROOT)) for m in modules),
    ):
        digest.update(part.encode() + b"\0")
    for path in [Path(__file__).resolve(), *imported_closure(modules)]:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:20]


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or ROOT / "build" / "compiled")


def _one_line(text: str) -> str:
    """The line of a failed build's output that says why (the last error line)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "error" in line.lower():
            return line
    return lines[-1] if lines else "no output"


def build_compiled() -> tuple[Path | None, str]:
    """The compiled modules' directory (cached, or built now), or None and why not.

    The directory holds the extension modules at their package paths
    (postoffice/core/resp/parser.cpython-311-x86_64-linux-gnu.so and mypyc's shared
    library beside `postoffice/`).
    """
    modules = compiled_modules()
    if not modules:
        return None, "pyproject.toml lists no module to compile"
    target = cache_root() / build_key(modules)
    if (target / COMPLETE).exists():
        return target, "cached"
    if shutil.which(compiler()[0]) is None:
        return None, f"no C compiler: {compiler()[0]!r} (sysconfig's CC, or $CC) is not on PATH"
    target.parent.mkdir(parents=True, exist_ok=True)
    # One build at a time per cache (make setup starts one early, the wheel's hook asks
    # again): the second waits, then finds the first one's result.
    with (target.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / COMPLETE).exists():
            return target, "cached"
        return _build_into(target, modules)


def _build_into(target: Path, modules: list[Path]) -> tuple[Path | None, str]:
    """mypyc's build of `modules` in a child process, moved to `target` once complete."""
    scratch = Path(tempfile.mkdtemp(prefix="mypyc-", dir=target.parent))
    try:
        argv = [sys.executable, str(Path(__file__).resolve()), "--mypyc-child", str(scratch)]
        argv += [str(m.relative_to(SRC)) for m in modules]
        try:
            done = subprocess.run(
                argv,
                cwd=SRC,
                capture_output=True,
                text=True,
                check=False,
                timeout=BUILD_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            return None, f"mypyc's build took more than {BUILD_TIMEOUT_S} s"
        if done.returncode != 0:
            return None, _one_line(done.stdout + "\n" + done.stderr)
        built = scratch / "lib"
        (built / COMPLETE).write_text(" ".join(m.name for m in modules) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        built.replace(target)
        return target, "built"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _compile_side_by_side() -> None:
    """Have distutils run the C compiler on one extension's files at once, one per CPU.

    Its own `--parallel` builds whole extensions at once, and mypyc's modules are one
    extension; within one it compiles file after file. This wraps the documented steps of
    CCompiler.compile (set up, then `_compile` per object) around a thread pool: each
    thread waits on its compiler process. Left as it is if that API ever changes.
    """
    from concurrent.futures import ThreadPoolExecutor
    from distutils.ccompiler import CCompiler  # setuptools' copy, once it is imported

    needed = ("_setup_compile", "_get_cc_args", "_compile")
    if not all(hasattr(CCompiler, name) for name in needed):
        return

    def compile_all(
        self: Any,
        sources: list[str],
        output_dir: str | None = None,
        macros: Any = None,
        include_dirs: Any = None,
        debug: bool = False,
        extra_preargs: Any = None,
        extra_postargs: Any = None,
        depends: Any = None,
    ) -> list[str]:
        macros, objects, extra_postargs, pp_opts, build = self._setup_compile(
            output_dir, macros, include_dirs, sources, depends, extra_postargs
        )
        cc_args = self._get_cc_args(pp_opts, debug, extra_preargs)

        def one(obj: str) -> None:
            src, ext = build[obj]
            self._compile(obj, src, ext, cc_args, extra_postargs, pp_opts)

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            list(pool.map(one, objects))
        return list(objects)

    CCompiler.compile = compile_all  # type: ignore[method-assign]


def _mypyc_child(scratch: Path, paths: list[str]) -> None:
    """Run in a child, from SRC: mypyc's C for `paths`, compiled into scratch/lib."""
    try:
        from mypyc.build import mypycify
        from setuptools import setup
    except ImportError as exc:
        raise SystemExit(f"error: mypyc or setuptools is not installed ({exc})") from exc
    # No config file: pyproject.toml's [tool.mypy] is the strict check of `make typecheck`,
    # and its warnings (an ignore left unused while a dependency is still being installed)
    # must not fail a build.
    mypy_args = ["--config-file=", "--ignore-missing-imports", "--cache-dir", str(scratch / "mypy")]
    # One C file per module (multi_file) rather than one of 14 MB, compiled side by side:
    # the C compiler's part drops from about 75 s to 27 s on two cores, and `make setup`
    # with it. The in-process command benchmark runs the same with either. (mypyc 1.x
    # writes no header for a multi-file build of one module: one module is one file.)
    extensions = mypycify(
        [*mypy_args, *paths],
        opt_level="3",
        target_dir=str(scratch / "c"),
        multi_file=len(paths) > 1,
    )
    _compile_side_by_side()
    try:
        setup(
            name="postoffice-compiled",
            packages=[],
            py_modules=[],
            ext_modules=extensions,
            script_args=[
                "--quiet",
                "build_ext",
                "--build-lib",
                str(scratch / "lib"),
                "--build-temp",
                str(scratch / "obj"),
            ],
        )
    except SystemExit as exc:  # setuptools' message quotes the compiler's whole argv
        if not exc.code:
            return
        status = re.search(r"exit (?:status|code) -?\d+", str(exc.code))
        why = status.group(0) if status else _one_line(str(exc.code))
        raise SystemExit(f"error: the C compiler {shlex.join(compiler())} failed: {why}") from None


def fallback_line(reason: str) -> str:
    """The one line a build without the compiled modules prints."""
    return (
        f"postoffice: compiled modules not built ({reason}); "
        "installing pure Python (it works the same, slower)"
    )


def compiled_files(built: Path) -> dict[str, str]:
    """Every extension module of a compiled build: its path -> its path in the wheel."""
    return {str(path): str(path.relative_to(built)) for path in sorted(built.rglob("*.so"))}


try:
    from hatchling.builders.hooks.plugin.interface import BuildHookInterface
except ImportError:  # run as a script, where hatchling need not be installed
    BuildHookInterface = None

if BuildHookInterface is not None:

    class BusExtensionHook(BuildHookInterface):  # type: ignore[misc,valid-type]
        """Hatchling's custom hook: the bus extension (in place for an editable install),
        and for a wheel the compiled modules."""

        PLUGIN_NAME = "custom"

        _scratch: str | None = None

        def dependencies(self) -> list[str]:
            if os.environ.get(SWITCH_ENV) == "0":
                return []
            return ["mypy>=1.10", "setuptools>=65"]

        def initialize(self, version: str, build_data: dict[str, Any]) -> None:
            if self.target_name != "wheel":
                return
            if version != "editable":
                self._add_compiled(build_data)
            if version == "editable":
                target = SOURCE.parent / extension_name()
            else:
                self._scratch = tempfile.mkdtemp(prefix="postoffice-bus-")
                target = Path(self._scratch) / extension_name()
            problem = compile_extension(target)
            if problem is not None:
                self.app.display_warning(
                    f"the bus's C extension was not built ({problem}); everything but "
                    "postoffice.bus works, and importing it will say what is missing"
                )
                return
            build_data["pure_python"] = False
            build_data["infer_tag"] = True
            if version != "editable":
                build_data["force_include"][str(target)] = f"{WHEEL_DIR}/{target.name}"

        def _add_compiled(self, build_data: dict[str, Any]) -> None:
            if os.environ.get(SWITCH_ENV) == "0":
                self.app.display_info(f"postoffice: pure Python ({SWITCH_ENV}=0)")
                return
            built, how = build_compiled()
            if built is None:
                self.app.display_warning(fallback_line(how))
                return
            self.app.display_info(f"postoffice: compiled modules {how} ({built})")
            build_data["pure_python"] = False
            build_data["infer_tag"] = True
            build_data["force_include"].update(compiled_files(built))

        def finalize(self, version: str, build_data: dict[str, Any], artifact: str) -> None:
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)
                self._scratch = None


def main(argv: list[str]) -> int:
    """`python hatch_build.py`: the bus extension in place; `--compiled`: the compiled
    modules into the cache, printing their directory, or one line saying why not."""
    if argv[:1] == ["--mypyc-child"]:
        _mypyc_child(Path(argv[1]), argv[2:])
        return 0
    if argv[:1] == ["--compiled"]:
        built, how = build_compiled()
        if built is None:
            print(fallback_line(how), file=sys.stderr)
            return 1
        print(built)
        return 0
    if argv[:1] == ["--key"]:
        print(build_key(compiled_modules()))
        return 0
    print(build_in_place(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
