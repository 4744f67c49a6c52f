"""The ack-port events across nodes: a PUBLISHED or FAILED payload published on the JetStream
stream PO_INGEST_EVENTS under its file id's subject, and every node's consumer of it."""

# Design: each node reads the stream through its own durable pull consumer (named after the
# node, replicated like the stream), so a consumer outlives the death of any one NATS
# server and a node restarted under its name resumes where it stopped; a new consumer
# starts at new messages. A fetch that fails (a leader election, a reconnect) is retried
# after a short pause, and the subscription is made again when the consumer is gone.
# A publish carries a message id (JetStream drops a duplicate within its window), so it is
# retried safely for the publish timeout while the stream elects a leader.

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Final, final

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from postoffice.ingest.cluster.errors import ClusterError
from postoffice.ingest.cluster.records import (
    EVENTS_STREAM,
    EVENTS_SUBJECT_PREFIX,
    event_subject,
    file_id_of,
)
from postoffice.ingest.cluster.replicas import create_replicated
from postoffice.ingest.messages import FileId

log = logging.getLogger(__name__)

#: Events older than this are dropped from the stream: every live node has read them.
EVENTS_MAX_AGE_S: Final = 24 * 3600.0
#: Messages asked for per fetch, and how long one fetch waits for the first.
FETCH_BATCH: Final = 64
FETCH_WAIT_S: Final = 1.0
#: An event not acknowledged within this is delivered again (the callback failed).
ACK_WAIT_S: Final = 30.0
_RETRY_S: Final = 0.1
#: The header JetStream deduplicates publishes by.
_MSG_ID: Final = "Nats-Msg-Id"

#: Called with the file id and the event payload, once per event (again if it raises).
OnEvent = Callable[[FileId, bytes], Awaitable[None]]


def consumer_name(node: str) -> str:
    """The durable consumer of `node`: its name with '.' (not allowed there) replaced, and
    a short hash of the name so that two names never meet in one consumer."""
    digest = hashlib.blake2s(node.encode(), digest_size=4).hexdigest()
    return f"po-events-{node.replace('.', '_')}-{digest}"


async def ensure_stream(
    js: JetStreamContext, *, replicas: tuple[int, ...], timeout_s: float
) -> None:
    """Create the events stream when it is missing, with the first of `replicas` the
    cluster can hold. Raises ClusterError."""
    try:
        await asyncio.wait_for(js.stream_info(EVENTS_STREAM), timeout_s)
        return
    except nats.js.errors.NotFoundError:
        pass
    except (TimeoutError, nats.errors.Error) as exc:
        raise ClusterError(f"cannot read stream {EVENTS_STREAM}: {exc!r}") from exc

    async def create(count: int) -> None:
        config = api.StreamConfig(
            name=EVENTS_STREAM,
            subjects=[EVENTS_SUBJECT_PREFIX + ">"],
            num_replicas=count,
            storage=api.StorageType.FILE,
            max_age=EVENTS_MAX_AGE_S,
            duplicate_window=120.0,
        )
        # two nodes creating it at once is fine: the same config is accepted twice
        await asyncio.wait_for(js.add_stream(config), timeout_s)

    try:
        await create_replicated(create, replicas, f"stream {EVENTS_STREAM}")
    except (TimeoutError, nats.errors.Error) as exc:
        raise ClusterError(f"cannot create stream {EVENTS_STREAM}: {exc!r}") from exc


@final
class Events:
    """Publishes this node's events and feeds every node's events to `on_event`."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        node: str,
        on_event: OnEvent | None,
        timeout_s: float,
        publish_timeout_s: float,
        idle_s: float,
    ) -> None:
        self._js = js
        self._idle_s = idle_s
        self.node = node
        self._on_event = on_event
        self._timeout_s = timeout_s
        self._publish_timeout_s = publish_timeout_s
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0

    async def publish(self, file_id: bytes, payload: bytes) -> int:
        """Publish one event payload for `file_id`; return its stream sequence. Retried
        (deduplicated by message id) for the publish timeout, through a leader election.
        Raises ClusterError."""
        subject = event_subject(file_id)
        headers = {_MSG_ID: f"{self.node}-{uuid.uuid4().hex}"}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._publish_timeout_s
        while True:
            left = deadline - loop.time()
            try:
                ack = await self._js.publish(
                    subject, payload, timeout=max(0.1, min(left, 1.0)), headers=headers
                )
                return ack.seq
            except (TimeoutError, nats.errors.Error) as exc:
                if loop.time() + _RETRY_S >= deadline:
                    raise ClusterError(f"cannot publish event on {subject}: {exc!r}") from exc
                await asyncio.sleep(_RETRY_S)

    async def start(self) -> None:
        """Create this node's consumer (new events only) and start feeding `on_event`.
        Raises ClusterError when the consumer cannot be made."""
        subscription = await self._subscribe()
        self._task = asyncio.create_task(self._consume(subscription), name=f"po-events-{self.node}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.NEW,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT_S,
            max_ack_pending=1024,
            # removed by JetStream once no fetch has come for this long (the node is gone)
            inactive_threshold=self._idle_s,
        )
        try:
            return await asyncio.wait_for(
                self._js.pull_subscribe(
                    EVENTS_SUBJECT_PREFIX + ">",
                    durable=consumer_name(self.node),
                    stream=EVENTS_STREAM,
                    config=config,
                ),
                self._timeout_s,
            )
        except (TimeoutError, nats.errors.Error) as exc:
            raise ClusterError(
                f"cannot create the events consumer of {self.node}: {exc!r}"
            ) from exc

    async def _consume(self, subscription: JetStreamContext.PullSubscription) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked_at = loop.time()
            try:
                messages = await subscription.fetch(FETCH_BATCH, timeout=FETCH_WAIT_S)
            except TimeoutError:
                # nothing new; a fetch that gives up at once (disconnected) must not spin
                if loop.time() - asked_at < FETCH_WAIT_S / 2:
                    await asyncio.sleep(_RETRY_S)
                continue
            except nats.js.errors.NotFoundError:
                subscription = await self._resubscribe(subscription)
                continue
            except nats.errors.Error as exc:
                log.debug("node=%s events fetch failed: %r", self.node, exc)
                await asyncio.sleep(_RETRY_S)
                continue
            for message in messages:
                await self._deliver(message)

    async def _resubscribe(
        self, old: JetStreamContext.PullSubscription
    ) -> JetStreamContext.PullSubscription:
        try:
            await old.unsubscribe()
        except nats.errors.Error:
            pass
        while True:
            try:
                return await self._subscribe()
            except ClusterError as exc:
                log.debug("%s", exc)
                await asyncio.sleep(_RETRY_S)

    async def _deliver(self, message: Msg) -> None:
        try:
            file_id = file_id_of(message.subject.removeprefix(EVENTS_SUBJECT_PREFIX))
        except ClusterError as exc:
            log.warning("event on %s ignored: %s", message.subject, exc)
            await self._ack(message)
            return
        if self._on_event is not None:
            try:
                await self._on_event(file_id, message.data)
            except Exception:
                # the consumer's boundary: the event stays unacknowledged and comes again
                log.exception("node=%s file_id=%s event callback failed", self.node, file_id.hex())
                return
        self.delivered += 1
        await self._ack(message)

    async def _ack(self, message: Msg) -> None:
        try:
            await message.ack()
        except nats.errors.Error as exc:
            # the event comes again after ack_wait: the callback must take it twice
            log.debug("node=%s event ack failed: %r", self.node, exc)

    def __repr__(self) -> str:
        return f"<Events {self.node} delivered={self.delivered}>"
