"""The bytes in S3 (through obstore): each upload's chunks under chunks/<hex>/, and a published
file streamed into a multipart upload at files/<name>, completed as the atomic publish."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Final, TypeVar, final

import obstore
import obstore.exceptions
from obstore.store import S3Store

from postoffice.ingest.cluster.config import ClusterConfig
from postoffice.ingest.cluster.errors import ClusterError
from postoffice.ingest.cluster.records import chunk_index_of, chunk_path, chunk_prefix, file_path

if TYPE_CHECKING:
    from obstore import AsyncWritableFile, Attributes

log = logging.getLogger(__name__)

#: Parts of a multipart upload are this large (S3 wants 5 MiB or more but the last).
PART_BYTES: Final = 8 * 1024 * 1024
#: Parts of one file in flight at once.
PART_CONCURRENCY: Final = 4
#: Retries of one request (connection errors, 5xx) before it fails.
MAX_RETRIES: Final = 3
_T = TypeVar("_T")


def open_store(config: ClusterConfig) -> S3Store:
    """The obstore client of the configured bucket: path-style requests, plain HTTP allowed
    for a local endpoint, connect and request timeouts and retries bounded by the config.
    Raises ClusterError when obstore refuses the settings."""
    options: dict[str, object] = {}
    credentials = config.credentials()
    if credentials is not None:
        options["access_key_id"], options["secret_access_key"] = credentials
    try:
        return S3Store(
            config.bucket,
            endpoint=config.s3_url,
            region=config.region,
            virtual_hosted_style_request=False,
            client_options={
                "allow_http": config.s3_url.startswith("http://"),
                "connect_timeout": timedelta(seconds=config.connect_timeout_s),
                "timeout": timedelta(seconds=max(config.request_timeout_s, 30.0)),
            },
            retry_config={
                "max_retries": MAX_RETRIES,
                "retry_timeout": timedelta(seconds=config.request_timeout_s),
            },
            **options,  # type: ignore[arg-type]  # the two credential keys of S3Config
        )
    except obstore.exceptions.BaseError as exc:
        raise ClusterError(f"cannot configure S3 store {config.s3_url}: {exc}") from exc


async def _s3(call: Awaitable[_T], what: str) -> _T:
    """Await one obstore call, its failures made ClusterError naming `what`."""
    try:
        return await call
    except (obstore.exceptions.BaseError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ClusterError(f"cannot {what}: {reason}") from exc


@final
class Objects:
    """One bucket's chunk objects and published files."""

    def __init__(self, store: S3Store) -> None:
        self.store = store

    async def check(self) -> None:
        """List one object of the bucket: ClusterError when S3 or the bucket is not there."""
        stream = obstore.list(self.store, "chunks/", chunk_size=1)
        try:
            await _s3(stream.__anext__(), f"list bucket {self.store.config.get('bucket')}")
        except StopAsyncIteration:
            pass

    async def put_chunk(
        self,
        file_id: bytes,
        index: int,
        data: bytes | memoryview,
        meta: Mapping[str, str] | None = None,
    ) -> None:
        """Store chunk `index` of an upload (a chunk is acknowledged only after this), with
        `meta` as the object's user metadata (ASCII values). Raises ClusterError."""
        path = chunk_path(file_id, index)
        attributes: Attributes = dict(meta or {})
        await _s3(obstore.put_async(self.store, path, data, attributes=attributes), f"put {path}")

    async def get_chunk_meta(self, file_id: bytes, index: int) -> tuple[bytes, dict[str, str]]:
        """The bytes of chunk `index` and the user metadata it was put with; ClusterError
        if it is missing or S3 fails."""
        path = chunk_path(file_id, index)
        result = await _s3(obstore.get_async(self.store, path), f"get {path}")
        data = await _s3(result.bytes_async(), f"read {path}")
        return data.to_bytes(), {str(k): v for k, v in result.attributes.items()}

    async def get_chunk(self, file_id: bytes, index: int) -> bytes:
        """The bytes of chunk `index`; ClusterError if it is missing or S3 fails."""
        path = chunk_path(file_id, index)
        result = await _s3(obstore.get_async(self.store, path), f"get {path}")
        data = await _s3(result.bytes_async(), f"read {path}")
        return data.to_bytes()

    async def chunk_indexes(self, file_id: bytes) -> list[int]:
        """The indexes of the chunks stored for an upload, ascending (a node taking it
        over asks the client only for the others). Raises ClusterError."""
        prefix = chunk_prefix(file_id)
        metas = await _s3(obstore.list(self.store, prefix).collect_async(), f"list {prefix}")
        return sorted(chunk_index_of(meta["path"], file_id) for meta in metas)

    async def delete_chunks(self, file_id: bytes) -> int:
        """Delete every chunk of an upload (after its publish or abort); returns how many
        there were. Raises ClusterError."""
        prefix = chunk_prefix(file_id)
        metas = await _s3(obstore.list(self.store, prefix).collect_async(), f"list {prefix}")
        paths = [meta["path"] for meta in metas]
        if paths:
            await _s3(obstore.delete_async(self.store, paths), f"delete {prefix}")
        return len(paths)

    async def open_file(self, name: str) -> FileWriter:
        """A multipart upload of the published file `name`; nothing is visible at
        files/<name> until FileWriter.complete(). Raises ClusterError."""
        path = file_path(name)
        writer = obstore.open_writer_async(
            self.store, path, buffer_size=PART_BYTES, max_concurrency=PART_CONCURRENCY
        )
        return FileWriter(writer, path)

    async def file_size(self, name: str) -> int | None:
        """The size of the published file `name`, None if there is none."""
        path = file_path(name)
        try:
            meta = await obstore.head_async(self.store, path)
        except FileNotFoundError:
            return None
        except (obstore.exceptions.BaseError, OSError) as exc:
            raise ClusterError(f"cannot head {path}: {exc}") from exc
        return int(meta["size"])

    async def get_file(self, name: str) -> bytes:
        """The whole published file `name` (for checks and small files). Raises ClusterError."""
        path = file_path(name)
        result = await _s3(obstore.get_async(self.store, path), f"get {path}")
        data = await _s3(result.bytes_async(), f"read {path}")
        return data.to_bytes()

    def __repr__(self) -> str:
        return f"<Objects bucket={self.store.config.get('bucket')}>"


