"""Multiplexers and virtual channels through a real server and forked client processes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from postoffice.bus import BusMismatchError, Client, wire
from tests.integration.test_bus_server import WAIT_S, Bus, expect, fork, served_bus

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

PER_PUBLISHER = 300


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    yield from served_bus(tmp_path)


def _read(conn: Connection, socket_path: Path, vchan: str, count: int) -> list[tuple[int, str]]:
    """Subscribe (to `vchan` of mux "m", or to "m" itself for ""), read `count`
    messages reliably: (own ordinal, payload) of each, and the drops."""
    with Client(socket_path, name=f"reader {vchan}") as client:
        if vchan:
            subscriber = client.create_subscriber(vchan, mux="m", reliable=True, num_slots=16)
        else:
            subscriber = client.create_subscriber("m", reliable=True, num_slots=16)
        conn.send(("registered", None))
        got: list[tuple[int, str]] = []
        while len(got) < count:
            message = subscriber.read()
            if message is None:
                assert subscriber.wait(WAIT_S), f"message {len(got)} did not come"
                continue
            with message:
                got.append((message.ordinal, bytes(message.data).decode()))
        assert subscriber.drops == 0
        return got


def _publish(conn: Connection, socket_path: Path, vchan: str, tag: str) -> list[int]:
    with Client(socket_path, name=f"writer {tag}") as client:
        publisher = client.create_publisher(vchan, mux="m", reliable=True, num_slots=16)
        conn.send(("registered", None))
        ordinals: list[int] = []
        for n in range(PER_PUBLISHER):
            while (ordinal := publisher.publish_bytes(f"{tag}{n}".encode())) is None:
                assert publisher.wait(WAIT_S), "no slot came free"
            ordinals.append(ordinal)
        return ordinals


def test_subscribers_on_the_mux_and_on_vchans_across_processes(bus: Bus) -> None:
    """Two publisher processes on vchan a, one on vchan b, all reliable: each vchan's
    subscriber gets exactly its vchan's messages, numbered 1..n without gaps, each
    publisher's in its order; the mux's subscriber gets all of them."""
    with bus.client("setup") as client:
        # The mux and its vchans come first, so the readers of "m" see every message.
        client.create_subscriber("a", mux="m", num_slots=16)
        readers = []
        for vchan, count in (("a", 2 * PER_PUBLISHER), ("b", PER_PUBLISHER), ("", 0)):
            total = count or 3 * PER_PUBLISHER
            process, conn = fork(_read, bus.socket, vchan, total)
            expect(conn, "registered")
            readers.append((vchan, process, conn))
        writers = []
        for vchan, tag in (("a", "x"), ("a", "y"), ("b", "z")):
            process, conn = fork(_publish, bus.socket, vchan, tag)
            expect(conn, "registered")
            writers.append((vchan, tag, conn))
        published = {tag: expect(conn) for _, tag, conn in writers}
        results = {vchan: expect(conn) for vchan, _, conn in readers}
        infos = {info.name: info for info in client.channel_info()}
    assert sorted(published["x"] + published["y"]) == list(range(1, 2 * PER_PUBLISHER + 1))
    assert published["z"] == list(range(1, PER_PUBLISHER + 1))
    for vchan, tags in (("a", "xy"), ("b", "z")):
        got = results[vchan]
        assert [ordinal for ordinal, _ in got] == list(range(1, len(got) + 1))
        for tag in tags:
            assert [p for _, p in got if p[0] == tag] == [f"{tag}{n}" for n in range(PER_PUBLISHER)]
        assert {p[0] for _, p in got} == set(tags)
    whole = results[""]
    assert [ordinal for ordinal, _ in whole] == list(range(1, 3 * PER_PUBLISHER + 1))
    for tag in "xyz":
        assert [p for _, p in whole if p[0] == tag] == [f"{tag}{n}" for n in range(PER_PUBLISHER)]
    assert infos["m"].flags & wire.CHANNEL_MUX
    assert infos["a"].mux == "m"
    assert infos["a"].flags & wire.CHANNEL_VIRTUAL


def test_mux_and_plain_channel_names_do_not_mix(bus: Bus) -> None:
    with bus.client() as client:
        client.create_publisher("plain", num_slots=8)
        client.create_publisher("v", mux="m", num_slots=8)
        with pytest.raises(BusMismatchError, match=r"^channel 'plain' is not a mux$"):
            client.create_subscriber("w", mux="plain")
        with pytest.raises(BusMismatchError, match=r"^channel 'plain' is not a virtual channel"):
            client.create_subscriber("plain", mux="m")
        with pytest.raises(BusMismatchError, match=r"^channel 'v' is a virtual channel of mux 'm'"):
            client.create_subscriber("v")
        with pytest.raises(BusMismatchError, match=r"^virtual channel 'v' is on mux 'm', not"):
            client.create_publisher("v", mux="other")
        with pytest.raises(
            BusMismatchError, match=r"^channel 'm' has 8 slots, the publisher asks for 4$"
        ):
            client.create_publisher("v2", mux="m", num_slots=4)


def test_ls_shows_muxes_and_their_vchans(bus: Bus) -> None:
    with bus.client() as client:
        client.create_publisher("left", mux="m", num_slots=8)
        client.create_subscriber("right", mux="m", reliable=True)
        listed = [json.loads(line) for line in bus.cli("ls", "--json").splitlines()]
        table = bus.cli("ls")
    by_name = {record["name"]: record for record in listed}
    assert by_name["m"]["flags"] & wire.CHANNEL_MUX
    assert (by_name["left"]["mux"], by_name["left"]["publishers"]) == ("m", 1)
    assert (by_name["right"]["mux"], by_name["right"]["reliable_subscribers"]) == ("m", 1)
    assert "vchan of m" in table
    assert "mux" in table


def test_a_vchan_goes_with_its_last_user_and_the_mux_with_its_own(bus: Bus) -> None:
    with bus.client() as client:
        publisher = client.create_publisher("one", mux="m", num_slots=8)
        subscriber = client.create_subscriber("two", mux="m")
        client.remove_publisher(publisher)
        assert {info.name for info in client.channel_info()} >= {"m", "two"}
        assert "one" not in {info.name for info in client.channel_info()}
        again = client.create_publisher("one", mux="m", num_slots=8)
        assert again.publish_bytes(b"fresh") == 1
        client.remove_publisher(again)
        client.remove_subscriber(subscriber)
        assert not {"m", "one", "two"} & {info.name for info in client.channel_info()}
