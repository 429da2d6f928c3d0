"""Micro-batching with a bounded queue: concurrent works become one `process(batch)` call.

Up to `max_in_flight` batches run at once (default 1). With `max_wait_s = 0` (the server's
default) batching is continuous: a work leaves at once when a slot is free, and works that arrive
while every slot is busy leave together with the next free slot, so batches grow with load and an
idle server adds no wait. With `max_wait_s > 0` a batch is also held open until it holds
`max_size` works or its oldest has waited `max_wait_s`. No batch holds more than `max_size`.

Overload control: at most `max_queue` works wait; one more is refused at once (`Overloaded`,
503 + Retry-After). A work still queued `deadline_s` after it arrived is dropped before compute
(`Overloaded`), and so is one whose client has gone (checked for works that waited a while). Works
queued at shutdown get `ShuttingDown` (503). Compute runs on the one `ComputeWorker` thread, off the
event loop, so torch never runs two forwards at once on the same cores. An exception from
`process` reaches every waiter of the batch; a per-item exception returned in the results list
reaches only its waiter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from .errors import Overloaded, ShuttingDown

log = logging.getLogger(__name__)

# Only works that waited this long are asked whether their client is still there: the check
# costs a few microseconds, which an idle server should not pay per request.
DISCONNECT_CHECK_S = 0.005


class ComputeWorker:
    """Runs every forward of every model, one at a time, in submission order: on one thread of
    its own, or inline on the event loop (`inline=True`). Inline suits a CPU process that owns one
    core: there a second thread buys no parallelism, only a hand-off (~50-100 us) and GIL
    ping-pong with the event loop; a GPU or multi-core process keeps the loop free instead."""

    def __init__(self, name: str = "engine", inline: bool = False):
        self.inline = inline
        self._pool = None if inline else ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"compute-{name}")

    async def run(self, fn: Callable, *args) -> Any:
        if self._pool is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class _Pending:
    item: Any
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    disconnected: Callable[[], Awaitable[bool]] | None = None


class MicroBatcher:
    def __init__(
        self,
        process: Callable[[list], Awaitable[list]],
        max_size: int = 64,
        max_wait_s: float = 0.0,
        max_in_flight: int = 1,
        max_queue: int = 1024,
        deadline_s: float | None = None,
        on_batch: Callable[[int, list[float]], None] | None = None,
        on_shed: Callable[[str], None] | None = None,
    ):
        self._process = process
        self.max_size, self.max_wait_s = max_size, max_wait_s
        self.max_queue, self.deadline_s = max_queue, deadline_s
        self._on_batch = on_batch  # (batch size, queue wait of each item in seconds)
        self._on_shed = on_shed or (lambda why: None)  # why: queue_full | deadline | disconnected
        self._pending: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None
        self._closed = False

    @property
    def depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._collect())

    async def stop(self) -> None:
        """Refuse new works, finish the batches in flight, answer queued works ShuttingDown."""
        self._closed = True
        if self._loop_task:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while self._pending:
            p = self._pending.popleft()
            if not p.future.done():
                p.future.set_exception(ShuttingDown())

    async def submit(self, item, disconnected: Callable[[], Awaitable[bool]] | None = None) -> Any:
        """Queue one work and wait for its result. `disconnected`: an async check that the
        caller's client has gone (a shed work costs no compute)."""
        return await self._enqueue([item], disconnected)[0]

    async def submit_many(self, items: list,
                          disconnected: Callable[[], Awaitable[bool]] | None = None) -> list:
        """Queue several works at once (they leave in the same batch when they fit) and wait for
        all: results in order, a work's exception in its place."""
        return await asyncio.gather(*self._enqueue(items, disconnected), return_exceptions=True)

    def _enqueue(self, items: list, disconnected) -> list[asyncio.Future]:
        if self._closed:
            raise ShuttingDown()
        if len(self._pending) + len(items) > self.max_queue:
            self._on_shed("queue_full")
            raise Overloaded("compute queue full")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self._pending.extend(_Pending(item, future, disconnected=disconnected)
                             for item, future in zip(items, futures))
        self._wakeup.set()
        return futures

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

    async def _admit(self, batch: list[_Pending], started: float) -> list[_Pending]:
        """The works of a batch still worth computing; the others are answered or dropped."""
        live = []
        for p in batch:
            if p.future.done():  # the caller went away (cancelled)
                continue
            waited = started - p.enqueued
            if self.deadline_s is not None and waited > self.deadline_s:
                self._on_shed("deadline")
                p.future.set_exception(Overloaded(f"queued {1000 * waited:.0f} ms"))
                continue
            if p.disconnected is not None and waited > DISCONNECT_CHECK_S:
                if await p.disconnected():
                    self._on_shed("disconnected")
                    p.future.cancel()
                    continue
            live.append(p)
        return live

    async def _dispatch(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        live = await self._admit(batch, started)
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