@final
class FileWriter:
    """A published file being streamed to S3 as a multipart upload: `write` the output in
    order, then `complete` (the atomic publish) or `abort` (no object, no parts kept)."""

    def __init__(self, writer: AsyncWritableFile, path: str) -> None:
        self._writer = writer
        self.path = path
        self.written = 0
        self._done = False

    async def write(self, data: bytes) -> None:
        """Append `data`; parts go up as they fill. Raises ClusterError."""
        if self._done:
            raise ClusterError(f"write to {self.path} after its upload ended")
        await _s3(self._writer.write(data), f"write {self.path}")
        self.written += len(data)

    async def complete(self) -> None:
        """Upload the last part and complete the upload: files/<name> appears whole.
        Raises ClusterError (the upload is then aborted)."""
        if self._done:
            raise ClusterError(f"complete of {self.path} after its upload ended")
        self._done = True
        try:
            await _s3(self._writer.close(), f"complete {self.path}")
        except ClusterError:
            await self._abort_quietly()
            raise

    async def abort(self) -> None:
        """Abandon the upload: its parts are deleted and no object appears."""
        if self._done:
            return
        self._done = True
        await self._abort_quietly()

    async def _abort_quietly(self) -> None:
        # obstore aborts the multipart upload when its writer leaves a block by an error
        try:
            await self._writer.__aexit__(ClusterError, ClusterError("aborted"), None)
        except (obstore.exceptions.BaseError, OSError, ValueError) as exc:
            log.warning("path=%s multipart abort failed: %s", self.path, exc)

    def __repr__(self) -> str:
        state = "DONE" if self._done else "WRITING"
        return f"<FileWriter {self.path} {state} written={self.written}>"
