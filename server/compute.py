"""One micro-batch of model work, every model at once: one compute-thread hop, then write-behind.

A `Work` is one model's computation for one user, planned where the request was understood
(server/services.py): stateless (from a history; nothing stored), or from what the store returned
for the user's current history (`ModelView`: a cache and state to extend, or the whole history).
On the compute thread, stored bytes are decoded and checked, every model's users advance in one
engine call (`Engine.advance`: new cache + `UserState`), and recommend work is ranked from those
states. Answers go back at once; the conditional writes of the new caches and states are
scheduled behind them (server/write_behind.py) and never fail an answer.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass

from model.inference import Advance, CacheFormatError, StateFormatError, UserCache, UserState
from model.inference.state import seen_union

from .batcher import ComputeWorker
from .envelope import ENVELOPE_LEN, KV_MAGIC, STATE_MAGIC, Envelope
from .metrics import Metrics
from .near_cache import NearCache, NearEntry
from .reads_first import ReadsFirst
from .runtime import ModelRuntime
from .store import ModelView, StateWrite, Store
from .write_behind import WriteBehind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankSpec:
    k: int
    exclude_seen: bool = True
    explain: bool = False


@dataclass
class Work:
    runtime: ModelRuntime
    rank: RankSpec | None = None  # None: advance and store only (POST /events)
    history: list[str] | None = None  # stateless: compute from these ids, store nothing
    view: ModelView | None = None  # stateful: what the store returned for this model
    user_id: str | None = None
    length: int = 0  # the stored history (length, token) the view describes
    token: str = ""
    route: str = "recommend"  # metrics label
    near: NearEntry | None = None  # the near-cache entry whose envelope the read offered
    # Hand the new cache and state back (WorkResult.write) instead of writing them behind the
    # answer: an event computed before its store call, which carries the write (services.py).
    defer_write: bool = False

    @property
    def builds(self) -> bool:
        """Recommend work builds a missing cache; event work only extends an existing one."""
        return self.rank is not None


@dataclass
class WorkResult:
    outcome: str  # hit | extended | rebuilt | miss | bypass
    ranked: tuple[list[int], list[float], dict | None] | None = None  # None: no known items
    need_full: bool = False  # a stored base did not decode: read again without states, resubmit
    write: tuple[StateWrite, NearEntry] | None = None  # defer_write: the write and its near entry


@dataclass
class _Planned:
    step: Advance | None  # None: nothing to compute (see result)
    result: WorkResult
    previous: UserCache | None = None  # the cache the step extends (for an APPEND write)


class ComputePipeline:
    def __init__(self, worker: ComputeWorker, store: Store, writes: WriteBehind, metrics: Metrics,
                 kv_dtype: str, near: NearCache | None = None, reads: ReadsFirst | None = None):
        self.worker, self.store, self.writes = worker, store, writes
        self.metrics, self.kv_dtype = metrics, kv_dtype
        self.near = near if near is not None else NearCache(0)
        self.reads = reads  # events-only batches let the reads in flight answer first

    async def __call__(self, works: list[Work]) -> list[WorkResult | Exception]:
        if self.reads is not None and all(w.route == "events" for w in works):
            waited = await self.reads.settle()
            if waited:
                self.metrics.stage("events", "all", "reads_first", waited)
        results, writes, timings = await self.worker.run(self._compute, works)
        for (route, model), seconds in timings.items():
            self.metrics.stage(route, model, "compute", seconds)
        if writes:
            for write, entry in writes:
                self.near.put(write.user_id, write.model_version, entry)
            writes = [write for write, _ in writes]
            self.writes.schedule([w.user_id for w in writes],
                                lambda on_sent: self._write(writes, on_sent))
        return results

    # -- on the compute thread --------------------------------------------------------------------
    def _compute(self, works: list[Work]):
        results: list[WorkResult | Exception] = [None] * len(works)  # type: ignore[list-item]
        writes: list[tuple[StateWrite, NearEntry]] = []
        timings: dict[tuple[str, str], float] = defaultdict(float)
        groups: dict[str, list[int]] = defaultdict(list)
        for i, w in enumerate(works):
            groups[w.runtime.name].append(i)
        for indices in groups.values():
            started = time.perf_counter()
            try:
                self._run_group([works[i] for i in indices], indices, results, writes)
            except Exception:  # noqa: BLE001 - one bad work must not fail its neighbours
                log.exception("batched compute failed; retrying %d works one by one", len(indices))
                self.metrics.error("batch_split")
                for i in indices:
                    try:
                        self._run_group([works[i]], [i], results, writes)
                    except Exception as exc:  # noqa: BLE001 - returned to that work's waiter
                        results[i] = exc
            seconds = (time.perf_counter() - started) / len(indices)
            for i in indices:
                timings[(works[i].route, works[i].runtime.name)] += seconds
        return results, writes, timings

    def _run_group(self, works: list[Work], indices: list[int], results: list,
                   writes: list[tuple[StateWrite, NearEntry]]) -> None:
        rt = works[0].runtime
        planned = [self._plan(w) for w in works]
        todo = [(w, p) for w, p in zip(works, planned) if p.step is not None]
        advanced = rt.engine.advance([p.step for _, p in todo]) if todo else []
        ranking = [(w, p, state) for (w, p), (_, state) in zip(todo, advanced) if w.rank]
        if ranking:
            ranked = rt.engine.rank([s for _, _, s in ranking], [w.rank.k for w, _, _ in ranking],
                                    [w.rank.exclude_seen for w, _, _ in ranking],
                                    [w.rank.explain for w, _, _ in ranking])
            for (_, p, _), answer in zip(ranking, ranked):
                p.result.ranked = answer
        for (w, p), (cache, state) in zip(todo, advanced):
            if w.view is not None and w.user_id is not None:
                if w.defer_write:
                    p.result.write = self._write_for(w, p, cache, state)
                else:
                    writes.append(self._write_for(w, p, cache, state))
        for i, p in zip(indices, planned):
            results[i] = p.result

    def _plan(self, w: Work) -> _Planned:
        rt = w.runtime
        if (w.near is not None and w.view is not None and w.view.fresh_state is None
                and not w.defer_write):  # a deferred write's caller counts it once it lands
            self.metrics.near_cache("used" if w.view.near else "stale")
        if w.view is None:  # stateless
            items = rt.to_indices(w.history or [])
            return _Planned(Advance(items) if items else None, WorkResult("bypass"))
        view = w.view
        if view.near:  # the stored cache is the near-cache copy the read offered
            if w.near is None:
                return _Planned(None, WorkResult("rebuilt", need_full=True))
            new = rt.to_indices(view.items or [])
            return _Planned(Advance(new, w.near.cache, w.near.state.seen),
                            WorkResult("extended" if new else "hit"), w.near.cache)
        cache = self._decode_cache(rt, view.kv)
        if view.base_state is not None:  # cache and state cover the same prefix: items are new
            base = self._decode_state(rt, view.base_state)
            if cache is None or base is None or base.history_length != cache.history_length:
                return _Planned(None, WorkResult("rebuilt", need_full=True))
            new = rt.to_indices(view.items or [])
            return _Planned(Advance(new, cache, base.seen),
                            WorkResult("extended" if new else "hit"), cache)
        items = view.items or []  # the whole history
        stale = view.stale_kv or (view.kv is not None and cache is None)
        if cache is not None:
            covered = Envelope.unpack(view.kv).length
            prefix, new = rt.to_indices(items[:covered]), rt.to_indices(items[covered:])
            # The token already guarantees it; a cheap check that the cache is what it claims.
            if len(prefix) == cache.history_length and tuple(
                    prefix[cache.window_start:]) == cache.items:
                return _Planned(Advance(new, cache, seen_union(None, prefix)),
                                WorkResult("extended" if new else "hit"), cache)
            stale = True
        if not w.builds:  # events never build a cache: the next /recommend does
            return _Planned(None, WorkResult("miss"))
        known = rt.to_indices(items)
        return _Planned(Advance(known) if known else None,
                        WorkResult("rebuilt" if stale else "miss"))

    def _decode_cache(self, rt: ModelRuntime, value: bytes | None) -> UserCache | None:
        if value is None:
            return None
        try:
            return rt.engine.load_cache(value[ENVELOPE_LEN:])
        except CacheFormatError as exc:
            log.info("stored cache unusable, rebuilding: %s", exc)
            self.metrics.error("cache_corrupt")
            return None

    def _decode_state(self, rt: ModelRuntime, value: bytes) -> UserState | None:
        try:
            return UserState.from_bytes(value[ENVELOPE_LEN:], rt.version)
        except StateFormatError as exc:
            log.info("stored state unusable, recomputing: %s", exc)
            self.metrics.error("state_corrupt")
            return None

    def _write_for(self, w: Work, p: _Planned, cache: UserCache,
                   state: UserState) -> tuple[StateWrite, NearEntry]:
        """The conditional write of the new cache and state, and the near-cache entry that
        describes the stored cache once it lands."""
        write = StateWrite(w.user_id, w.runtime.version, w.length, w.token,
                           state=Envelope(STATE_MAGIC, w.length, w.token).pack() + state.to_bytes())
        if w.view.near:
            stored_head, stored_len = w.near.envelope, w.near.stored_len
        elif w.view.kv is not None:
            stored_head, stored_len = w.view.kv[:ENVELOPE_LEN], len(w.view.kv)
        else:
            stored_head, stored_len = b"", 0
        if p.previous is not None and cache is p.previous:
            # nothing new in the cache: only the state is written
            return write, NearEntry(stored_head, stored_len, cache, state)
        mode, payload = cache.write_plan(p.previous, self.kv_dtype)
        write.kv_mode, write.kv_payload = mode, payload
        write.kv_head = Envelope(KV_MAGIC, w.length, w.token).pack()
        if mode == "append":
            write.expected_head, write.expected_strlen = stored_head, stored_len
            new_len = stored_len + len(payload)
        else:
            new_len = ENVELOPE_LEN + len(payload)
        return write, NearEntry(write.kv_head, new_len, cache, state)

    # -- behind the answers -----------------------------------------------------------------------
    async def _write(self, writes: list[StateWrite], on_sent=None) -> None:
        started = time.perf_counter()
        try:
            replies = await self.store.write_states(writes, on_sent)
        except Exception as exc:  # noqa: BLE001 - a failed write never fails an answer
            log.warning("cache/state write failed: %s", exc)
            self.metrics.error("store_write_failed")
            return
        finally:
            self.metrics.stage("write", "all", "store_write", time.perf_counter() - started)
        for write, reply in zip(writes, replies):
            if isinstance(reply, Exception):
                self.metrics.error("store_write_failed")
            elif not reply[1] or (write.kv_mode != "none" and not reply[0]):
                # Another request or server wrote first, or the history moved on (or was
                # deleted): the write is refused, nothing wrong is ever stored.
                self.metrics.error("write_superseded")
