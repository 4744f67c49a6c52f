"""The ingest server's cluster side without engines: its settings, a chunk's metadata in S3
and back, and an event's payload on the stream and back."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import cast

import pytest

from postoffice.core.errors import ConfigError
from postoffice.core.workers import WorkerPool
from postoffice.ingest.assembler import Assemblies
from postoffice.ingest.chunkdigest import digest_for, verify_chunk
from postoffice.ingest.cluster import Cluster, ClusterError
from postoffice.ingest.clustered import (
    ClusteredNode,
    chunk_meta,
    chunk_of,
    default_node_name,
    event_of,
    event_payload,
)
from postoffice.ingest.config import IngestConfig
from postoffice.ingest.errors import ErrorCode
from postoffice.ingest.events import AckHub, EventHub
from postoffice.ingest.messages import Chunk, Failed, FileId, Ping, Published
from postoffice.ingest.protocol import encode
from postoffice.ingest.storage import ChunkStore

NATS = "nats://127.0.0.1:4222,nats://127.0.0.1:4223"
S3 = "http://127.0.0.1:9000"


def _chunk(*, name: str = "report.log", framed: bool = False) -> Chunk:
    file_id, payload_digest = FileId(bytes(range(16))), bytes(range(100, 116))
    content_size, content_offset = (1_000_000, 300_000) if framed else (None, 0)
    data = b"\x28\xb5\x2f\xfd some bytes"
    digest = digest_for(
        file_id=file_id,
        index=3,
        total=9,
        size=90_000,
        name=name,
        payload_digest=payload_digest,
        data=data,
        content_size=content_size,
        content_offset=content_offset,
    )
    return Chunk(
        file_id=file_id,
        index=3,
        total=9,
        size=90_000,
        name=name,
        payload_digest=payload_digest,
        digest=digest,
        data=data,
        content_size=content_size,
        content_offset=content_offset,
    )


def test_a_cluster_config_needs_s3_and_a_bucket() -> None:
    with pytest.raises(ConfigError, match="'cluster' needs 's3'"):
        IngestConfig(cluster=NATS, bucket="uploads")
    with pytest.raises(ConfigError, match="'cluster' needs 'bucket'"):
        IngestConfig(cluster=NATS, s3=S3)


@pytest.mark.parametrize("setting", ["s3", "bucket", "node_name", "advertise"])
def test_a_cluster_setting_without_cluster_is_refused(setting: str) -> None:
    with pytest.raises(ConfigError, match=f"setting '{setting}' needs 'cluster'"):
        IngestConfig(**{setting: "x" * 5})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"cluster": "http://127.0.0.1:4222"}, "is not a nats://HOST:PORT URL"),
        ({"s3": "ftp://127.0.0.1"}, "is not http"),
        ({"bucket": "ab"}, "3 characters or more"),
        ({"node_name": "-a"}, "setting 'node_name': node name '-a'"),
        ({"advertise": ""}, "'advertise' must not be empty"),
    ],
)
def test_bad_cluster_settings_are_named(settings: dict[str, str], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        IngestConfig(**({"cluster": NATS, "s3": S3, "bucket": "uploads"} | settings))  # type: ignore[arg-type]


def test_the_cluster_settings_make_the_library_config() -> None:
    config = IngestConfig(cluster=NATS, s3=S3, bucket="uploads").cluster_config()
    assert config.nats_urls == ("nats://127.0.0.1:4222", "nats://127.0.0.1:4223")
    assert (config.s3_url, config.bucket) == (S3, "uploads")


def test_the_default_node_name_is_a_valid_one_ending_in_the_health_port() -> None:
    name = default_node_name(7000)
    assert name.endswith("-7000")
    IngestConfig(cluster=NATS, s3=S3, bucket="uploads", node_name=name)


@pytest.mark.parametrize(("name", "framed"), [("report.log", False), ("été 2024/..ünï.txt", True)])
def test_a_chunk_comes_back_whole_from_its_object_and_metadata(name: str, framed: bool) -> None:
    sent = _chunk(name=name, framed=framed)
    meta = chunk_meta(sent)
    assert all(value.isascii() for value in meta.values())
    back = chunk_of(sent.file_id, sent.index, bytes(sent.data), dict(meta))
    assert back == sent
    verify_chunk(back)


def test_a_chunk_object_without_its_metadata_is_refused() -> None:
    sent = _chunk()
    meta = chunk_meta(sent)
    del meta["po-total"]
    with pytest.raises(ClusterError, match=r"chunk 3 of .* bad metadata"):
        chunk_of(sent.file_id, 3, b"data", meta)
    with pytest.raises(ClusterError, match="bad metadata"):
        chunk_of(sent.file_id, 3, b"data", chunk_meta(sent) | {"po-size": "many"})


@pytest.mark.parametrize(
    "event",
    [
        Published(
            file_id=FileId(b"\x01" * 16),
            name="a.txt",
            size=12,
            digest=b"\x02" * 16,
            payload_digest=b"\x03" * 16,
            replaced=True,
        ),
        Failed(file_id=FileId(b"\x04" * 16), code=ErrorCode.ASSEMBLY, message="not zstd"),
    ],
)
def test_an_event_crosses_the_stream_unchanged(event: Published | Failed) -> None:
    assert event_of(event_payload(event)) == event


@pytest.mark.parametrize("payload", [b"", b"garbage that is no frame", encode(Ping(), 0)])
def test_a_stream_message_that_is_no_event_is_refused(payload: bytes) -> None:
    with pytest.raises(ClusterError, match="event"):
        event_of(payload)


class _FakeObjects:
    """The S3 seam a node's replicate uses, recording the calls it gets."""

    def __init__(self) -> None:
        self.listed: list[bytes] = []
        self.put: list[tuple[bytes, int]] = []
        self.deleted: list[bytes] = []

    async def chunk_indexes(self, file_id: bytes) -> list[int]:
        self.listed.append(file_id)
        return []

    async def put_chunk(
        self, file_id: bytes, index: int, data: bytes, meta: dict[str, str]
    ) -> None:
        self.put.append((file_id, index))

    async def delete_chunks(self, file_id: bytes) -> int:
        self.deleted.append(file_id)
        return 1


