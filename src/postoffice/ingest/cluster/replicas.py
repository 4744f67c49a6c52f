"""How many copies the buckets and the events stream are created with.

The servers a client knows say nothing about the cluster's size: nats-server may not
advertise its peers, and a node may be given one URL of a three-server cluster. So
JetStream itself is asked: the creation tries three replicas (or the number configured),
and only when the server answers that it has too few servers for that many does it try
fewer, down to one, with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import nats.js.errors

log = logging.getLogger(__name__)

#: Replicas when none are configured, tried first.
DEFAULT_REPLICAS: Final = 3
#: JetStream API error codes for "not that many servers": insufficient resources (a
#: cluster smaller than the replicas) and replicas > 1 on a server that is not clustered.
TOO_FEW_SERVERS: Final = frozenset({10023, 10074})

_T = TypeVar("_T")


def replica_choices(configured: int | None) -> tuple[int, ...]:
    """The replica counts to try in order: only the configured one, else 3, 2, 1."""
    if configured is not None:
        return (configured,)
    return tuple(range(DEFAULT_REPLICAS, 0, -1))


async def create_replicated(
    create: Callable[[int], Awaitable[_T]], choices: tuple[int, ...], what: str
) -> tuple[_T, int]:
    """`create(replicas)` with the first of `choices` the cluster has servers for; returns
    its result and the replicas used. Other errors, and too few servers for the last
    choice, propagate."""
    for replicas in choices[:-1]:
        try:
            return await create(replicas), replicas
        except nats.js.errors.APIError as exc:
            if exc.err_code not in TOO_FEW_SERVERS:
                raise
            log.info("%s: the cluster has too few servers for %d replicas", what, replicas)
    replicas = choices[-1]
    result = await create(replicas)
    if replicas < DEFAULT_REPLICAS and len(choices) > 1:
        log.warning(
            "%s created with %d replica(s): it does not survive a server's loss", what, replicas
        )
    return result, replicas
