"""What one app owns between startup and shutdown: models, store, batchers, metrics.

`start()` loads every checkpoint once (off the event loop), warms each engine up, opens the store
(starting an embedded redis-server when no REDIS_URL is set) and starts one micro-batcher per
model; the server is ready only after all of that. `stop()` undoes it in reverse order. The store
may be down at startup: the server still starts and /readyz says so until Redis answers.
"""

from __future__ import annotations

import asyncio
import logging

from .batcher import MicroBatcher
from .embedded_redis import EmbeddedRedis
from .errors import StoreUnavailable
from .metrics import Metrics
from .pipeline import BatchPipeline
from .runtime import ModelRuntime, load_runtimes
from .services import Services
from .settings import Settings
from .store import RedisStore

log = logging.getLogger(__name__)


class AppState:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = Metrics()
        self.runtimes: dict[str, ModelRuntime] = {}
        self.embedded: EmbeddedRedis | None = None
        self.store: RedisStore | None = None
        self.services: Services | None = None
        self.warm = False

    async def start(self) -> None:
        s = self.settings
        self.runtimes = await asyncio.to_thread(load_runtimes, s)
        for rt in self.runtimes.values():
            await rt.worker.run(rt.warm_up)
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
        )
        for rt in self.runtimes.values():
            rt.batcher = MicroBatcher(
                BatchPipeline(rt, self.store, self.metrics, s.kv_dtype),
                max_size=s.batch_max_size, max_wait_s=s.batch_max_wait_ms / 1000,
                max_in_flight=s.batch_max_in_flight,
                on_batch=self._observer(rt.name),
            )
            rt.batcher.start()
        self.services = Services(s, self.runtimes, self.store)
        self.warm = True

    def _observer(self, model: str):
        def observe(size: int, waits: list[float]) -> None:
            for wait in waits:
                self.metrics.stage(model, "queue_wait", wait)
        return observe

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
        for rt in self.runtimes.values():
            if rt.batcher:
                await rt.batcher.stop()
            rt.worker.close()
        if self.store:
            await self.store.close()
        if self.embedded:
            await asyncio.to_thread(self.embedded.close)
