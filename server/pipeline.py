"""One micro-batch of one model: pipelined store read -> one compute call -> pipelined store write.

Jobs are "recommend" (score top-k) or "extend" (POST /events: bring an existing cache up to the
stored history, never build one). Stateless jobs touch no store. When the store is down, a job
that carries its own history is answered from it (cache "bypass"); one that needs stored state
gets `StoreUnavailable`. A failed cache write is logged and counted; the answer stands.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from model.inference import RecRequest

from .cache_state import ResolvedCache, plan_write, resolve
from .errors import StoreUnavailable
from .metrics import Metrics
from .runtime import ModelRuntime
from .store import StateRead, Store, UserState

log = logging.getLogger(__name__)


@dataclass
class Job:
    kind: str  # recommend | extend
    user_id: str | None = None
    history: list[str] | None = None  # the request's own history (authoritative when given)
    stateful: bool = False  # read and write the user's stored state (history and cache)
    read_history: bool = False  # use_cache=False with a user_id: read the history, nothing else
    state: UserState | None = None  # stateful job whose state was already read (POST /events)
    k: int = 10
    exclude_seen: bool = True
    explain: bool = False


@dataclass
class JobResult:
    history: list[str]
    outcome: str  # hit | extended | rebuilt | miss | bypass
    recommendation: object | None = None  # model.inference.Recommendation; None = no history
    # internal: what the compute and write stages need
    resolved: ResolvedCache | None = field(default=None, repr=False)
    indices: list[int] = field(default_factory=list, repr=False)
    new_cache: object | None = field(default=None, repr=False)


class BatchPipeline:
    def __init__(self, runtime: ModelRuntime, store: Store, metrics: Metrics, kv_dtype: str):
        self.rt, self.store, self.metrics, self.kv_dtype = runtime, store, metrics, kv_dtype

    async def __call__(self, jobs: list[Job]) -> list[JobResult | Exception]:
        states = await self._read(jobs)
        results: list[JobResult | Exception] = [
            s if isinstance(s, Exception) else self._plan(job, s) for job, s in zip(jobs, states)
        ]
        live = [(job, r) for job, r in zip(jobs, results) if isinstance(r, JobResult)]
        try:
            await self._compute(live)
        except Exception:
            if len(live) <= 1:
                raise
            # One bad job must not fail its neighbours: redo the batch one job at a time.
            log.exception("batched compute failed; retrying %d jobs one by one", len(live))
            self.metrics.error("batch_split")
            failed = await self._compute_each(live)
            results = [failed.get(id(r), r) for r in results]
            live = [(job, r) for job, r in live if id(r) not in failed]
        await self._write(live)
        for job, r in live:
            op = "recommend" if job.kind == "recommend" else "events"
            self.metrics.cache_outcome(self.rt.name, op, r.outcome)
        return results

    # -- stages ---------------------------------------------------------------------------------
    async def _read(self, jobs: list[Job]) -> list[UserState | None | Exception]:
        states: list = [j.state for j in jobs]
        reading = [i for i, j in enumerate(jobs)
                   if j.state is None and (j.stateful or j.read_history)]
        if not reading:
            return states
        reads = [StateRead(jobs[i].user_id, self.rt.version, jobs[i].history) if jobs[i].stateful
                 else StateRead(jobs[i].user_id, None) for i in reading]
        started = time.perf_counter()
        try:
            for i, state in zip(reading, await self.store.read_states(reads)):
                states[i] = state
        except StoreUnavailable as exc:
            for i in reading:
                if jobs[i].history is None:
                    states[i] = exc
                else:  # answer from the request's history; nothing read or written
                    jobs[i].stateful = False
                    self.metrics.error("store_read_degraded")
        self.metrics.stage(self.rt.name, "store_read", time.perf_counter() - started)
        return states

    def _plan(self, job: Job, state: UserState | None) -> JobResult:
        if not job.stateful:  # computed from scratch; the stored cache is neither read nor written
            history = state.history if state is not None else job.history or []
            return JobResult(history, "bypass", indices=self.rt.to_indices(history))
        history = state.history
        indices = self.rt.to_indices(history)
        resolved = resolve(state.kv, history, indices, lambda n: self.rt.count_known(history, n),
                           self.rt.engine.load_cache)
        return JobResult(history, resolved.outcome, resolved=resolved, indices=indices)

    async def _compute(self, live: list[tuple[Job, JobResult]]) -> None:
        recs = [(j, r) for j, r in live if j.kind == "recommend" and r.indices]
        exts = [(j, r) for j, r in live if j.kind == "extend" and r.resolved
                and r.resolved.cache is not None and r.outcome == "extended"]
        for j, r in live:
            if j.kind == "extend" and r.resolved is not None and r.resolved.cache is None:
                r.outcome = "miss"  # events never build a cache: the next /recommend does
        if not recs and not exts:
            return
        requests = [
            RecRequest(history=r.indices, cache=r.resolved.cache if r.resolved else None, k=j.k,
                       exclude_seen=j.exclude_seen, explain=j.explain)
            for j, r in recs
        ]
        to_extend = ([r.indices for _, r in exts], [r.resolved.cache for _, r in exts])
        started = time.perf_counter()
        answers, extended = await self.rt.worker.run(self._run_engine, requests, to_extend)
        self.metrics.stage(self.rt.name, "compute", time.perf_counter() - started)
        self.metrics.batch(self.rt.name, len(requests) + len(exts))
        for (_, r), answer in zip(recs, answers):
            r.recommendation, r.new_cache = answer, answer.cache
        for (_, r), cache in zip(exts, extended):
            r.new_cache = cache

    async def _compute_each(self, live: list[tuple[Job, JobResult]]) -> dict[int, Exception]:
        failed = {}
        for pair in live:
            try:
                await self._compute([pair])
            except Exception as exc:  # noqa: BLE001 - returned to that job's waiter
                failed[id(pair[1])] = exc
        return failed

    def _run_engine(self, requests, to_extend):
        engine = self.rt.engine
        return engine.recommend(requests), engine.extend(*to_extend)

    async def _write(self, live: list[tuple[Job, JobResult]]) -> None:
        writes = []
        for job, r in live:
            if job.stateful and r.new_cache is not None and r.resolved is not None:
                w = plan_write(job.user_id, self.rt.version, r.resolved, r.new_cache, r.history,
                               self.kv_dtype)
                if w is not None:
                    writes.append(w)
        if not writes:
            return
        started = time.perf_counter()
        try:
            applied = await self.store.write_caches(writes)
        except StoreUnavailable:
            self.metrics.error("store_write_failed")
            return
        finally:
            self.metrics.stage(self.rt.name, "store_write", time.perf_counter() - started)
        lost = len(applied) - sum(applied)
        if lost:  # another server wrote first; its cache is as good as ours
            self.metrics.error("kv_write_conflict")
            log.debug("%d cache writes lost a compare-and-set race", lost)
