"""The systems run.py compares: our channel library, iceoryx2, pyzmq over ipc://, zenoh,
and the floors (a spin on shared memory, an eventfd wake-up, one copy of the payload).

Each side of a pair runs in its own forked process and imports its library only after
the fork, so no library's threads are ever forked. Every wait has a deadline.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import multiprocessing
import os
import select
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from threading import BrokenBarrierError
from typing import Any, Final, Protocol

from postoffice.bus import (
    BusLocation,
    Channel,
    ChannelSpec,
    Publisher,
    Subscriber,
    Triggers,
    atomics,
    create_channel,
    new_eventfd,
)

#: How long one side waits for the other (to be ready, or for one message).
PATIENCE_S: Final = 30.0
#: Busy loops look at the clock once per this many empty polls.
SPINS_PER_CLOCK_CHECK: Final = 4096


class Barrier(Protocol):
    """A multiprocessing barrier for the two sides of a pair."""

    def wait(self, timeout: float | None = None) -> int: ...


class PeerTimeout(Exception):
    """The other side sent nothing, or did not get ready, within PATIENCE_S."""


def meet(ready: Barrier) -> None:
    """Both sides are set up: go on together."""
    try:
        ready.wait(PATIENCE_S)
    except BrokenBarrierError as exc:
        raise PeerTimeout("the other side did not get ready") from exc


def spin_until(probe: Callable[[], Any]) -> Any:
    """Call `probe` until it returns something other than None (polling)."""
    deadline = time.monotonic() + PATIENCE_S
    spins = 0
    while True:
        found = probe()
        if found is not None:
            return found
        spins += 1
        if spins >= SPINS_PER_CLOCK_CHECK:
            spins = 0
            if time.monotonic() > deadline:
                raise PeerTimeout("nothing arrived while polling")


@dataclass(frozen=True, slots=True, kw_only=True)
class Shape:
    """What a pair is set up for: payload bytes and how many may be in flight."""

    payload: int
    depth: int


class System(Protocol):
    """One contender. `prepare` runs in the parent before the fork; the other methods run
    each in its own child. A pair's two sides call `meet` the same number of times."""

    name: str
    #: Whether it takes part in the ping-pongs (a variant may run the floods only).
    pingpong: bool

    def prepare(self, scratch: Path, tag: str, shape: Shape) -> Any: ...

    def ping(self, setup: Any, rounds: int, blocking: bool, ready: Barrier) -> list[int]: ...

    def echo(self, setup: Any, rounds: int, blocking: bool, ready: Barrier) -> None: ...

    def send(self, setup: Any, count: int, ready: Barrier) -> None: ...

    def receive(self, setup: Any, count: int, ready: Barrier) -> tuple[float, int, int]:
        """Seconds from the first message in hand to the last, the messages that came
        in between, and the messages the transport lost."""
        ...


def _timed_pings(rounds: int, exchange: Callable[[], None]) -> list[int]:
    samples = []
    clock = time.perf_counter_ns
    for _ in range(rounds):
        start = clock()
        exchange()
        samples.append(clock() - start)
    return samples


# -- ours ------------------------------------------------------------------------------------


