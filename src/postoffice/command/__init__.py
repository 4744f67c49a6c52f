"""The command server of seed 001: text lines and RESP2 on one port, a worker pool, limits."""

from __future__ import annotations

from postoffice.command.config import CommandConfig
from postoffice.command.server import CommandConnection, CommandServer

__all__ = ["CommandConfig", "CommandConnection", "CommandServer"]
