"""The command server: text lines and the Redis protocol on one port, a worker pool, limits."""

from __future__ import annotations

from postoffice.command.config import CommandConfig
from postoffice.command.server import CommandConnection, CommandServer

__all__ = ["CommandConfig", "CommandConnection", "CommandServer"]
