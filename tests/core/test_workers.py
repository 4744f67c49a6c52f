"""Tests for core.workers: FIFO order, results and errors, resizing and closing the pool."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator, Iterable
from functools import partial

import pytest

from postoffice.core.errors import ClosedError, ConfigError
from postoffice.core.workers import MAX_THREADS, WorkerPool

_WAIT_S = 5.0  # upper bound on waits that should end quickly
_names = itertools.count()


def _threads(pool_name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"{pool_name}-")]


class _Started:
    """Tasks in the pool call it as they begin; the loop awaits `count` of them (bounded).

    A task that has begun counts as busy: the pool counts it before calling it.
    """

    def __init__(self, count: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._left = count
        self._all = self._loop.create_future()

    def __call__(self) -> None:
        self._loop.call_soon_threadsafe(self._one)

    def _one(self) -> None:
        self._left -= 1
        if self._left == 0:
            self._all.set_result(None)

    async def wait(self) -> None:
        await asyncio.wait_for(self._all, _WAIT_S)


async def _ended(threads: Iterable[threading.Thread], count: int) -> None:
    """Wait (bounded) until `count` of `threads` have ended: a joiner thread per thread
    tells the loop, so nothing polls."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Queue[threading.Thread] = asyncio.Queue()

    def join(thread: threading.Thread) -> None:
        thread.join()
        try:
            loop.call_soon_threadsafe(ended.put_nowait, thread)
        except RuntimeError:
            pass  # the test is over and its loop closed: a survivor of the pool ended

    for thread in threads:
        threading.Thread(target=join, args=(thread,), daemon=True).start()
    async with asyncio.timeout(_WAIT_S):
        for _ in range(count):
            await ended.get()


@pytest.fixture
def name() -> str:
    """A name no other pool in this process uses, so its threads can be counted."""
    return f"test-pool-{next(_names)}"


@pytest.fixture
async def pool(name: str) -> AsyncIterator[WorkerPool]:
    pool = WorkerPool(1, name=name)
    pool.start()
    yield pool
    pool.close(wait=True)


class TestResults:
    async def test_result_reaches_the_awaiting_coroutine(self, pool: WorkerPool) -> None:
        assert await asyncio.wait_for(pool.submit(lambda: 6 * 7), _WAIT_S) == 42
        assert (pool.completed, pool.failed, pool.busy) == (1, 0, 0)

    async def test_exception_reaches_the_awaiting_coroutine(self, pool: WorkerPool) -> None:
        def boom() -> int:
            raise ValueError("disk on fire")

        with pytest.raises(ValueError, match=r"^disk on fire$"):
            await asyncio.wait_for(pool.submit(boom), _WAIT_S)
        assert (pool.completed, pool.failed, pool.busy) == (0, 1, 0)

    async def test_stop_iteration_does_not_hang_the_awaiter(self, pool: WorkerPool) -> None:
        """Regression: a future refuses StopIteration, so the awaiter waited forever."""
        with pytest.raises(RuntimeError, match=r"^StopIteration raised in a worker pool task$"):
            await asyncio.wait_for(pool.submit(lambda: next(iter(()))), _WAIT_S)

    async def test_runs_off_the_event_loop_thread(self, pool: WorkerPool, name: str) -> None:
        thread = await asyncio.wait_for(pool.submit(threading.current_thread), _WAIT_S)
        assert thread.name.startswith(f"{name}-")
        assert thread is not threading.current_thread()

    async def test_cancelled_awaiter_does_not_break_the_pool(self, pool: WorkerPool) -> None:
        gate = threading.Event()
        first = pool.submit(lambda: gate.wait(_WAIT_S))
        first.cancel()
        gate.set()
        assert await asyncio.wait_for(pool.submit(lambda: "next"), _WAIT_S) == "next"


class TestOrder:
    async def test_fifo_with_one_thread(self, pool: WorkerPool) -> None:
        gate = threading.Event()
        started = _Started(1)
        done: list[int] = []

        def block() -> bool:
            started()
            return gate.wait(_WAIT_S)

        blocker = pool.submit(block)
        futures = [pool.submit(partial(done.append, i)) for i in range(20)]
        await started.wait()
        assert pool.busy == 1
        assert pool.queued == 20
        gate.set()
        await asyncio.wait_for(asyncio.gather(blocker, *futures), _WAIT_S)
        assert done == list(range(20))
        assert pool.queued == 0

    def test_submit_needs_a_running_loop(self) -> None:
        pool = WorkerPool(1)
        with pytest.raises(RuntimeError, match="no running event loop"):
            pool.submit(lambda: None)


