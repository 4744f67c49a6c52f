"""The server-wide commands under --workers: the seam the handlers ask (Cluster) and the
replies made from its answers, which arrive as JSON and are checked here.

Command layer; the worker's implementation is command/worker.py's WorkerCluster.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from postoffice.command.errors import CommandError
from postoffice.core.resp import OK, Bulk, Integer, Reply, bulk


class Cluster(Protocol):
    """With --workers N > 1: the server-wide commands, asked of every worker.

    Each method sends the question on its way and returns a future of the JSON answer
    (merged from every worker); the future fails with a CommandError when a worker does
    not answer in time.
    """

    def client_lines(self, ids: list[int] | None) -> asyncio.Future[object]:
        """Every worker's CLIENT LIST lines (only those of `ids` when given)."""
        ...

    def kill_clients(
        self, *, conn_id: int | None, addr: str | None, skip_id: int | None, caller_id: int | None
    ) -> asyncio.Future[object]:
        """Close the matching clients wherever they are (the caller after its reply):
        how many."""
        ...

    def info(self) -> asyncio.Future[object]:
        """The INFO sections, summed over the workers."""
        ...

    def config_set(self, pairs: list[tuple[str, str]]) -> asyncio.Future[object]:
        """Apply settings (already applied in this worker) in every other one."""
        ...

    def reset_stats(self) -> asyncio.Future[object]:
        """Zero the statistics of every other worker."""
        ...

    def config_rewrite(self) -> asyncio.Future[object]:
        """Have the primary write the server's settings back to its --config file; the
        future fails with a CommandError when there is none or the write fails."""
        ...


def client_list_reply(value: object) -> Bulk:
    """CLIENT LIST's reply from the workers' lines."""
    lines = _strings(value)
    return bulk("".join(line + "\n" for line in lines))


def _strings(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CommandError(f"bad answer from the other workers: {value!r:.100}")
    return value


def _count(value: object) -> int:
    if not isinstance(value, int):
        raise CommandError(f"bad answer from the other workers: {value!r:.100}")
    return value


def killed_one_reply(value: object) -> Reply:
    """The old CLIENT KILL addr's reply: OK, or `No such client` when none was killed."""
    if not _count(value):
        raise CommandError("No such client")
    return OK


def killed_reply(value: object) -> Reply:
    """CLIENT KILL's reply: how many were killed."""
    return Integer(value=_count(value))


def done_reply(value: object) -> Reply:
    """OK, once every worker has done it."""
    return OK


def info_sections(value: object) -> dict[str, dict[str, object]]:
    """The merged INFO sections; raises CommandError for an answer of another shape."""
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise CommandError(f"bad answer from the other workers: {value!r:.100}")
    return value


__all__ = [
    "Cluster",
    "client_list_reply",
    "done_reply",
    "info_sections",
    "killed_one_reply",
    "killed_reply",
]