class _Link:
    """One channel, one publisher and one subscriber registered, eventfds made here."""

    def __init__(self, location: BusLocation, channel_id: int, shape: Shape, *, reliable: bool):
        spec = ChannelSpec(channel_id=channel_id, name=f"bench{channel_id}",
                           num_slots=shape.depth, slot_size=shape.payload)  # fmt: skip
        self.location = location
        self.fds = create_channel(location, spec)
        channel = Channel.open(location, self.fds)
        self.pub_id = channel.add_publisher(reliable=reliable)
        self.sub_id = channel.add_subscriber(
            reliable=reliable, max_active_messages=max(1, shape.depth // 2)
        )
        self.pub_fd = new_eventfd() if reliable else None
        self.sub_fd = new_eventfd()
        channel.close()

    def _open(self) -> tuple[Channel, Triggers]:
        channel = Channel.open(self.location, self.fds)
        triggers = Triggers(channel.ccb)
        triggers.set_subscriber(self.sub_id, self.sub_fd)
        if self.pub_fd is not None:
            triggers.set_publisher(self.pub_id, self.pub_fd)
        return channel, triggers

    def publisher(self) -> Publisher:
        channel, triggers = self._open()
        return Publisher(channel, self.pub_id, triggers=triggers, eventfd=self.pub_fd)

    def subscriber(self) -> Subscriber:
        channel, triggers = self._open()
        return Subscriber(channel, self.sub_id, triggers=triggers, eventfd=self.sub_fd)


@dataclass(frozen=True, slots=True, kw_only=True)
class _OursSetup:
    shape: Shape
    there: _Link
    back: _Link | None


def _ours_take(subscriber: Subscriber, blocking: bool) -> None:
    if not blocking:
        spin_until(subscriber.read).release()
        return
    while True:
        message = subscriber.read()
        if message is not None:
            message.release()
            return
        if not subscriber.wait(PATIENCE_S):
            raise PeerTimeout("no message within the wait")


class Ours:
    """postoffice.bus channels: publish_bytes() and read() for ping-pong; for the one-way
    flood, publish_many() of a batch as large as the channel and read_all(). The flood's
    reader sleeps in wait() when a batch comes back empty, or with `spinning_reader`
    calls read_all() again at once (as the iceoryx2 reader polls); with
    `single_publish` the publisher calls publish_bytes() once per message instead."""

    def __init__(
        self, location: BusLocation, *, spinning_reader: bool = False, single_publish: bool = False
    ) -> None:
        self.location = location
        self.spinning_reader = spinning_reader
        self.single_publish = single_publish
        self.name = (
            "ours_spinning_reader" if spinning_reader
            else "ours_single_publish" if single_publish else "ours"
        )  # fmt: skip
        self.pingpong = not (spinning_reader or single_publish)
        self._next_channel = 0

    def _channel_id(self) -> int:
        self._next_channel += 1
        return self._next_channel

    def prepare(self, scratch: Path, tag: str, shape: Shape) -> _OursSetup:
        if tag.startswith("pp"):
            # Ping-pong: unreliable both ways (nobody ever waits for a slot).
            there = _Link(self.location, self._channel_id(), shape, reliable=False)
            back = _Link(self.location, self._channel_id(), shape, reliable=False)
            return _OursSetup(shape=shape, there=there, back=back)
        link = _Link(self.location, self._channel_id(), shape, reliable=True)
        return _OursSetup(shape=shape, there=link, back=None)

    def ping(self, setup: _OursSetup, rounds: int, blocking: bool, ready: Barrier) -> list[int]:
        assert setup.back is not None
        publisher, subscriber = setup.there.publisher(), setup.back.subscriber()
        payload = bytes(setup.shape.payload)
        meet(ready)

        def exchange() -> None:
            publisher.publish_bytes(payload)
            _ours_take(subscriber, blocking)

        return _timed_pings(rounds, exchange)

    def echo(self, setup: _OursSetup, rounds: int, blocking: bool, ready: Barrier) -> None:
        assert setup.back is not None
        subscriber, publisher = setup.there.subscriber(), setup.back.publisher()
        payload = bytes(setup.shape.payload)
        meet(ready)
        for _ in range(rounds):
            _ours_take(subscriber, blocking)
            publisher.publish_bytes(payload)

    def send(self, setup: _OursSetup, count: int, ready: Barrier) -> None:
        publisher = setup.there.publisher()
        payload = bytes(setup.shape.payload)
        meet(ready)
        if self.single_publish:
            for _ in range(count):
                while publisher.publish_bytes(payload) is None:
                    if not publisher.wait(PATIENCE_S):
                        raise PeerTimeout("no slot freed within the wait")
            return
        batch = [payload] * setup.shape.depth
        left = count
        while left:
            chunk = batch if left >= len(batch) else batch[:left]
            done = publisher.publish_many(chunk)
            while done < len(chunk):
                if not publisher.wait(PATIENCE_S):
                    raise PeerTimeout("no slot freed within the wait")
                done += publisher.publish_many(chunk[done:])
            left -= len(chunk)

    def receive(self, setup: _OursSetup, count: int, ready: Barrier) -> tuple[float, int, int]:
        subscriber = setup.there.subscriber()
        read_all, spinning = subscriber.read_all, self.spinning_reader
        meet(ready)
        got = timed = 0
        first = 0.0
        while got < count:
            batch = spin_until(lambda: read_all() or None) if spinning else read_all()
            if not batch:
                if not subscriber.wait(PATIENCE_S):
                    raise PeerTimeout("no message within the wait")
                continue
            if not got:
                # The interval starts when the first batch is in hand.
                first = time.perf_counter()
                timed -= len(batch)
            got += len(batch)
        elapsed = time.perf_counter() - first
        subscriber.release_all()
        return elapsed, got + timed, 0


# -- pyzmq over ipc:// -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _ZmqSetup:
    shape: Shape
    address: str


class Zmq:
    """pyzmq: a PAIR socket for ping-pong, PUSH/PULL for the flood, over ipc://."""

    name = "pyzmq"
    pingpong = True

    def prepare(self, scratch: Path, tag: str, shape: Shape) -> _ZmqSetup:
        return _ZmqSetup(shape=shape, address=f"ipc://{scratch / f'zmq-{tag}.sock'}")

    @staticmethod
    def _pair(address: str, bind: bool) -> Any:
        import zmq

        sock = zmq.Context.instance().socket(zmq.PAIR)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, int(PATIENCE_S * 1000))
        if bind:
            sock.bind(address)
        else:
            sock.connect(address)
        return sock

    @staticmethod
    def _receiver(sock: Any, blocking: bool) -> Callable[[], Any]:
        import zmq

        if blocking:
            return sock.recv  # type: ignore[no-any-return]
        again, noblock, recv = zmq.Again, zmq.NOBLOCK, sock.recv

        def poll_once() -> bytes | None:
            try:
                return recv(noblock)  # type: ignore[no-any-return]
            except again:
                return None

        return lambda: spin_until(poll_once)

    def ping(self, setup: _ZmqSetup, rounds: int, blocking: bool, ready: Barrier) -> list[int]:
        sock = self._pair(setup.address, bind=True)
        take, send = self._receiver(sock, blocking), sock.send
        payload = bytes(setup.shape.payload)
        meet(ready)

        def exchange() -> None:
            send(payload)
            take()

        try:
            return _timed_pings(rounds, exchange)
        finally:
            sock.close()

    def echo(self, setup: _ZmqSetup, rounds: int, blocking: bool, ready: Barrier) -> None:
        sock = self._pair(setup.address, bind=False)
        take, send = self._receiver(sock, blocking), sock.send
        payload = bytes(setup.shape.payload)
        meet(ready)
        for _ in range(rounds):
            take()
            send(payload)
        time.sleep(0.05)  # LINGER 0 drops unsent data: let the last reply leave
        sock.close()

    def send(self, setup: _ZmqSetup, count: int, ready: Barrier) -> None:
        import zmq

        sock = zmq.Context.instance().socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDTIMEO, int(PATIENCE_S * 1000))
        sock.connect(setup.address)
        payload = bytes(setup.shape.payload)
        copy = setup.shape.payload < zmq.COPY_THRESHOLD
        meet(ready)
        send = sock.send
        for _ in range(count):
            send(payload, copy=copy)
        meet(ready)  # the receiver has everything: the socket may go
        sock.close()

    def receive(self, setup: _ZmqSetup, count: int, ready: Barrier) -> tuple[float, int, int]:
        import zmq

        sock = zmq.Context.instance().socket(zmq.PULL)
        sock.setsockopt(zmq.RCVTIMEO, int(PATIENCE_S * 1000))
        sock.bind(setup.address)
        copy = setup.shape.payload < zmq.COPY_THRESHOLD
        meet(ready)
        recv = sock.recv
        recv(copy=copy)
        first = time.perf_counter()
        for _ in range(count - 1):
            recv(copy=copy)
        elapsed = time.perf_counter() - first
        meet(ready)
        sock.close()
        return elapsed, count - 1, 0