class TestResize:
    async def test_grow_runs_tasks_side_by_side(self, pool: WorkerPool, name: str) -> None:
        pool.resize(3)
        assert pool.size == 3
        assert len(_threads(name)) == 3
        barrier = threading.Barrier(3, timeout=_WAIT_S)  # passes only with 3 threads at once
        results = await asyncio.wait_for(
            asyncio.gather(*(pool.submit(barrier.wait) for _ in range(3))), _WAIT_S
        )
        assert sorted(results) == [0, 1, 2]

    async def test_shrink_lets_running_tasks_finish(self, pool: WorkerPool, name: str) -> None:
        pool.resize(3)
        threads = _threads(name)
        gate = threading.Event()
        started = _Started(3)

        def task(n: int) -> int:
            started()
            gate.wait(_WAIT_S)
            return n

        running = [pool.submit(partial(task, n)) for n in range(3)]
        await started.wait()
        assert pool.busy == 3
        pool.resize(1)
        assert pool.size == 1
        assert pool.queued == 0  # the stop markers are not tasks
        gate.set()
        assert await asyncio.wait_for(asyncio.gather(*running), _WAIT_S) == [0, 1, 2]
        await _ended(threads, 2)
        assert len(_threads(name)) == 1
        assert await asyncio.wait_for(pool.submit(lambda: "still serving"), _WAIT_S) == (
            "still serving"
        )

    async def test_shrink_then_grow(self, pool: WorkerPool, name: str) -> None:
        pool.resize(4)
        threads = set(_threads(name))  # none can end before the stop markers below
        pool.resize(2)
        pool.resize(3)
        await _ended(threads | set(_threads(name)), 2)
        assert len(_threads(name)) == 3
        assert pool.size == 3

    def test_resize_before_start_sets_the_initial_size(self, name: str) -> None:
        pool = WorkerPool(2, name=name)
        pool.resize(5)
        assert pool.size == 5
        assert _threads(name) == []
        pool.start()
        try:
            assert len(_threads(name)) == 5
        finally:
            pool.close(wait=True)

    @pytest.mark.parametrize("size", [0, -1, MAX_THREADS + 1])
    def test_size_out_of_range(self, size: int) -> None:
        message = rf"^worker pool size must be between 1 and {MAX_THREADS}, got {size}$"
        with pytest.raises(ConfigError, match=message):
            WorkerPool(size)
        pool = WorkerPool(1)
        with pytest.raises(ConfigError, match=message):
            pool.resize(size)


class TestClose:
    async def test_close_rejects_new_work(self, pool: WorkerPool, name: str) -> None:
        pool.close()
        with pytest.raises(ClosedError, match=r"^worker pool is closed$"):
            pool.submit(lambda: None)
        with pytest.raises(ClosedError, match=r"^worker pool is closed$"):
            pool.resize(2)
        pool.close()  # idempotent
        assert repr(pool) == f"<WorkerPool {name} closed size=1 busy=0>"

    async def test_close_finishes_queued_work_and_joins(self, pool: WorkerPool, name: str) -> None:
        pool.resize(2)
        gate = threading.Event()

        def slow(n: int) -> int:
            gate.wait(_WAIT_S)
            time.sleep(0)  # give the other thread a chance to interleave
            return n

        futures = [pool.submit(partial(slow, n)) for n in range(6)]
        pool.close()
        gate.set()
        assert await asyncio.wait_for(asyncio.gather(*futures), _WAIT_S) == list(range(6))
        await asyncio.to_thread(pool.close, wait=True)  # a second close is a no-op
        threads = _threads(name)
        for thread in threads:
            await asyncio.wait_for(asyncio.to_thread(thread.join), _WAIT_S)
        assert _threads(name) == []
        assert pool.queued == 0

    async def test_close_before_start_fails_queued_work(self) -> None:
        """Regression: with no thread to run them, queued tasks used to hang forever."""
        pool = WorkerPool(1)
        future = pool.submit(lambda: "never")
        pool.close()
        with pytest.raises(ClosedError, match=r"^worker pool is closed$"):
            await asyncio.wait_for(future, _WAIT_S)

    def test_repr_of_an_open_pool(self) -> None:
        assert repr(WorkerPool(3, name="io")) == "<WorkerPool io open size=3 busy=0>"
