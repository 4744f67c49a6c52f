"""Two bus servers in two network namespaces joined by a veth pair, bridged over it.

The test makes the namespaces itself (`ip netns add`, a veth pair, private addresses)
and removes them after; it is skipped where the machine cannot (not root, no `ip`, no
namespaces). Every packet stays inside the two namespaces.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("postoffice.bus", exc_type=ImportError)

from postoffice.bus import Client
from tests.bus.rig import shm_directory
from tests.integration.conftest import POSTOFFICE, env_without_postoffice

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

WAIT_S = 20.0
ADDRESS_A = "10.213.77.1"
ADDRESS_B = "10.213.77.2"
DISCOVERY_PORT = 6502


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=WAIT_S)


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command to make network namespaces with")
    if os.geteuid() != 0:
        pytest.skip("making network namespaces needs root")
    tag = f"po{os.getpid() % 100000}"
    a, b = f"{tag}-a", f"{tag}-b"
    made: list[str] = []
    try:
        for ns in (a, b):
            done = _ip("netns", "add", ns)
            if done.returncode != 0:
                pytest.skip(f"cannot make a network namespace: {done.stderr.strip()}")
            made.append(ns)
        steps = [
            ("link", "add", f"{tag}a", "netns", a, "type", "veth", "peer", "name", f"{tag}b",
             "netns", b),
            ("-n", a, "addr", "add", f"{ADDRESS_A}/30", "dev", f"{tag}a"),
            ("-n", b, "addr", "add", f"{ADDRESS_B}/30", "dev", f"{tag}b"),
            ("-n", a, "link", "set", f"{tag}a", "up"),
            ("-n", b, "link", "set", f"{tag}b", "up"),
            ("-n", a, "link", "set", "lo", "up"),
            ("-n", b, "link", "set", "lo", "up"),
        ]  # fmt: skip
        for step in steps:
            done = _ip(*step)
            if done.returncode != 0:
                pytest.skip(f"cannot set up the veth pair: ip {' '.join(step)}: {done.stderr}")
        yield a, b
    finally:
        for ns in made:
            _ip("netns", "del", ns)


class NsBus:
    """`postoffice bus serve` inside namespace `ns`; its socket is reachable from here
    (Unix sockets by path are not per network namespace)."""

    def __init__(self, tmp_path: Path, ns: str, *args: str) -> None:
        self.dir = tmp_path / ns
        self.dir.mkdir()
        self.socket = self.dir / "bus.sock"
        self.shm = shm_directory()
        ready = self.dir / "ready.json"
        self.log_path = self.dir / "bus.log"
        argv = [
            "ip", "netns", "exec", ns, *POSTOFFICE, "bus", "serve", "--socket", str(self.socket),
            "--shm-dir", str(self.shm), "--ready-file", str(ready), "--advertise-interval",
            "0.2", *args,
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env_without_postoffice()
            )
        deadline = time.monotonic() + WAIT_S
        while not ready.exists():
            assert self.proc.poll() is None, self.log_path.read_text()
            assert time.monotonic() < deadline, "not ready in time: " + self.log_path.read_text()
            time.sleep(0.02)
        self.listeners = json.loads(ready.read_text())["listeners"]

    def users(self, channel: str) -> tuple[int, int]:
        with Client(self.socket, timeout_s=WAIT_S) as client:
            for info in client.channel_info():
                if info.name == channel:
                    return info.publishers, info.subscribers
        return 0, 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.shm, ignore_errors=True)


def test_channel_is_bridged_between_two_network_namespaces(
    namespaces: tuple[str, str], tmp_path: Path
) -> None:
    ns_a, ns_b = namespaces
    a = NsBus(tmp_path, ns_a, "--interface", ADDRESS_A, "--discovery-port", str(DISCOVERY_PORT))
    try:
        b = NsBus(
            tmp_path, ns_b, "--interface", ADDRESS_B, "--peer", f"{ADDRESS_A}:{DISCOVERY_PORT}"
        )
        try:
            assert a.listeners["discovery"] == [ADDRESS_A, DISCOVERY_PORT]
            assert b.listeners["bridge"][0] == ADDRESS_B
            with Client(a.socket) as client_a, Client(b.socket) as client_b:
                subscriber = client_b.create_subscriber("across", reliable=True)
                publisher = client_a.create_publisher("across", reliable=True, num_slots=4)
                deadline = time.monotonic() + WAIT_S
                while b.users("across") != (1, 1):
                    assert time.monotonic() < deadline, b.log_path.read_text()
                    time.sleep(0.05)
                for i in range(200):
                    while publisher.publish_bytes(b"packet %d" % i) is None:
                        assert publisher.wait(WAIT_S)
                got: list[bytes] = []
                while len(got) < 200:
                    message = subscriber.read()
                    if message is None:
                        assert subscriber.wait(WAIT_S), f"only {len(got)} came"
                        continue
                    with message:
                        got.append(bytes(message.data))
                assert got == [b"packet %d" % i for i in range(200)]
            assert (
                f"bridge receiving channel=across peer=\"('{ADDRESS_A}'" in b.log_path.read_text()
            )
        finally:
            b.stop()
    finally:
        a.stop()
