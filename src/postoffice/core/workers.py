"""A fixed-size, resizable pool of threads with a FIFO queue, for blocking work off the loop.

Design: a fixed pool (one queue guarded by a lock and a condition variable, N workers
that wait, dequeue, run, repeat). `queue.SimpleQueue` is that queue in C. Results go back
to the event loop with `call_soon_threadsafe`. The stdlib executor cannot shrink, and the
command server resizes its pool at run time (CONFIG SET), so the pool is our own.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Final, TypeVar, final

from postoffice.core.errors import ClosedError, ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_THREADS: Final = 256  # far past any useful size on one machine; catches typos like 10000

_Task = tuple[Callable[[], object], "asyncio.Future[Any]", asyncio.AbstractEventLoop]


@final
class WorkerPool:
    """Runs blocking callables on a fixed number of threads, first in first out.

    `submit` returns an asyncio future resolved on the submitting loop.
    Raises ConfigError for a size outside 1..MAX_THREADS and ClosedError after `close`.
    """

    def __init__(self, size: int, *, name: str = "worker") -> None:
        _check_size(size)
        self._name = name
        self._queue: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._target = 0
        self._serial = 0
        self._closed = False
        self.busy = 0
        self.completed = 0
        self.failed = 0
        self._started = False
        self._initial = size
        self._pending_stops = 0

    def start(self) -> None:
        """Start the threads (the I/O half of two-phase init)."""
        if not self._started:
            self._started = True
            self.resize(self._initial)

    @property
    def size(self) -> int:
        """The number of threads the pool is sized for."""
        return self._target if self._started else self._initial

    @property
    def queued(self) -> int:
        """Tasks waiting for a thread (approximate: read without the lock)."""
        return max(0, self._queue.qsize() - self._pending_stops)

    def resize(self, size: int) -> None:
        """Grow or shrink to `size` threads; shrinking lets running tasks finish first."""
        _check_size(size)
        if not self._started:
            self._initial = size
            return
        with self._lock:
            if self._closed:
                raise ClosedError("worker pool is closed")
            while self._target < size:
                self._serial += 1
                thread = threading.Thread(
                    target=self._run, name=f"{self._name}-{self._serial}", daemon=True
                )
                self._threads.add(thread)
                thread.start()
                self._target += 1
            while self._target > size:
                self._pending_stops += 1
                self._queue.put(None)  # a worker that dequeues None exits
                self._target -= 1

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Queue `fn` and return a future for its result, bound to the running loop."""
        if self._closed:
            raise ClosedError("worker pool is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((fn, future, loop))
        return future

    def close(self, *, wait: bool = False, timeout_s: float = 5.0) -> None:
        """Stop every thread after the tasks already queued; optionally join them.

        Tasks queued on a pool that has no threads (never started) fail with ClosedError.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = list(self._threads)
            for _ in threads:
                self._pending_stops += 1
                self._queue.put(None)  # a worker that dequeues None exits
            if not threads:
                self._fail_queued()
        if wait:
            for thread in threads:
                thread.join(timeout_s)

    def _fail_queued(self) -> None:
        # No thread will ever dequeue these: settle them rather than leave awaiters hanging.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                _, future, loop = item
                _hand_back(loop, _settle_error, future, ClosedError("worker pool is closed"))

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            item = self._queue.get()
            if item is None:
                with self._lock:
                    self._threads.discard(me)
                    if self._pending_stops:
                        self._pending_stops -= 1
                return
            fn, future, loop = item
            with self._lock:
                self.busy += 1
            try:
                result = fn()
            except BaseException as exc:  # handed to the awaiting coroutine, not swallowed
                # Count before handing back, so an awaiter that wakes sees its own task.
                with self._lock:
                    self.busy -= 1
                    self.failed += 1
                _hand_back(loop, _settle_error, future, exc)
            else:
                with self._lock:
                    self.busy -= 1
                    self.completed += 1
                _hand_back(loop, _settle, future, result)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<WorkerPool {self._name} {state} size={self.size} busy={self.busy}>"


def _hand_back(
    loop: asyncio.AbstractEventLoop,
    settle: Callable[[asyncio.Future[Any], Any], None],
    future: asyncio.Future[Any],
    value: object,
) -> None:
    try:
        loop.call_soon_threadsafe(settle, future, value)
    except RuntimeError:  # the loop closed while the task ran: nobody awaits the result
        log.debug("result dropped: event loop closed")


def _settle(future: asyncio.Future[T], result: T) -> None:
    if not future.done():
        future.set_result(result)


def _settle_error(future: asyncio.Future[object], exc: BaseException) -> None:
    if isinstance(exc, StopIteration):
        # A future refuses StopIteration (TypeError in the loop, and the awaiter would
        # hang forever); wrap it the way Python 3.12 does.
        wrapped = RuntimeError("StopIteration raised in a worker pool task")
        wrapped.__cause__ = exc
        exc = wrapped
    if not future.done():
        future.set_exception(exc)


def _check_size(size: int) -> None:
    if not 1 <= size <= MAX_THREADS:
        raise ConfigError(f"worker pool size must be between 1 and {MAX_THREADS}, got {size}")
