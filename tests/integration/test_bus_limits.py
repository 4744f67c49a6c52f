"""The 64-user limits of a channel and of a mux (one bit each of the CCB's 64-bit masks),
through a real server: the 65th is refused with a clear error, and the server serves on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from postoffice.bus import Client, Publisher, Subscriber, TooManyUsersError
from tests.integration.test_bus_server import WAIT_S, Bus, served_bus

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

LIMIT = 64
#: Enough slots for 64 unreliable subscribers under the admission rule (1 + 64 + 64 + 1).
SLOTS = 256


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    yield from served_bus(tmp_path)


def test_a_65th_subscriber_is_refused_and_a_freed_place_is_given_again(bus: Bus) -> None:
    with Client(bus.socket, name="many", timeout_s=WAIT_S) as client:
        subscribers = [
            client.create_subscriber("crowd", num_slots=SLOTS, slot_size=64) for _ in range(LIMIT)
        ]
        assert sorted(s.subscriber_id for s in subscribers) == list(range(LIMIT))
        with pytest.raises(
            TooManyUsersError,
            match=r"^channel 'crowd' has 64 subscribers, the limit \(each is one bit of a "
            r"64-bit mask\)$",
        ):
            client.create_subscriber("crowd")
        [info] = client.channel_info("crowd")
        assert info.subscribers == LIMIT
        client.remove_subscriber(subscribers[10])
        assert client.create_subscriber("crowd").subscriber_id == 10
        # The refusal cost nothing else: a publisher still reaches all 64.
        publisher = client.create_publisher("crowd")
        publisher.publish_bytes(b"to all")
        [info] = client.channel_info("crowd")
        assert (info.publishers, info.subscribers) == (1, LIMIT)


def test_a_65th_publisher_is_refused(bus: Bus) -> None:
    with Client(bus.socket, name="many", timeout_s=WAIT_S) as client:
        publishers = [
            client.create_publisher("loud", num_slots=SLOTS, slot_size=64) for _ in range(LIMIT)
        ]
        assert sorted(p.publisher_id for p in publishers) == list(range(LIMIT))
        with pytest.raises(
            TooManyUsersError, match=r"^channel 'loud' has 64 publishers, the limit"
        ):
            client.create_publisher("loud")
        client.remove_publisher(publishers[3])
        assert client.create_publisher("loud").publisher_id == 3


def test_the_virtual_channels_of_a_mux_share_its_64_subscribers(bus: Bus) -> None:
    """A mux's vchans are users of the mux's one CCB: 64 in all, not 64 each."""
    with Client(bus.socket, name="many", timeout_s=WAIT_S) as client:
        users: list[Subscriber] = [
            client.create_subscriber(f"v{n % 4}", mux="m", num_slots=SLOTS, slot_size=64)
            for n in range(LIMIT)
        ]
        with pytest.raises(TooManyUsersError, match=r"^channel 'm' has 64 subscribers, the limit"):
            client.create_subscriber("v9", mux="m")
        assert len(users) == LIMIT


def test_the_virtual_channels_of_a_mux_share_its_64_publishers(bus: Bus) -> None:
    with Client(bus.socket, name="many", timeout_s=WAIT_S) as client:
        users: list[Publisher] = [
            client.create_publisher(f"v{n % 4}", mux="m", num_slots=SLOTS, slot_size=64)
            for n in range(LIMIT)
        ]
        with pytest.raises(TooManyUsersError, match=r"^channel 'm' has 64 publishers, the limit"):
            client.create_publisher("v9", mux="m")
        assert len(users) == LIMIT
