"""AckHub: who watches which file ids, and the bound on them all together."""

from __future__ import annotations

from postoffice.ingest.events import AckHub
from postoffice.ingest.messages import FileId, Message, Ping


class FakeSubscriber:
    def __init__(self) -> None:
        self.watching: set[FileId] = set()
        self.pushed: list[Message] = []
        self.aborted: str | None = None

    def push(self, message: Message) -> None:
        self.pushed.append(message)

    def abort(self, reason: str) -> None:
        self.aborted = reason


def ids(first: int, count: int) -> tuple[FileId, ...]:
    return tuple(FileId(n.to_bytes(16, "big")) for n in range(first, first + count))


def test_past_its_limit_the_hub_drops_the_subscriber_watching_the_most() -> None:
    """A thousand ack connections at 65,536 ids each would have cost 24 GB: the hub keeps
    a limit over all of them, and makes room by dropping the largest watcher."""
    hub = AckHub(limit=10)
    greedy, modest, newcomer = FakeSubscriber(), FakeSubscriber(), FakeSubscriber()
    hub.subscribe(greedy, ids(0, 6))
    hub.subscribe(modest, ids(100, 3))
    assert hub.watched == 9
    assert hub.make_room(newcomer, 3)
    assert greedy.aborted is not None
    assert modest.aborted is None
    assert greedy.watching == set()
    assert hub.watched == 3
    hub.subscribe(newcomer, ids(200, 3))
    hub.publish(ids(0, 1)[0], Ping())
    assert greedy.pushed == []
    hub.unsubscribe(greedy)  # its connection closes later: nothing is counted twice
    assert hub.watched == 6


def test_the_largest_watcher_asking_for_more_is_refused_and_nobody_dropped() -> None:
    hub = AckHub(limit=10)
    greedy, modest = FakeSubscriber(), FakeSubscriber()
    hub.subscribe(greedy, ids(0, 6))
    hub.subscribe(modest, ids(100, 3))
    assert not hub.make_room(greedy, 2)
    assert (greedy.aborted, modest.aborted) == (None, None)
    assert hub.watched == 9
    assert hub.make_room(greedy, 1)  # room enough: nobody goes


def test_a_hub_without_a_limit_never_drops_anyone() -> None:
    hub = AckHub()
    subscriber = FakeSubscriber()
    hub.subscribe(subscriber, ids(0, 5000))
    assert hub.make_room(FakeSubscriber(), 10_000)
    assert subscriber.aborted is None
