"""The office: the director behind `postoffice up`, and the simulation (`postoffice office`:
rules.py, engine.py, tally.py ...; its modules are used by the CLI, not through this API)."""

from __future__ import annotations

from postoffice.office.director import Director
from postoffice.office.services import (
    SERVICES,
    ChildState,
    ChildStatus,
    DirectorError,
    Launch,
    ServiceFailedError,
    ServiceSpec,
    ServiceStartError,
    describe_exit,
    select_services,
    serve_argv,
)

__all__ = [
    "SERVICES",
    "ChildState",
    "ChildStatus",
    "Director",
    "DirectorError",
    "Launch",
    "ServiceFailedError",
    "ServiceSpec",
    "ServiceStartError",
    "describe_exit",
    "select_services",
    "serve_argv",
]
