"""A placeholder's subscribers moving to new files: restore, mark, rebind."""

from __future__ import annotations

import pytest

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from postoffice.bus import BusConfigError, Subscriber, memory
from tests.bus.fixtures import MakeRig


def test_a_subscriber_follows_its_placeholder_to_the_new_files(make_rig: MakeRig) -> None:
    old = make_rig(placeholder=True, num_slots=4)
    new = make_rig(num_slots=8, metadata_bytes=8)
    user = old.register_subscriber(reliable=True, max_active=2)
    moves: list[int] = []

    def reopen() -> None:
        moves.append(1)
        subscriber.rebind(new.channel, new.triggers())

    subscriber = Subscriber(
        old.channel, user, triggers=old.triggers(), eventfd=old.subscriber_fds[user],
        on_replaced=reopen,
    )  # fmt: skip
    old.users.append(subscriber)
    assert subscriber.read() is None
    new.channel.restore_subscriber(user, reliable=True, max_active_messages=2)
    new.subscriber_fds[user] = old.subscriber_fds.pop(user)
    new.triggers().set_subscriber(user, new.subscriber_fds[user])
    publisher = new.publisher(reliable=True)
    publisher.publish_bytes(b"first", metadata=b"m")
    assert subscriber.read() is None  # not told yet: still on the placeholder
    old.channel.mark_replaced()
    assert subscriber.wait(0)
    message = subscriber.read()
    assert message is not None
    assert (bytes(message.data), bytes(message.metadata), message.ordinal) == (b"first", b"m", 1)
    assert moves == [1]
    assert new.channel.is_reliable_subscriber(user)
    assert new.channel.max_active_messages(user) == 2
    message.release()
    assert new.channel.slot_words(0)[1:] == (0, 0)


def test_a_restored_id_in_use_is_refused(make_rig: MakeRig) -> None:
    rig = make_rig()
    user = rig.register_subscriber()
    with pytest.raises(BusConfigError, match=rf"^subscriber id {user} is in use or out of range$"):
        rig.channel.restore_subscriber(user, reliable=False, max_active_messages=1)


def test_only_a_placeholder_is_watched(make_rig: MakeRig) -> None:
    rig = make_rig()
    calls: list[int] = []
    user = rig.register_subscriber()
    subscriber = Subscriber(
        rig.channel, user, triggers=rig.triggers(), eventfd=rig.subscriber_fds[user],
        on_replaced=lambda: calls.append(1),
    )  # fmt: skip
    rig.users.append(subscriber)
    rig.channel.mark_replaced()
    assert subscriber.read() is None
    assert calls == []
    assert rig.channel.flags & memory.FLAG_PLACEHOLDER == 0
