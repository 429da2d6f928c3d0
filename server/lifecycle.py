"""What one app owns between startup and shutdown: models, store, batchers, metrics.

`start()` loads every checkpoint once (off the event loop), warms each engine up, opens the store
(starting an embedded redis-server when no REDIS_URL is set) and starts the micro-batcher that
feeds the one compute thread; the server is ready only after all of that. `stop()` answers queued
work 503, finishes the batches in flight, flushes the writes behind them, then closes the store.
The store may be down at startup: the server still starts and /readyz says so until Redis answers.
"""

from __future__ import annotations

import asyncio
import gc
import logging

from .batcher import ComputeWorker, MicroBatcher
from .compute import ComputePipeline
from .embedded_redis import EmbeddedRedis
from .errors import StoreUnavailable
from .graphs import GraphManager
from .metrics import Metrics
from .near_cache import NearCache
from .reads_first import ReadsFirst
from .runtime import ModelRuntime, load_runtimes
from .services import Services
from .settings import Settings
from .store import IdempotencyPolicy, RedisStore
from .write_behind import WriteBehind

log = logging.getLogger(__name__)


def quiet_gc() -> None:
    """Keep Python's cycle collector off the latency tail: everything loaded at start (torch,
    models, FastAPI: hundreds of thousands of objects) is frozen out of future collections, and
    collections run far less often (requests free their garbage by reference counting; cycles
    are rare). A full collection walks every tracked object and stalls the event loop meanwhile;
    `plr_gc_pause_seconds{generation}` shows the pauses that remain."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def compute_inline(settings: Settings, runtimes: dict[str, ModelRuntime]) -> bool:
    """settings.compute, with "auto" resolved: inline for CPU engines on one torch thread."""
    if settings.compute != "auto":
        return settings.compute == "inline"
    import torch

    cpu = all(rt.engine.device.type == "cpu" for rt in runtimes.values())
    return cpu and torch.get_num_threads() == 1


class AppState:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = Metrics()
        self.runtimes: dict[str, ModelRuntime] = {}
        self.embedded: EmbeddedRedis | None = None
        self.store: RedisStore | None = None
        self.services: Services | None = None
        self.worker: ComputeWorker | None = None
        self.batcher: MicroBatcher | None = None
        self.writes = WriteBehind()
        self.graphs: GraphManager | None = None
        self.warm = False

    async def start(self) -> None:
        s = self.settings
        self.runtimes = await asyncio.to_thread(load_runtimes, s)
        self.worker = ComputeWorker(inline=compute_inline(s, self.runtimes))
        self.graphs = GraphManager(s, self.runtimes, self.worker, self.metrics)
        await self.graphs.start()
        for rt in self.runtimes.values():
            await self.worker.run(rt.warm_up)
        url = s.redis_url
        if url is None:
            self.embedded = await asyncio.to_thread(
                EmbeddedRedis(s.embedded_redis_dir, persist=s.embedded_redis_dir is not None).start
            )
            url = self.embedded.url
            log.info("embedded redis-server at %s", url)
        self.store = RedisStore(
            url, cluster=s.redis_cluster, timeout_s=s.redis_timeout_s,
            kv_ttl_seconds=s.kv_ttl_seconds, history_ttl_seconds=s.history_ttl_seconds,
            max_stored_history=s.max_stored_history,
            idempotency=IdempotencyPolicy(s.idempotency_window_s, s.idempotency_max_ids),
        )
        self.writes.ordered = self.store.sends_in_order  # settled once sent (write_behind.py)
        near = NearCache(s.near_cache_mb << 20)
        # Only where compute blocks the event loop does a read wait behind it (reads_first.py).
        reads = ReadsFirst(s.reads_first_ms / 1000) if self.worker.inline else ReadsFirst(0)
        self.batcher = MicroBatcher(
            ComputePipeline(self.worker, self.store, self.writes, self.metrics, s.kv_dtype, near,
                            reads),
            max_size=s.batch_max_size, max_wait_s=s.batch_max_wait_ms / 1000,
            max_in_flight=s.batch_max_in_flight, max_queue=s.max_queue,
            deadline_s=s.queue_timeout_ms / 1000, on_batch=self._observe_batch,
            on_shed=self._observe_shed,
            direct=(lambda: self.metrics.requests_in_flight <= 1) if self.worker.inline else None,
        )
        self.batcher.start()
        self.services = Services(s, self.runtimes, self.store, self.batcher, self.writes,
                                 self.metrics, self.graphs, near, reads)
        if s.gc_freeze:
            quiet_gc()
        self.metrics.watch_gc()
        self.warm = True

    def _observe_batch(self, size: int, waits: list[float]) -> None:
        self.metrics.batch(size)
        for wait in waits:
            self.metrics.stage("compute", "all", "queue_wait", wait)
        self.metrics.queue_depth.set(self.batcher.depth if self.batcher else 0)

    def _observe_shed(self, why: str) -> None:
        self.metrics.error(f"shed_{why}")

    async def ready(self) -> dict[str, bool]:
        store_ok = False
        if self.store is not None:
            try:
                store_ok = await self.store.ping()
            except StoreUnavailable:
                store_ok = False
        checks = {"models": self.warm, "store": store_ok}
        self.metrics.ready.set(1 if all(checks.values()) else 0)
        return checks

    async def stop(self) -> None:
        self.warm = False
        self.metrics.unwatch_gc()
        if self.graphs:
            await self.graphs.stop()
        if self.batcher:
            await self.batcher.stop()
        await self.writes.drain()
        if self.worker:
            self.worker.close()
        if self.store:
            await self.store.close()
        if self.embedded:
            await asyncio.to_thread(self.embedded.close)
