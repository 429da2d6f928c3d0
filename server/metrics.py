"""Prometheus metrics of one app, on its own registry (several apps in one process never clash).

Stages (`plr_stage_seconds{route, model, stage}`), per route: `parse` (HTTP parse + validation,
from the first byte to the handler), `store_read`, `rank` (scoring a stored or computed state),
`queue_wait` (micro-batcher), `reads_first` (an events-only batch waiting for the reads in
flight: server/reads_first.py), `compute` (the engine, per work), `encode` (response bytes), and
`store_write` (route "write": behind the answers). Plus request latency per route, batch sizes,
cache outcomes (precomputed|hit|extended|rebuilt|miss|bypass), errors and shed requests by kind.
"""

from __future__ import annotations

import gc
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Sub-millisecond to seconds: the interesting range of a stored user's answer is 0.05-20 ms.
_LATENCY_BUCKETS = (0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032,
                    0.064, 0.128, 0.256, 0.512, 1.0, 2.0, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_latency = Histogram(
            "plr_request_seconds", "HTTP request latency", ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS, registry=r)
        self.stage_latency = Histogram(
            "plr_stage_seconds", "Time per request stage", ["route", "model", "stage"],
            buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "plr_batch_size", "Works per compute batch (all models)", [],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.cache_outcomes = Counter(
            "plr_cache_outcomes", "Cache outcome per request and model (op: recommend | events)",
            ["model", "op", "outcome"], registry=r)
        self.errors = Counter("plr_errors", "Errors and degraded paths by kind", ["kind"], registry=r)
        self.in_flight = Gauge("plr_in_flight", "HTTP requests being served", registry=r)
        self.queue_depth = Gauge("plr_queue_depth", "Works waiting for the compute thread",
                                 registry=r)
        self.near = Counter("plr_near_cache", "Reads that offered a near-cache copy: used (the "
                            "stored cache is that copy) or stale", ["result"], registry=r)
        self.ready = Gauge("plr_ready", "1 when models are warm and the store answers", registry=r)
        self.compiled = Gauge("plr_compiled_graphs", "Compiled engine graphs in use per model "
                              "(0 = eager fallback)", ["model"], registry=r)
        self.gc_pause = Histogram(
            "plr_gc_pause_seconds", "Cycle-collector pauses of this process (they stall the "
            "event loop)", ["generation"], buckets=_LATENCY_BUCKETS, registry=r)
        self._children: dict[tuple, object] = {}
        self.requests_in_flight = 0  # HTTP requests in flight now (MetricsMiddleware), as a plain int
        self._gc_started = 0.0
        self._gc_callback = None

    def watch_gc(self) -> None:
        """Observe every cycle-collector pause of the process from now on (gc.callbacks)."""
        def callback(phase: str, info: dict) -> None:
            if phase == "start":
                self._gc_started = time.perf_counter()
            else:
                self._child(self.gc_pause, str(info.get("generation"))).observe(
                    time.perf_counter() - self._gc_started)

        gc.callbacks.append(callback)
        self._gc_callback = callback

    def unwatch_gc(self) -> None:
        if self._gc_callback in gc.callbacks:
            gc.callbacks.remove(self._gc_callback)
        self._gc_callback = None

    def _child(self, metric, *labels):
        """metric.labels(*labels), looked up once: labels() costs more than the observation."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def stage(self, route: str, model: str, stage: str, seconds: float) -> None:
        self._child(self.stage_latency, route, model, stage).observe(seconds)

    def request(self, method: str, route: str, status: str, seconds: float) -> None:
        self._child(self.request_latency, method, route, status).observe(seconds)

    def cache_outcome(self, model: str, op: str, outcome: str) -> None:
        self._child(self.cache_outcomes, model, op, outcome).inc()

    def batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def near_cache(self, result: str) -> None:
        self._child(self.near, result).inc()

    def error(self, kind: str) -> None:
        self._child(self.errors, kind).inc()
