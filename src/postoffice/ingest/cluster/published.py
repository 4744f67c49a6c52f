"""The po_ingest_published records: the PUBLISHED fields of a file id, created once by the node
that completed the file's multipart upload, readable by every node."""

from __future__ import annotations

import asyncio
from typing import final

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from postoffice.ingest.cluster.errors import ClusterError
from postoffice.ingest.cluster.records import PublishedRecord, file_key


@final
class Publications:
    """The published records of the cluster."""

    def __init__(self, kv: KeyValue, *, timeout_s: float) -> None:
        self._kv = kv
        self._timeout_s = timeout_s

    async def record(self, record: PublishedRecord) -> PublishedRecord:
        """Create the record of `record.file_id` unless one exists; return the record that
        stands (ours, or the one another node created first). Raises ClusterError."""
        key = file_key(record.file_id)
        try:
            await asyncio.wait_for(self._kv.create(key, record.encode()), self._timeout_s)
        except nats.js.errors.KeyWrongLastSequenceError:
            found = await self.get(record.file_id)
            if found is None:
                raise ClusterError(f"published record {key} exists but cannot be read") from None
            return found
        except (TimeoutError, nats.errors.Error) as exc:
            raise ClusterError(f"cannot create published record {key}: {exc!r}") from exc
        return record

    async def get(self, file_id: bytes) -> PublishedRecord | None:
        """The record of `file_id`, None if it was never published. Raises ClusterError."""
        key = file_key(file_id)
        try:
            entry = await asyncio.wait_for(self._kv.get(key), self._timeout_s)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        except (TimeoutError, nats.errors.Error) as exc:
            raise ClusterError(f"cannot read published record {key}: {exc!r}") from exc
        return PublishedRecord.decode(key, entry.value or b"")