class _FakeClaims:
    """Holds every claim until told to lose them all, as a lapsed lease does."""

    def __init__(self) -> None:
        self.held = True

    def owns(self, file_id: bytes) -> bool:
        return self.held


class _FakeCluster:
    def __init__(self) -> None:
        self.objects = _FakeObjects()
        self.claims = _FakeClaims()


class _EmptyStore:
    """A chunk store that holds no upload."""

    def info(self, file_id: FileId) -> None:
        return None


def _replicating_node() -> tuple[ClusteredNode, _FakeObjects]:
    node, fake = _replicating_cluster()
    return node, fake.objects


def _replicating_cluster() -> tuple[ClusteredNode, _FakeCluster]:
    node = ClusteredNode(
        config=IngestConfig(cluster=NATS, s3=S3, bucket="uploads").cluster_config(),
        files_dir=Path("/nonexistent"),
        store=cast(ChunkStore, _EmptyStore()),
        pool=cast(WorkerPool, None),
        assemblies=cast(Assemblies, None),
        acks=cast(AckHub, None),
        events=cast(EventHub, None),
        known=lambda _: False,
        failure=lambda _: None,
    )
    fake = _FakeCluster()
    node.cluster = cast(Cluster, fake)
    return node, fake


def _only_chunk() -> Chunk:
    whole = _chunk()
    data = whole.data
    digest = digest_for(
        file_id=whole.file_id,
        index=0,
        total=1,
        size=whole.size,
        name=whole.name,
        payload_digest=whole.payload_digest,
        data=data,
        content_size=None,
        content_offset=0,
    )
    return dataclasses.replace(whole, index=0, total=1, digest=digest)


def test_the_only_chunk_of_an_upload_new_here_is_put_without_listing_s3() -> None:
    """An upload of one chunk has nothing in S3 its chunk does not bring: no adoption."""
    node, objects = _replicating_node()
    chunk = _only_chunk()
    asyncio.run(node.replicate(chunk))
    assert objects.listed == []
    assert objects.put == [(chunk.file_id, 0)]


def test_the_first_chunk_here_of_a_longer_upload_adopts_what_s3_holds_first() -> None:
    node, objects = _replicating_node()
    chunk = _chunk()  # chunk 3 of 9
    asyncio.run(node.replicate(chunk))
    assert objects.listed == [chunk.file_id]
    assert objects.put == [(chunk.file_id, 3)]


def test_a_chunk_whose_claim_went_during_its_put_is_not_committed() -> None:
    """A put delayed past the lease (a link cut, then back): the object is in S3 for the
    new owner, and the chunk is refused here rather than committed."""
    node, fake = _replicating_cluster()
    chunk = _only_chunk()
    original = fake.objects.put_chunk

    async def put_then_lapse(file_id: bytes, index: int, data: bytes, meta: dict[str, str]) -> None:
        await original(file_id, index, data, meta)
        fake.claims.held = False

    fake.objects.put_chunk = put_then_lapse  # type: ignore[method-assign]
    with pytest.raises(ClusterError, match=r"^chunk 0 of \w{32} not committed: this node lost"):
        asyncio.run(node.replicate(chunk))
    assert fake.objects.put == [(chunk.file_id, 0)]


@pytest.mark.parametrize("owned", [True, False])
def test_an_expired_upload_leaves_s3_only_when_this_node_owns_it(owned: bool) -> None:
    """The TTL cleanup forgets an upload: its owner deletes its chunk objects; a node that
    kept chunks of an upload another node took over leaves that node's objects alone."""
    node, fake = _replicating_cluster()
    fake.claims.held = owned

    async def expire() -> None:
        node.forget(_chunk().file_id)
        for _ in range(3):
            await asyncio.sleep(0)  # the background delete runs

    asyncio.run(expire())
    assert fake.objects.deleted == ([_chunk().file_id] if owned else [])