# -- iceoryx2 --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _IoxSetup:
    shape: Shape
    service: str
    sent: Any  # a multiprocessing Event: the publisher has sent every message


#: What the iceoryx2 reader's probe returns once the publisher is done and nothing is left.
_FINISHED: Final = object()


class _IoxEnd:
    """One process's ports: a publisher to `out` and a subscriber of `into`, with the
    event services that carry the wake-ups when blocking."""

    def __init__(self, shape: Shape, out: str | None, into: str | None, blocking: bool) -> None:
        import iceoryx2 as iox2

        iox2.set_log_level(iox2.LogLevel.Error)
        self.iox2 = iox2
        self.node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        self.shape = shape
        self.publisher: Any = None
        self.subscriber: Any = None
        self.notifier: Any = None
        self.listener: Any = None
        self.patience = iox2.Duration.from_secs_f64(PATIENCE_S)
        if out is not None:
            service = self._service(out)
            self.publisher = (
                service.publisher_builder()
                .initial_max_slice_len(shape.payload)
                .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
                .create()
            )
            if blocking:
                self.notifier = self._events(out).notifier_builder().create()
        if into is not None:
            service = self._service(into)
            self.subscriber = service.subscriber_builder().buffer_size(shape.depth).create()
            if blocking:
                self.listener = self._events(into).listener_builder().create()

    def _service(self, name: str) -> Any:
        iox2 = self.iox2
        return (
            self.node.service_builder(iox2.ServiceName.new(name))
            .publish_subscribe(iox2.Slice[ctypes.c_uint8])
            .enable_safe_overflow(False)
            .subscriber_max_buffer_size(self.shape.depth)
            .history_size(0)
            .open_or_create()
        )

    def _events(self, name: str) -> Any:
        iox2 = self.iox2
        return (
            self.node.service_builder(iox2.ServiceName.new(name + ".ev")).event().open_or_create()
        )

    def connect(self) -> None:
        if self.publisher is not None:
            self.publisher.update_connections()

    def put(self, payload: bytes) -> None:
        sample = self.publisher.loan_slice_uninit(len(payload))
        ctypes.memmove(sample.payload_ptr, payload, len(payload))
        sample.assume_init().send()
        if self.notifier is not None:
            self.notifier.notify()

    def take(self) -> Any:
        """The next sample: polling when there is no listener, else sleeping on it."""
        receive = self.subscriber.receive
        if self.listener is None:
            return spin_until(receive)
        while True:
            sample = receive()
            if sample is not None:
                return sample
            if not self.listener.timed_wait(self.patience):
                sample = receive()
                if sample is None:
                    raise PeerTimeout("no event within the wait")
                return sample


