"""Choosing the replicas of the buckets and the stream: three unless JetStream says it has
too few servers, the configured count and nothing else when one is set."""

from __future__ import annotations

import asyncio

import pytest
from nats.js.errors import APIError, ServerError

from postoffice.ingest.cluster.replicas import create_replicated, replica_choices


def test_choices_are_three_down_to_one_or_only_the_configured_count() -> None:
    assert replica_choices(None) == (3, 2, 1)
    assert replica_choices(5) == (5,)
    assert replica_choices(1) == (1,)


class _Cluster:
    """A JetStream that holds at most `servers` replicas and records what was asked."""

    def __init__(self, servers: int, err_code: int) -> None:
        self.servers = servers
        self.err_code = err_code
        self.asked: list[int] = []

    async def create(self, replicas: int) -> str:
        self.asked.append(replicas)
        if replicas > self.servers:
            raise ServerError(code=500, description="too few", err_code=self.err_code)
        return f"made with {replicas}"


@pytest.mark.parametrize(
    ("servers", "err_code", "used"),
    [(3, 10023, 3), (5, 10023, 3), (2, 10023, 2), (1, 10074, 1)],
)
def test_fewer_replicas_are_tried_only_when_the_cluster_is_too_small(
    servers: int, err_code: int, used: int
) -> None:
    cluster = _Cluster(servers, err_code)
    got = asyncio.run(create_replicated(cluster.create, replica_choices(None), "bucket"))
    assert got == (f"made with {used}", used)
    assert cluster.asked == list(range(3, used - 1, -1))


def test_a_configured_count_the_cluster_cannot_hold_is_an_error() -> None:
    cluster = _Cluster(1, 10023)
    with pytest.raises(APIError) as raised:
        asyncio.run(create_replicated(cluster.create, replica_choices(3), "bucket"))
    assert raised.value.err_code == 10023
    assert cluster.asked == [3]


def test_any_other_refusal_is_not_retried_with_fewer() -> None:
    cluster = _Cluster(1, 10058)  # stream name already in use with a different config
    with pytest.raises(APIError) as raised:
        asyncio.run(create_replicated(cluster.create, replica_choices(None), "bucket"))
    assert raised.value.err_code == 10058
    assert cluster.asked == [3]
