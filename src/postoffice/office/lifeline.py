"""Tie a process's life to its parent's (PR_SET_PDEATHSIG), for the multi-process run's
children; `python -m postoffice.office.lifeline PARENT SIGNAL -- ARGV...` does so and
then execs ARGV (the bus server, which knows nothing of the office). Office layer."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Final

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG: Final = 1  # prctl(2) option number from <linux/prctl.h>


def die_with_parent(parent: int, sig: signal.Signals) -> None:
    """Ask the kernel to send `sig` to this process when its parent (pid `parent`) dies,
    and exit at once if it already has. The setting survives exec. Off Linux: nothing.

    Raises OSError if prctl fails."""
    if not sys.platform.startswith("linux"):
        return
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    if prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(errno)}")
    # The parent may have died before the prctl: the kernel would never tell us.
    if os.getppid() != parent:
        os._exit(1)


def main(argv: list[str]) -> None:
    """PARENT SIGNAL -- ARGV...: die with PARENT by SIGNAL (a name), then exec ARGV."""
    if len(argv) < 4 or argv[2] != "--":
        sys.exit("usage: python -m postoffice.office.lifeline PARENT SIGNAL -- ARGV...")
    die_with_parent(int(argv[0]), signal.Signals[argv[1]])
    os.execv(argv[3], argv[3:])


if __name__ == "__main__":
    main(sys.argv[1:])
