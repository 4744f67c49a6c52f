"""Upload ownership: claims in po_ingest_owners (create, take over from a dead owner, release),
each write checked against the key's revision, and the fenced local view of what we own."""

# Design: a claim is a first write of the file id's key (expected revision 0), refused
# when the key exists. A key that names a dead node is taken over by a write expecting
# both the key's revision and the bucket's last sequence (read before the key), so of two
# nodes taking over at once exactly one wins: see _write for why the key's revision alone
# is not enough on nats-server 2.9.10. A released key (a deletion marker) is claimed the
# same way. We hold the revision of each key we own, and lose a claim when another
# revision of its key appears (watched: a takeover after we were seen dead, a deletion)
# or when our lease lapses; either way it leaves the held set and `on_lost` says why. A
# fenced node makes no write at all. A later `claim()` re-reads the key: one that still
# names us is ours again at its current revision, so a lapse nobody acted on costs nothing.

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar, final

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from postoffice.ingest.cluster.config import ClusterConfig
from postoffice.ingest.cluster.errors import ClusterError
from postoffice.ingest.cluster.nodes import Nodes
from postoffice.ingest.cluster.records import OWNERS_BUCKET, Claim, file_id_of, file_key
from postoffice.ingest.messages import FileId
from postoffice.ingest.ownership import Owner

log = logging.getLogger(__name__)

#: Rounds of create / read / take over before claim() gives up: a round is lost when
#: another node wrote the key in between or, for a takeover, anything in the bucket.
MAX_CLAIM_ROUNDS: Final = 8
_RETRY_S: Final = 0.2
#: JetStream's error code for a write whose expected last revision is not the key's.
_WRONG_LAST_SEQUENCE: Final = 10071
_T = TypeVar("_T")


class LostReason(enum.Enum):
    """Why a claim left us."""

    TAKEN_OVER = "taken_over"  # another node wrote the key (we were seen dead)
    RELEASED_ELSEWHERE = "released_elsewhere"  # the key was deleted by another node
    LEASE_LAPSED = "lease_lapsed"  # we could not renew our heartbeat for lease_s


#: Called on the event loop with the file id and the reason, once per lost claim.
OnLost = Callable[[FileId, LostReason], None]


