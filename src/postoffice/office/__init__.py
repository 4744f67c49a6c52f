"""The office: the director behind `postoffice up` (and, later, the simulation and dashboard)."""

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
