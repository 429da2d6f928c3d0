"""Micro-batching: concurrent requests for one model become one `process(batch)` call.

Up to `max_in_flight` batches run at once (default 1; with 2, one batch reads the store while
another computes). With `max_wait_s = 0` (the server's default) batching is continuous: a
request leaves at once when a slot is free, and requests that arrive while every slot is busy
wait for the next free slot and leave together, so batches grow with load and an idle server
adds no wait. With `max_wait_s > 0` a batch is also held open until it holds `max_size` items
or its oldest item has waited `max_wait_s`. No batch holds more than `max_size` items. Compute
itself runs on the model's single `ComputeWorker` thread, off the event loop, so torch never runs
two forwards at once on the same cores. An exception from `process` reaches every waiter of the
batch; a per-item exception returned in the results list reaches only its waiter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

log = logging.getLogger(__name__)


class ComputeWorker:
    """One thread that runs every forward of one model, in submission order."""

    def __init__(self, name: str):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"compute-{name}")

    async def run(self, fn: Callable, *args) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class _Pending:
    item: Any
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    def __init__(
        self,
        process: Callable[[list], Awaitable[list]],
        max_size: int = 64,
        max_wait_s: float = 0.0,
        max_in_flight: int = 1,
        on_batch: Callable[[int, list[float]], None] | None = None,
    ):
        self._process = process
        self.max_size, self.max_wait_s = max_size, max_wait_s
        self._on_batch = on_batch  # (batch size, queue wait of each item in seconds)
        self._pending: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._collect())

    async def stop(self) -> None:
        if self._loop_task:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while self._pending:
            p = self._pending.popleft()
            if not p.future.done():
                p.future.set_exception(RuntimeError("server is shutting down"))

    async def submit(self, item) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(item, future))
        self._wakeup.set()
        return await future

    async def _collect(self) -> None:
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            wait = self._pending[0].enqueued + self.max_wait_s - time.perf_counter()
            if len(self._pending) < self.max_size and wait > 0:
                self._wakeup.clear()  # woken early by each new item, to check max_size
                try:
                    await asyncio.wait_for(self._wakeup.wait(), wait)
                except TimeoutError:
                    pass
                continue
            await self._slots.acquire()
            batch = [self._pending.popleft() for _ in range(min(self.max_size, len(self._pending)))]
            task = asyncio.get_running_loop().create_task(self._dispatch(batch))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _dispatch(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        live = [p for p in batch if not p.future.done()]  # skip callers that went away
        if self._on_batch:
            self._on_batch(len(live), [started - p.enqueued for p in live])
        if not live:
            return
        try:
            results = await self._process([p.item for p in live])
        except Exception as exc:  # noqa: BLE001 - delivered to every waiter, not swallowed
            results = [exc] * len(live)
        for p, result in zip(live, results, strict=True):
            if p.future.done():
                continue
            if isinstance(result, BaseException):
                p.future.set_exception(result)
            else:
                p.future.set_result(result)