@final
class Claims:
    """This node's claims on uploads (see the design note)."""

    def __init__(
        self,
        kv: KeyValue,
        js: JetStreamContext,
        *,
        nodes: Nodes,
        config: ClusterConfig,
        on_lost: OnLost | None = None,
    ) -> None:
        self._kv = kv
        self._js = js
        self._stream = f"KV_{OWNERS_BUCKET}"
        self._prefix = f"$KV.{OWNERS_BUCKET}."
        self._nodes = nodes
        self._config = config
        self._on_lost = on_lost
        #: Told (on the event loop) of each upload another node hands over as it drains,
        #: so whoever remembers that node as the owner asks again.
        self.on_handed_over: Callable[[FileId], None] | None = None
        self._held: dict[FileId, int] = {}
        self._epochs: dict[FileId, int] = {}
        self._watch_task: asyncio.Task[None] | None = None

    @property
    def me(self) -> Owner:
        return self._nodes.me

    def owns(self, file_id: bytes) -> bool:
        """True when we hold the claim on `file_id` and our lease is current: the check
        before taking a chunk of that upload."""
        return FileId(file_id) in self._held and not self._nodes.fenced

    def held(self) -> dict[FileId, int]:
        """The claims we hold, by file id, with the revision of each key."""
        return dict(self._held)

    def epoch(self, file_id: bytes) -> int | None:
        """The epoch of our claim on `file_id` (1 for the first owner), None if not ours."""
        return self._epochs.get(FileId(file_id)) if FileId(file_id) in self._held else None

    async def claim(self, file_id: bytes) -> Owner:
        """Claim the upload `file_id`: create its key, adopt it if it names us, or take it
        over if it names a dead node (or was released). Returns our Owner when the claim is
        ours, else the live owner's. Raises ClusterError when NATS fails, when we are
        fenced and would have to write, or when the key keeps changing."""
        fid = FileId(file_id)
        key = file_key(fid)
        for _ in range(MAX_CLAIM_ROUNDS):
            self._check_lease(key)
            first = Claim(node=self.me.node, epoch=1)
            created = await self._write(key, first, last_revision=0)
            if created is not None:
                return self._hold(fid, created, 1)
            found = await self._read(key)
            if found is not None and not found[1].handed_over:
                if found[1].node == self.me.node:
                    return self._hold(fid, found[0], found[1].epoch)
                if await self._nodes.alive(found[1].node):
                    owner = self._nodes.owner(found[1].node)
                    if owner is not None:
                        return owner
            # A write over an existing revision: read the stream's last sequence first,
            # then the key again, and make the write expect both (see _write).
            last_stream = await self._stream_last_sequence()
            again = await self._read(key)
            if again != found:
                continue  # the key moved between our reads: look again
            if again is None:
                over = await self._tombstone_revision(key)
                if over is None:
                    continue  # written again meanwhile, or purged: look again
                successor = first
            else:
                over, successor = again[0], again[1].taken_over_by(self.me.node)
            self._check_lease(key)
            written = await self._write(key, successor, last_revision=over, last_stream=last_stream)
            if written is None:
                continue  # another node wrote the key, or anything else the bucket
            if again is not None:
                log.info(
                    "file_id=%s taken over from %s node=%s epoch=%d",
                    key,
                    "draining" if again[1].handed_over else "dead",
                    again[1].node,
                    successor.epoch,
                )
            return self._hold(fid, written, successor.epoch)
        raise ClusterError(f"claim of {key} did not settle in {MAX_CLAIM_ROUNDS} rounds")

    async def find(self, file_id: bytes) -> Owner | None:
        """The owner of `file_id` without claiming a free id: None when no claim holds it
        (its key absent or released); ours or the live owner's when one does; a claim
        naming a dead node is taken over, as `claim` does. Raises as `claim` does, a
        fenced node at once: it can tell nothing it would stand by."""
        key = file_key(file_id)
        self._check_lease(key)
        found = await self._read(key)
        if found is None:
            return None
        revision, claim = found
        if claim.handed_over:
            return await self.claim(file_id)  # its owner drains: taken over at once
        if claim.node == self.me.node:
            return self._hold(FileId(file_id), revision, claim.epoch)
        if await self._nodes.alive(claim.node):
            owner = self._nodes.owner(claim.node)
            if owner is not None:
                return owner
        return await self.claim(file_id)  # a dead node's: taken over as a chunk would

    def _check_lease(self, key: str) -> None:
        # a fenced node must not write: others may already hold it dead (the lease is
        # shorter than their stale_s), and its write would race their takeover
        if self._nodes.fenced:
            raise ClusterError(f"node {self.me.node} is fenced: cannot claim {key}")

    async def _read(self, key: str) -> tuple[int, Claim] | None:
        """The key's revision and claim; None when it is deleted or absent."""
        try:
            entry = await self._call(self._kv.get(key))
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        assert entry.revision is not None
        return entry.revision, Claim.decode(entry.value or b"")

    async def _tombstone_revision(self, key: str) -> int | None:
        """The revision of the deletion marker a released key holds, None if there is none."""
        try:
            await self._call(self._kv.get(key))
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError) as exc:
            # nats-py reports a deleted key as not found, with the marker as its entry
            entry = exc.entry
            return entry.revision if entry is not None and entry.revision else None
        return None  # written again meanwhile: the caller's next round reads it

    async def _stream_last_sequence(self) -> int:
        try:
            info = await asyncio.wait_for(
                self._js.stream_info(self._stream), self._config.request_timeout_s
            )
        except (TimeoutError, nats.errors.Error) as exc:
            raise ClusterError(f"cannot read stream {self._stream}: {exc!r}") from exc
        return int(info.state.last_seq)

    async def _write(
        self, key: str, claim: Claim, *, last_revision: int, last_stream: int | None = None
    ) -> int | None:
        """Write `claim` to `key` if the key is at revision `last_revision` (0: has never
        been written) and, when `last_stream` is given, nothing at all was written to the
        bucket after that sequence; return the new revision, or None when refused.

        nats-server before 2.9.21 checks a key's expected revision (seq > 0) only when the
        stream leader proposes the write, against what it has applied, so two writes
        proposed together can both pass. The stream's expected last sequence is checked
        again as each replica applies the write, so of two such writes one fails there.
        The price: a takeover retries when any other claim lands in between. A first
        write (revision 0) is checked as it is applied in every version, and so is not
        given `last_stream` (nats-py's own create, which retries a deleted key with the
        tombstone's revision, is not used: that retry is the racy kind).
        """
        headers = {api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(last_revision)}
        if last_stream is not None:
            headers[api.Header.EXPECTED_LAST_SEQUENCE.value] = str(last_stream)
        try:
            ack = await self._call(
                self._js.publish(self._prefix + key, claim.encode(), headers=headers)
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code == _WRONG_LAST_SEQUENCE:
                return None
            raise ClusterError(f"cannot write claim {key}: {exc!r}") from exc
        return int(ack.seq)

    async def release(self, file_id: bytes) -> bool:
        """Delete our claim on `file_id` (after its publish or abort), only if the key is
        still at the revision we wrote. True when deleted; False when the claim was not
        ours (any more). Raises ClusterError when NATS fails."""
        fid = FileId(file_id)
        revision = self._held.pop(fid, None)
        self._epochs.pop(fid, None)
        if revision is None:
            return False
        try:
            await self._call(self._kv.delete(file_key(fid), last=revision))
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code == _WRONG_LAST_SEQUENCE:
                return False
            raise ClusterError(f"cannot release {file_key(fid)}: {exc!r}") from exc
        return True

    async def hand_over(self, file_id: bytes) -> bool:
        """Give up our claim on `file_id` for another node to take over at once (we drain):
        the key, if still at the revision we wrote, is marked handed over, keeping its
        epoch. True when marked; False when the claim was not ours (any more). Raises
        ClusterError when NATS fails; the claim is then no longer held here either."""
        fid = FileId(file_id)
        key = file_key(fid)
        revision = self._held.pop(fid, None)
        epoch = self._epochs.pop(fid, None)
        if revision is None or epoch is None:
            return False
        handed = Claim(node=self.me.node, epoch=epoch).handed()
        for _ in range(MAX_CLAIM_ROUNDS):
            # As a takeover writes (see _write): the stream's last sequence is checked too,
            # so this write and a takeover proposed together cannot both land.
            last_stream = await self._stream_last_sequence()
            found = await self._read(key)
            if found is None or found[0] != revision:
                return False  # taken over or released meanwhile
            if await self._write(key, handed, last_revision=revision, last_stream=last_stream):
                return True
        raise ClusterError(f"hand-over of {key} did not settle in {MAX_CLAIM_ROUNDS} rounds")

    # -- losing claims --------------------------------------------------------------------

    def lapse(self) -> None:
        """Our lease lapsed: every claim is lost (Nodes calls this)."""
        lost = list(self._held)
        self._held.clear()
        self._epochs.clear()
        for fid in lost:
            self._lose(fid, LostReason.LEASE_LAPSED)

    def _lose(self, fid: FileId, reason: LostReason) -> None:
        log.warning("file_id=%s claim lost: %s", fid.hex(), reason.value)
        if self._on_lost is not None:
            self._on_lost(fid, reason)

    def _seen(self, key: str, revision: int, operation: str | None, value: bytes) -> None:
        try:
            fid = file_id_of(key)
        except ClusterError:
            return
        held = self._held.get(fid)
        if held is None:
            if self.on_handed_over is not None and operation not in (KV_DEL, KV_PURGE):
                try:
                    claim = Claim.decode(value)
                except ClusterError:
                    return
                if claim.handed_over and claim.node != self.me.node:
                    self.on_handed_over(fid)
            return
        if revision <= held:
            return
        if operation not in (KV_DEL, KV_PURGE):
            try:
                if Claim.decode(value).node == self.me.node:
                    return  # a claim() of ours raced its own watcher; it holds the revision
            except ClusterError:
                pass
        del self._held[fid]
        self._epochs.pop(fid, None)
        deleted = operation in (KV_DEL, KV_PURGE)
        self._lose(fid, LostReason.RELEASED_ELSEWHERE if deleted else LostReason.TAKEN_OVER)

    async def start(self) -> None:
        """Start watching po_ingest_owners for other nodes' writes to our keys."""
        self._watch_task = asyncio.create_task(self._watch(), name=f"po-claims-{self.me.node}")

    async def stop(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            await asyncio.gather(self._watch_task, return_exceptions=True)
            self._watch_task = None

    async def _watch(self) -> None:
        while True:
            try:
                watcher = await self._kv.watchall()
            except (TimeoutError, nats.errors.Error) as exc:
                log.debug("owners watcher not started: %r", exc)
                await asyncio.sleep(_RETRY_S)
                continue
            try:
                while True:
                    try:
                        entry = await watcher.updates(timeout=self._config.stale_s)  # type: ignore[no-untyped-call]  # nats-py leaves KeyWatcher untyped
                    except TimeoutError:
                        continue  # quiet is normal: no upload changed hands
                    if entry is not None and not isinstance(entry, KeyValue.Entry):
                        break  # the watcher was stopped under us: start another
                    if entry is not None and entry.revision is not None:
                        self._seen(entry.key, entry.revision, entry.operation, entry.value or b"")
            except nats.errors.Error as exc:
                log.debug("owners watcher restarts: %r", exc)
            finally:
                with contextlib.suppress(TimeoutError, nats.errors.Error):
                    await asyncio.wait_for(
                        watcher.stop(),  # type: ignore[no-untyped-call]  # untyped in nats-py
                        self._config.request_timeout_s,
                    )

    def _hold(self, fid: FileId, revision: int, epoch: int) -> Owner:
        self._held[fid] = max(revision, self._held.get(fid, 0))
        self._epochs[fid] = epoch
        return self.me

    async def _call(self, call: Awaitable[_T]) -> _T:
        """Await one KV request within the request timeout; NATS's own errors about the
        key pass through, the rest become ClusterError."""
        try:
            return await asyncio.wait_for(call, self._config.request_timeout_s)
        except (
            nats.js.errors.KeyWrongLastSequenceError,
            nats.js.errors.KeyNotFoundError,
            nats.js.errors.KeyDeletedError,
            nats.js.errors.BadRequestError,
        ):
            raise
        except (TimeoutError, nats.errors.Error) as exc:
            raise ClusterError(f"owners bucket request failed: {exc!r}") from exc

    def __repr__(self) -> str:
        return f"<Claims {self.me.node} held={len(self._held)} fenced={self._nodes.fenced}>"
