"""Reads first: a batch of event compute waits for the stored-user reads already in flight.

Why: with the engine inline on the event loop (one core), a batch of event work blocks the loop
for its whole compute (~0.1-0.4 ms per event, more for PLR's reasoning than for SASRec). A
/recommend by user_id whose precomputed state is current needs no model pass, only one Redis
read, but if that read's reply arrives while an event batch computes, the answer waits for the
batch: near capacity a model's /recommend latency then rides on its *event* cost. An event's
client is told "stored" either way, a few hundred microseconds later; a reader is waiting for a
page. So before an events-only batch computes, it waits until the reads that were in flight
when it became ready have answered (bounded by `max_wait_s`); reads that arrive during that wait
do not extend it, so events are never starved.

Contract: `async with reads.read():` marks the span of a read that needs no compute (the store
read and the ranking of its stored state); it must not wrap a wait for compute (that would make
the compute wait for itself until the bound). `await reads.settle()` returns at once when no
read is in flight (no suspension: the batcher's direct path relies on it), else after the
in-flight reads finish or `max_wait_s`, whichever is first, and returns the seconds waited.
Correctness never depends on this: only the order of work on the core changes.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager


class ReadsFirst:
    def __init__(self, max_wait_s: float):
        self.max_wait_s = max_wait_s
        self._in_flight: set[asyncio.Future] = set()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @asynccontextmanager
    async def read(self):
        if self.max_wait_s <= 0:
            yield
            return
        done = asyncio.get_running_loop().create_future()
        self._in_flight.add(done)
        try:
            yield
        finally:
            self._in_flight.discard(done)
            done.set_result(None)

    async def settle(self) -> float:
        if not self._in_flight:
            return 0.0
        started = time.perf_counter()
        # A snapshot: reads that start while this waits are not waited for.
        await asyncio.wait(list(self._in_flight), timeout=self.max_wait_s)
        return time.perf_counter() - started