class Iceoryx2:
    """iceoryx2's Python binding: publish-subscribe of a u8 slice, no overflow (the
    publisher retries until delivered); blocking through an event service beside it."""

    name = "iceoryx2"
    pingpong = True

    def prepare(self, scratch: Path, tag: str, shape: Shape) -> _IoxSetup:
        sent = multiprocessing.get_context("fork").Event()
        return _IoxSetup(shape=shape, service=f"pobench/{os.getpid()}/{tag}", sent=sent)

    def ping(self, setup: _IoxSetup, rounds: int, blocking: bool, ready: Barrier) -> list[int]:
        end = _IoxEnd(setup.shape, setup.service + "/there", setup.service + "/back", blocking)
        meet(ready)
        end.connect()
        meet(ready)
        payload = bytes(setup.shape.payload)

        def exchange() -> None:
            end.put(payload)
            end.take().delete()

        return _timed_pings(rounds, exchange)

    def echo(self, setup: _IoxSetup, rounds: int, blocking: bool, ready: Barrier) -> None:
        end = _IoxEnd(setup.shape, setup.service + "/back", setup.service + "/there", blocking)
        meet(ready)
        end.connect()
        meet(ready)
        payload = bytes(setup.shape.payload)
        for _ in range(rounds):
            end.take().delete()
            end.put(payload)
        time.sleep(0.05)  # keep the node until the last reply was taken

    def send(self, setup: _IoxSetup, count: int, ready: Barrier) -> None:
        end = _IoxEnd(setup.shape, setup.service, None, blocking=False)
        meet(ready)
        end.connect()
        meet(ready)
        payload = bytes(setup.shape.payload)
        put = end.put
        for _ in range(count):
            put(payload)
        setup.sent.set()
        meet(ready)  # the receiver has everything: the service may go

    def receive(self, setup: _IoxSetup, count: int, ready: Barrier) -> tuple[float, int, int]:
        end = _IoxEnd(setup.shape, None, setup.service, blocking=False)
        receive, sent = end.subscriber.receive, setup.sent.is_set

        def probe() -> Any:
            # The publisher can drop samples even with RetryUntilDelivered (seen when the
            # reader falls a whole buffer behind): once it is done, an empty look ends.
            sample = receive()
            if sample is None and sent():
                sample = receive()
                return _FINISHED if sample is None else sample
            return sample

        meet(ready)
        meet(ready)
        sample = spin_until(probe)
        if sample is _FINISHED:
            raise PeerTimeout("the publisher finished and nothing arrived")
        sample.delete()
        first = time.perf_counter()
        got = 1
        while got < count:
            sample = spin_until(probe)
            if sample is _FINISHED:
                break
            sample.delete()
            got += 1
        elapsed = time.perf_counter() - first
        meet(ready)
        return elapsed, got - 1, count - got


