"""Errors of the office: the director cannot run or a service would not start; a
simulation config is bad, a run breaks an invariant, its event log is unreadable, or a
control socket request is bad or refused."""

from __future__ import annotations

from postoffice.core.errors import (
    BrokenError,
    ConfigError,
    LimitExceeded,
    PostOfficeError,
    ProtocolError,
    StorageError,
)


class DirectorError(PostOfficeError):
    """The director itself cannot run (another director owns the data dir, say)."""


class ServiceStartError(BrokenError):
    """A child died, could not be spawned, or stayed silent before it was ready."""


class ServiceFailedError(ServiceStartError):
    """The child said in its ready file why it could not start; `reason` is its message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OfficeConfigError(ConfigError):
    """A simulation config is missing, unreadable, or has a bad key or value; the message
    names the key."""


class InvariantError(PostOfficeError):
    """The simulation broke one of its own rules (tickets issued != served + not served +
    in progress, say): the run ends with cause error."""


class EventLogError(StorageError):
    """A run's event log is missing, damaged, or holds what no run wrote."""


class ControlProtocolError(ProtocolError):
    """A control socket peer sent what the office control protocol does not allow."""


class ControlLimitError(ControlProtocolError, LimitExceeded):
    """A control socket peer passed a limit (frame size, clients, idle time)."""

    wire_code = LimitExceeded.wire_code


class ControlRefusedError(PostOfficeError):
    """The simulation cannot do what a control request asks (its run has ended, say)."""

    wire_code = "REFUSED"


class NotRunningError(BrokenError):
    """No simulation answers on the control socket under the data directory."""


class RolesProtocolError(ProtocolError):
    """Bytes between the multi-process run's director and a role process that are not
    one of their messages."""


class ChildLostError(BrokenError):
    """A process of the multi-process run died, went silent or could not start: the run
    ends with cause error, naming it."""
