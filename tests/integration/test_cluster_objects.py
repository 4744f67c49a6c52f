"""The cluster's bytes in S3 against a real moto_server: chunks stored, listed, read and
deleted; a 64 MiB file streamed as a multipart upload, whole and exact; an aborted one
leaving nothing behind."""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Iterator

import pytest

from postoffice.ingest.cluster import ClusterError, Objects
from postoffice.ingest.cluster.objects import PART_BYTES, open_store
from postoffice.ingest.messages import FileId
from tests.integration.cluster_harness import (
    S3_KEY_ID,
    S3_SECRET,
    MotoServer,
    cluster_config,
    moto_server,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SEED = 0x0B1EC7


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with moto_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def objects(s3: MotoServer) -> Objects:
    # no NATS is needed for the objects: the URL is never dialled
    return Objects(open_store(cluster_config("nats://127.0.0.1:4222", s3)))


def _pending_uploads(s3: MotoServer) -> list[object]:
    import boto3  # type: ignore[import-untyped]  # moto brings it, without type stubs

    client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint,
        aws_access_key_id=S3_KEY_ID,
        aws_secret_access_key=S3_SECRET,
        region_name="us-east-1",
    )
    uploads: list[object] = client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", [])
    return uploads


async def test_chunks_are_put_listed_read_and_deleted(objects: Objects) -> None:
    rng = random.Random(SEED)
    fid, other = FileId(rng.randbytes(16)), FileId(rng.randbytes(16))
    chunks = {index: rng.randbytes(rng.randrange(1, 4096)) for index in (0, 2, 7, 10, 123)}
    for index, data in chunks.items():
        await objects.put_chunk(fid, index, data)
    await objects.put_chunk(other, 0, b"another upload")
    assert await objects.chunk_indexes(fid) == [0, 2, 7, 10, 123]
    for index, data in chunks.items():
        assert await objects.get_chunk(fid, index) == data
    await objects.put_chunk(fid, 2, b"rewritten")  # a resend overwrites the same object
    assert await objects.get_chunk(fid, 2) == b"rewritten"
    assert await objects.delete_chunks(fid) == 5
    assert await objects.chunk_indexes(fid) == []
    assert await objects.chunk_indexes(other) == [0], "another upload's chunks stay"
    with pytest.raises(ClusterError, match=r"^cannot get chunks/[0-9a-f]{32}/00000002: "):
        await objects.get_chunk(fid, 2)


async def test_a_64_mib_file_streams_as_a_multipart_upload_and_arrives_exact(
    objects: Objects, s3: MotoServer
) -> None:
    data = random.Random(SEED).randbytes(64 << 20)
    writer = await objects.open_file("big.bin")
    piece = 1 << 20
    for start in range(0, len(data), piece):
        await writer.write(data[start : start + piece])
        if start == 32 << 20:
            assert await objects.file_size("big.bin") is None, "invisible until completed"
    await writer.complete()
    assert writer.written == len(data)
    assert len(data) // PART_BYTES >= 8, "several parts, not one put"
    assert await objects.file_size("big.bin") == len(data)
    got = await objects.get_file("big.bin")
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    assert _pending_uploads(s3) == []


async def test_an_aborted_file_leaves_no_object_and_no_parts(
    objects: Objects, s3: MotoServer
) -> None:
    writer = await objects.open_file("aborted.bin")
    await writer.write(random.Random(SEED).randbytes(3 * PART_BYTES // 2))
    await writer.abort()
    assert await objects.file_size("aborted.bin") is None
    assert _pending_uploads(s3) == []
    with pytest.raises(ClusterError, match=r"^write to files/aborted\.bin after its upload ended$"):
        await writer.write(b"late")


async def test_a_wrong_bucket_is_a_clear_error(s3: MotoServer) -> None:
    config = cluster_config("nats://127.0.0.1:4222", s3, connect_timeout_s=1.0)
    objects = Objects(open_store(dataclasses.replace(config, bucket="no-such-bucket")))
    with pytest.raises(ClusterError, match=r"^cannot list bucket no-such-bucket: .*404"):
        await objects.check()