# -- zenoh -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _ZenohSetup:
    shape: Shape
    endpoint: str
    key: str


class Zenoh:
    """eclipse-zenoh, two peers over a Unix socket (no scouting); payloads over 3 KiB go
    through its shared memory (its default transport optimisation)."""

    name = "zenoh"
    pingpong = True

    def prepare(self, scratch: Path, tag: str, shape: Shape) -> _ZenohSetup:
        return _ZenohSetup(shape=shape, endpoint=f"unixsock-stream/{scratch / f'z-{tag}.sock'}",
                           key=f"pobench/{tag}")  # fmt: skip

    @staticmethod
    def _session(setup: _ZenohSetup, listen: bool) -> Any:
        import zenoh

        config = zenoh.Config()
        config.insert_json5("mode", '"peer"')
        config.insert_json5("scouting/multicast/enabled", "false")
        config.insert_json5("scouting/gossip/enabled", "false")
        which = "listen/endpoints" if listen else "connect/endpoints"
        config.insert_json5(which, json.dumps([setup.endpoint]))
        return zenoh.open(config)

    @staticmethod
    def _publisher(session: Any, key: str) -> Any:
        import zenoh

        publisher = session.declare_publisher(key, congestion_control=zenoh.CongestionControl.BLOCK)
        deadline = time.monotonic() + PATIENCE_S
        while not publisher.matching_status.matching:
            if time.monotonic() > deadline:
                raise PeerTimeout(f"no subscriber matched {key}")
            time.sleep(0.001)
        return publisher

    @staticmethod
    def _taker(subscriber: Any, blocking: bool) -> Callable[[], Any]:
        return subscriber.recv if blocking else lambda: spin_until(subscriber.try_recv)

    def _end(
        self, setup: _ZenohSetup, ready: Barrier, *, listen: bool, out: str | None,
        into: str | None,
    ) -> tuple[Any, Any, Any]:  # fmt: skip
        import zenoh

        if listen:
            session = self._session(setup, listen=True)
            meet(ready)
        else:
            meet(ready)
            session = self._session(setup, listen=False)
        depth = max(setup.shape.depth, 16)
        subscriber = None
        if into is not None:
            subscriber = session.declare_subscriber(into, zenoh.handlers.FifoChannel(depth))
        publisher = self._publisher(session, out) if out is not None else None
        meet(ready)
        return session, publisher, subscriber

    def ping(self, setup: _ZenohSetup, rounds: int, blocking: bool, ready: Barrier) -> list[int]:
        session, publisher, subscriber = self._end(
            setup, ready, listen=True, out=setup.key + "/there", into=setup.key + "/back"
        )
        put, take = publisher.put, self._taker(subscriber, blocking)
        payload = bytes(setup.shape.payload)

        def exchange() -> None:
            put(payload)
            take()

        try:
            return _timed_pings(rounds, exchange)
        finally:
            session.close()

    def echo(self, setup: _ZenohSetup, rounds: int, blocking: bool, ready: Barrier) -> None:
        session, publisher, subscriber = self._end(
            setup, ready, listen=False, out=setup.key + "/back", into=setup.key + "/there"
        )
        put, take = publisher.put, self._taker(subscriber, blocking)
        payload = bytes(setup.shape.payload)
        for _ in range(rounds):
            take()
            put(payload)
        time.sleep(0.05)
        session.close()

    def send(self, setup: _ZenohSetup, count: int, ready: Barrier) -> None:
        session, publisher, _ = self._end(setup, ready, listen=False, out=setup.key, into=None)
        payload = bytes(setup.shape.payload)
        put = publisher.put
        for _ in range(count):
            put(payload)
        meet(ready)
        session.close()

    def receive(self, setup: _ZenohSetup, count: int, ready: Barrier) -> tuple[float, int, int]:
        session, _, subscriber = self._end(setup, ready, listen=True, out=None, into=setup.key)
        recv = subscriber.recv
        recv()
        first = time.perf_counter()
        for _ in range(count - 1):
            recv()
        elapsed = time.perf_counter() - first
        meet(ready)
        session.close()
        return elapsed, count - 1, 0


