"""What the command server counts, named once: INFO, /metrics and RESETSTAT derive from it."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, fields
from typing import Final, final


def _counter(info: str) -> int:
    """A counter field; `info` is the name INFO's stats section shows it under."""
    return field(default=0, metadata={"info": info})


@final
@dataclass(slots=True)
class CommandStats:
    """The command server's own counters (the connection manager keeps the connections').

    Every int field is a counter that only grows until RESETSTAT, shown by INFO under its
    `info` name and on /metrics under its field name. `calls` counts each command by name.
    """

    commands: int = _counter("total_commands_processed")
    protocol_errors: int = _counter("protocol_errors")
    unknown_commands: int = _counter("unknown_commands")
    auth_refusals: int = _counter("auth_refusals")
    auth_failures: int = _counter("auth_failures")  # wrong passwords (AUTH, HELLO AUTH)
    rate_limited: int = _counter("rate_limited_commands")
    calls: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    # Traffic of connections already gone: the live ones' is read from them. Not reset,
    # as Redis keeps total_net_input_bytes across RESETSTAT too.
    closed_bytes_in: int = 0
    closed_bytes_out: int = 0

    def counters(self) -> dict[str, int]:
        """The resettable counters by field name."""
        return {name: getattr(self, name) for name in RESETTABLE}

    def reset(self) -> None:
        """RESETSTAT: every resettable counter and the per-command calls back to zero."""
        for name in RESETTABLE:
            setattr(self, name, 0)
        self.calls.clear()


#: The counters RESETSTAT zeroes, in field order.
RESETTABLE: Final = tuple(f.name for f in fields(CommandStats) if "info" in f.metadata)

#: INFO's `stats` counters and the stats() key each one shows: the connection manager's,
#: the traffic, then CommandStats' own.
INFO_COUNTERS: Final = (
    ("total_connections_received", "connections_accepted"),
    ("total_net_input_bytes", "bytes_in"),
    ("total_net_output_bytes", "bytes_out"),
    ("rejected_connections", "connections_rejected"),
    ("timed_out_connections", "connections_timed_out"),
    *((f.metadata["info"], f.name) for f in fields(CommandStats) if "info" in f.metadata),
)

#: The stats() keys that only grow (Prometheus counters); the rest are gauges.
STATS_COUNTERS: Final = (
    "connections_accepted",
    "connections_rejected",
    "connections_timed_out",
    "connections_closed",
    *RESETTABLE,
    "bytes_in",
    "bytes_out",
)

__all__ = ["INFO_COUNTERS", "RESETTABLE", "STATS_COUNTERS", "CommandStats"]
