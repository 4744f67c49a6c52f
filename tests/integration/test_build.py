"""The package's build, for real: `pip install .` of a copy of this checkout, with and
without a working C compiler (hatch_build.py's mypyc step and its one-line fallback)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import postoffice.command.connection
from tests.builds import compiled

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(600),
    # These build a copy of the checkout from scratch, whatever build runs the suite: the
    # pure suite's run is the test, a second one on the compiled build would repeat it.
    pytest.mark.skipif(
        compiled(postoffice.command.connection),
        reason="the build itself is tested once, in the pure suite",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
#: One small module with nothing of the package to import: mypyc's part stays short.
MODULE = "src/postoffice/core/resp/replies.py"
INSTALL_TIMEOUT_S = 500


def _checkout(tmp_path: Path) -> Path:
    """A copy of the checkout's build inputs whose pyproject.toml compiles MODULE only."""
    tree = tmp_path / "tree"
    tree.mkdir(parents=True)
    for name in ("hatch_build.py", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    shutil.copytree(
        ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("*.so", "__pycache__")
    )
    pyproject = (ROOT / "pyproject.toml").read_text()
    listed, count = re.subn(
        r"(?ms)^mypyc-modules = \[.*?^\]", f'mypyc-modules = ["{MODULE}"]', pyproject
    )
    assert count == 1, "pyproject.toml has no mypyc-modules list"
    (tree / "pyproject.toml").write_text(listed)
    return tree


def _install(tree: Path, site: Path, cache: Path, *, isolated: bool = True, **env: str) -> str:
    """`pip install -v --target site tree` as a user runs it (an isolated build, which
    installs the build's own requirements first), or, not `isolated`, with the ones this
    interpreter has (`make setup`'s way: seconds instead of half a minute); its output."""
    environment = {**os.environ, "POSTOFFICE_BUILD_CACHE": str(cache), **env}
    environment.pop("PYTHONPATH", None)
    argv = [sys.executable, "-m", "pip", "install", "-v", "--no-deps"]
    if not isolated:
        argv.append("--no-build-isolation")
    argv += ["--target", str(site), str(tree)]
    done = subprocess.run(
        argv,
        env=environment,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    return output


def _import_from(site: Path, module: str) -> str:
    """The file `module` is loaded from, in a fresh interpreter that sees only `site`."""
    code = f"import {module} as m; print(m.__file__)"
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_without_a_working_compiler_the_install_is_pure_python_and_says_so_in_one_line(
    tmp_path: Path,
) -> None:
    site = tmp_path / "site"
    # The fallback is hatch_build.py's: the build's isolation does not change it.
    output = _install(
        _checkout(tmp_path), site, tmp_path / "cache", isolated=False, CC="/bin/false"
    )
    said = [line.strip() for line in output.splitlines() if "compiled modules not built" in line]
    assert len(said) == 1, output[-3000:]
    assert re.fullmatch(
        r"postoffice: compiled modules not built \(error: the C compiler /bin/false failed: "
        r"exit (status|code) 1\); "
        r"installing pure Python \(it works the same, slower\)",
        said[0],
    ), said
    assert not list(site.rglob("*__mypyc*")), "a pure install holds mypyc's library"
    replies = _import_from(site, "postoffice.core.resp.replies")
    assert replies == str(site / "postoffice" / "core" / "resp" / "replies.py")
    # And it works: the CLI runs from it, down to a server's options.
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run(
        [sys.executable, "-m", "postoffice", "command", "serve", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "--max-connections" in done.stdout


def test_with_a_compiler_the_install_has_the_listed_module_compiled(tmp_path: Path) -> None:
    site = tmp_path / "site"
    cache = tmp_path / "cache"
    output = _install(_checkout(tmp_path), site, cache)
    assert "compiled modules not built" not in output
    replies = _import_from(site, "postoffice.core.resp.replies")
    assert replies.startswith(str(site / "postoffice" / "core" / "resp" / "replies."))
    assert replies.endswith(".so"), replies
    assert _import_from(site, "postoffice.core.resp.parser").endswith("parser.py")
    # The compiled part was kept: a second install reuses it instead of compiling again.
    (built,) = [path for path in cache.iterdir() if (path / ".complete").exists()]
    again = _install(_checkout(tmp_path / "again"), tmp_path / "site2", cache, isolated=False)
    assert f"compiled modules cached ({built})" in again