# -- floors -----------------------------------------------------------------------------


def _sleep_on(fd: int) -> None:
    """Our blocking wait's system calls: poll the eventfd, then reset it."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if not poller.poll(int(PATIENCE_S * 1000)):
        raise PeerTimeout("no wake-up within the wait")
    os.eventfd_read(fd)


@dataclass(frozen=True, slots=True, kw_only=True)
class _FloorSetup:
    shape: Shape
    words: mmap.mmap
    there: int
    back: int
    buffer_path: Path


class Floor:
    """What no library on this machine can beat from Python: ping-pong by spinning on
    one shared word (polling) or by one eventfd wake-up each way, made the way our
    blocking wait makes it (a write; a poll, then a read) (blocking); the flood is one
    copy of the payload into shared memory per message, in one process (no reader)."""

    name = "floor"
    pingpong = True

    def prepare(self, scratch: Path, tag: str, shape: Shape) -> _FloorSetup:
        words = mmap.mmap(-1, 128)  # shared across fork; two words on their own lines
        there = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        back = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        return _FloorSetup(shape=shape, words=words, there=there, back=back,
                           buffer_path=scratch / f"floor-{tag}")  # fmt: skip

    def ping(self, setup: _FloorSetup, rounds: int, blocking: bool, ready: Barrier) -> list[int]:
        words, load, store = setup.words, atomics.load_acquire_u64, atomics.store_release_u64
        meet(ready)
        if blocking:
            write, there, back = os.eventfd_write, setup.there, setup.back

            def exchange() -> None:
                write(there, 1)
                _sleep_on(back)

            return _timed_pings(rounds, exchange)
        samples = []
        clock = time.perf_counter_ns
        for turn in range(1, rounds + 1):
            start = clock()
            store(words, 0, turn)
            while load(words, 64) != turn:
                pass
            samples.append(clock() - start)
        return samples

    def echo(self, setup: _FloorSetup, rounds: int, blocking: bool, ready: Barrier) -> None:
        words, load, store = setup.words, atomics.load_acquire_u64, atomics.store_release_u64
        meet(ready)
        if blocking:
            for _ in range(rounds):
                _sleep_on(setup.there)
                os.eventfd_write(setup.back, 1)
            return
        deadline = time.monotonic() + PATIENCE_S
        for turn in range(1, rounds + 1):
            while load(words, 0) != turn:
                if time.monotonic() > deadline:
                    raise PeerTimeout("the pinger stopped")
            store(words, 64, turn)

    def send(self, setup: _FloorSetup, count: int, ready: Barrier) -> None:
        meet(ready)

    def receive(self, setup: _FloorSetup, count: int, ready: Barrier) -> tuple[float, int, int]:
        size, depth = setup.shape.payload, setup.shape.depth
        with open(setup.buffer_path, "w+b") as file:
            file.truncate(size * depth)
            shared = mmap.mmap(file.fileno(), size * depth)
        os.unlink(setup.buffer_path)
        view = memoryview(shared)
        payload = bytes(size)
        meet(ready)
        start = time.perf_counter()
        for index in range(count - 1):
            at = index % depth * size
            view[at : at + size] = payload
        elapsed = time.perf_counter() - start
        view.release()
        shared.close()
        return elapsed, count - 1, 0
