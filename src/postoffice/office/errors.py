"""Errors of the director: it cannot run, or a service it runs would not start."""

from __future__ import annotations

from postoffice.core.errors import BrokenError, PostOfficeError


class DirectorError(PostOfficeError):
    """The director itself cannot run (another director owns the data dir, say)."""


class ServiceStartError(BrokenError):
    """A child died, could not be spawned, or stayed silent before it was ready."""


class ServiceFailedError(ServiceStartError):
    """The child said in its ready file why it could not start; `reason` is its message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
