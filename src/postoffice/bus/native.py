"""The bus's C extension, loaded once: a clear BusUnavailableError when it was not built.

Every bus module takes its atomics from here, so the import fails in one place, with
one message, whichever part of the bus is imported first.
"""

from __future__ import annotations

from postoffice.bus.errors import BusUnavailableError

try:
    import postoffice.bus._atomics as atomics
except ImportError as exc:
    raise BusUnavailableError(
        "postoffice.bus needs its C extension postoffice.bus._atomics, which is not built "
        f"or cannot be loaded ({exc}); it is compiled when the package is installed, "
        "which needs a C compiler (gcc or cc) and Python's C headers (Debian: apt-get "
        "install gcc python3-dev): install them and reinstall (make setup), or run "
        "`python hatch_build.py` in a source checkout"
    ) from exc

__all__ = ["atomics"]
