"""Build hook: compiles the bus's C extension (src/postoffice/bus/_atomics.c) into the wheel.

An editable install gets the .so beside the sources (git ignores it); a wheel gets it in
postoffice/bus/ and a platform tag. Without a C compiler or Python's headers the install
still succeeds, with a warning: `import postoffice.bus` then says what is missing, and
the other services work as before. `python hatch_build.py` rebuilds it in place.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
SOURCE = ROOT / "src" / "postoffice" / "bus" / "_atomics.c"
MODULE = "_atomics"
WHEEL_DIR = "postoffice/bus"


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


try:
    from hatchling.builders.hooks.plugin.interface import BuildHookInterface
except ImportError:  # run as a script, where hatchling need not be installed
    BuildHookInterface = None

if BuildHookInterface is not None:

    class BusExtensionHook(BuildHookInterface):  # type: ignore[misc,valid-type]
        """Hatchling's custom hook: the bus extension into the wheel (or in place)."""

        PLUGIN_NAME = "custom"

        _scratch: str | None = None

        def initialize(self, version: str, build_data: dict[str, Any]) -> None:
            if self.target_name != "wheel":
                return
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

        def finalize(self, version: str, build_data: dict[str, Any], artifact: str) -> None:
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)
                self._scratch = None


if __name__ == "__main__":
    print(build_in_place(), file=sys.stderr)
