"""The request-level operations behind the routes. Raises only `server.errors` types.

recommend() decides the request's `Mode` once, where it is understood:
- STORED (user_id): the stored history. When the user's precomputed state covers it, the answer
  is that state ranked ("precomputed": one small Redis read, no model pass, no K/V read); else the
  model computes from the stored cache (or history) and the new cache and state are stored.
- AUTHORITATIVE (user_id + history): the request's history is stored first (extended when the
  stored one is a prefix, else replaced), then as STORED.
- STATELESS (history only), UNCACHED (use_cache false): computed from scratch; no cache or state
  is read or written.
No usable history -> popularity, flagged. A user's stateful requests (STORED, AUTHORITATIVE,
events) take turns in this process (server/user_turns.py), except a STORED one arriving while
the user has a turn in flight: a state covering exactly the stored history answers it at once.
append_events(): all or nothing, once per event_id, then every loaded model's existing cache and
state advance in one batch (settings.events_extend_cache); a user without a cache gets none
built here. Where this process holds a model's current cache for the user (the near cache: it
computed the last one), the new cache and state are computed first and ride in the append's own
store call, applied there only if that copy was still the stored history; otherwise, and for
recommend, writes of computed states are behind the answers.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import asdict
from collections.abc import Awaitable, Callable

from model.inference import StateFormatError, UserState
from model.inference.state import stored_answer

from .batcher import MicroBatcher
from .compute import RankSpec, Work, WorkResult
from .envelope import ENVELOPE_LEN, Envelope
from .errors import (
    InputError,
    StoreUnavailable,
    Unavailable,
    UnknownItems,
    UnknownModel,
    UnknownUser,
)
from .metrics import Metrics
from .near_cache import NearCache, NearEntry
from .reads_first import ReadsFirst
from .runtime import ModelRuntime
from .schemas import EventsRequest, RecommendRequest, item_strs
from .settings import Settings
from .store import ModelView, StateWrite, Store, UserView
from .user_turns import UserTurns
from .write_behind import WriteBehind

log = logging.getLogger(__name__)
Disconnected = Callable[[], Awaitable[bool]] | None


class Mode(enum.Enum):
    STORED = "stored"
    AUTHORITATIVE = "authoritative"
    STATELESS = "stateless"
    UNCACHED = "uncached"

    @classmethod
    def of(cls, body: RecommendRequest) -> "Mode":
        if body.user_id is None:
            return cls.STATELESS
        if not body.use_cache:
            return cls.UNCACHED
        return cls.STORED if body.history is None else cls.AUTHORITATIVE


MAX_LOOKUP_IDS = 100  # GET /items?ids=: one page's worth (the largest `limit`)


class Services:
    def __init__(self, settings: Settings, runtimes: dict[str, ModelRuntime], store: Store,
                 batcher: MicroBatcher, writes: WriteBehind, metrics: Metrics, graphs=None,
                 near: NearCache | None = None, reads: ReadsFirst | None = None):
        self.settings, self.runtimes, self.store = settings, runtimes, store
        self.batcher, self.writes, self.metrics = batcher, writes, metrics
        self.graphs = graphs  # GraphManager: each engine's compiled / eager status
        self.near = near if near is not None else NearCache(0)
        self.turns = UserTurns()  # a user's stateful requests one at a time, in arrival order
        self.reads = reads if reads is not None else ReadsFirst(0)  # event compute waits for them

    def runtime(self, name: str | None) -> ModelRuntime:
        name = name or self.settings.default_model
        if name not in self.runtimes:
            raise UnknownModel(name, sorted(self.runtimes))
        return self.runtimes[name]

    # -- recommend ------------------------------------------------------------------------------
    async def recommend(self, body: RecommendRequest, disconnected: Disconnected = None) -> dict:
        rt = self.runtime(body.model)
        history = item_strs(body.history)
        self._check_recommend(body.k, history, rt)
        spec = RankSpec(body.k, body.exclude_seen, body.explain)
        mode = Mode.of(body)
        if mode is Mode.STATELESS:
            return await self._from_history(body, rt, history, spec, disconnected)
        if mode is Mode.UNCACHED:
            if history is None:
                history = await self.store.get_history(body.user_id)
            return await self._from_history(body, rt, history, spec, disconnected)
        return await self._stateful(body, rt, history, spec, disconnected)

    def _check_recommend(self, k: int, history: list[str] | None, rt: ModelRuntime) -> None:
        limit_k = min(self.settings.max_k, rt.n_items)
        if k > limit_k:
            raise InputError(("body", "k"), f"k is {k}; the limit is {limit_k} "
                             f"(max_k {self.settings.max_k}, model {rt.name!r} has {rt.n_items} items)",
                             "less_than_equal")
        if history is not None:
            if len(history) > self.settings.max_history:
                raise InputError(("body", "history"), f"history has {len(history)} items; "
                                 f"the limit is {self.settings.max_history}", "too_long")
            unknown = rt.unknown(history)
            if unknown:
                raise UnknownItems(("body", "history"), unknown, rt.name)

    async def _from_history(self, body: RecommendRequest, rt: ModelRuntime, history: list[str],
                            spec: RankSpec, disconnected: Disconnected) -> dict:
        result = await self._submit(Work(rt, spec, history=history), disconnected)
        return self._answer(body, rt, len(history), result.outcome, result.ranked)

    async def _stateful(self, body: RecommendRequest, rt: ModelRuntime,
                        history: list[str] | None, spec: RankSpec,
                        disconnected: Disconnected) -> dict:
        if history is None and self.turns.busy(body.user_id):
            # The user's event (or request) is in flight: a stored state that covers exactly the
            # stored history answers now, as of that history (the two requests are concurrent;
            # one sent after an answer always sees what that answer stored: the history is
            # appended before an event answers, and a state is used only if it covers all of it).
            # Waiting for the turn would add that event's whole compute to this read.
            answer = await self._current_state(body, rt, spec)
            if answer is not None:
                return answer
        async with self.turns.turn(body.user_id):  # after the user's event or request in flight
            return await self._stateful_turn(body, rt, history, spec, disconnected)

    async def _current_state(self, body: RecommendRequest, rt: ModelRuntime,
                             spec: RankSpec) -> dict | None:
        """The answer from the user's current stored state, or None (none current, or it does not
        decode): then the request takes its turn and reads as usual."""
        started = time.perf_counter()
        async with self.reads.read():
            length, value = await self.store.read_state(body.user_id, rt.version)
            self.metrics.stage("recommend", rt.name, "state_read", time.perf_counter() - started)
            ranked = self._rank_stored(rt, value, spec) if value is not None else None
        return None if ranked is None else self._answer(body, rt, length, "precomputed", ranked)

    async def _stateful_turn(self, body: RecommendRequest, rt: ModelRuntime,
                             history: list[str] | None, spec: RankSpec,
                             disconnected: Disconnected) -> dict:
        user = body.user_id
        await self.writes.settled(user)  # this process's own pending write for the user first
        near = self.near.get(user, rt.version)
        hints = [near.envelope if near else b""]
        async with self.reads.read():  # nothing in here waits for compute (reads_first.py)
            view = await self._read_view(user, rt, history, hints)
            fresh = view.models[0].fresh_state if view is not None and view.length else None
            ranked = self._rank_stored(rt, fresh, spec) if fresh is not None else None
        if view is None:  # the store is down: answer from the request's own history
            self.metrics.error("store_read_degraded")
            return await self._from_history(body, rt, history, spec, disconnected)
        if view.length == 0:
            return self._answer(body, rt, 0, "miss", None)
        if ranked is not None:
            return self._answer(body, rt, view.length, "precomputed", ranked)
        if fresh is not None:  # the stored state did not decode
            view = await self.store.read(user, [rt.version], skip_state=True)
        result = await self._submit(self._stored_work(rt, spec, user, view, near=near),
                                    disconnected)
        if result.need_full:  # a stored base state did not decode: compute from the history
            view = await self.store.read(user, [rt.version], skip_state=True)
            result = await self._submit(self._stored_work(rt, spec, user, view), disconnected)
        return self._answer(body, rt, view.length, result.outcome, result.ranked)

    async def _read_view(self, user: str, rt: ModelRuntime, history: list[str] | None,
                         hints: list[bytes]) -> UserView | None:
        """The user's stored view (after storing `history` first, when given); None when the
        store is down and the request carries a history to answer from instead."""
        started = time.perf_counter()
        try:
            if history is None:
                view = await self.store.read(user, [rt.version], hints=hints)
            else:
                view = await self.store.sync(user, history, [rt.version], hints=hints)
        except StoreUnavailable:
            if history is None:
                raise
            return None
        self.metrics.stage("recommend", rt.name, "store_read", time.perf_counter() - started)
        return view

    @staticmethod
    def _stored_work(rt: ModelRuntime, spec: RankSpec | None, user: str, view: UserView,
                     route: str = "recommend", near=None) -> Work:
        return Work(rt, spec, view=view.models[0], user_id=user, length=view.length,
                    token=view.token, route=route, near=near)

    def _rank_stored(self, rt: ModelRuntime, value: bytes, spec: RankSpec):
        """Rank a stored current state right here on the event loop (microseconds when its stored
        list answers the request, tens when it is scored: a thread hop would cost more than the
        work); None when the bytes do not decode."""
        started = time.perf_counter()
        try:
            if spec.exclude_seen and not spec.explain:
                answer = stored_answer(value[ENVELOPE_LEN:], rt.version, rt.n_items, spec.k)
                if answer is not None:
                    self.metrics.stage("recommend", rt.name, "rank", time.perf_counter() - started)
                    return (*answer, None)
            state = UserState.from_bytes(value[ENVELOPE_LEN:], rt.version)
        except StateFormatError as exc:
            log.info("stored state unusable, recomputing: %s", exc)
            self.metrics.error("state_corrupt")
            return None
        (ranked,) = rt.engine.rank([state], [spec.k], [spec.exclude_seen], [spec.explain])
        self.metrics.stage("recommend", rt.name, "rank", time.perf_counter() - started)
        return ranked

    async def _submit(self, work: Work, disconnected: Disconnected = None) -> WorkResult:
        return await self.batcher.submit(work, disconnected)

    def _answer(self, body: RecommendRequest, rt: ModelRuntime, length: int, outcome: str,
                ranked) -> dict:
        self.metrics.cache_outcome(rt.name, "recommend", outcome)
        answer = {
            "user_id": body.user_id, "model": rt.name, "model_version": rt.version,
            "items": None, "history_length": length, "cache": outcome, "fallback": None,
            "explain": None,
        }
        if ranked is None:
            answer["fallback"] = "popularity"
            answer["items"] = self._popular(rt, body.k)
            return answer
        indices, scores, explain = ranked
        answer["items"] = self._items(rt, indices, scores)
        if body.explain and explain:
            answer["explain"] = self._explain(rt, explain)
        return answer

    @staticmethod
    def _items(rt: ModelRuntime, indices, scores) -> list[dict]:
        ids, titles = rt.ids, rt.titles
        return [{"item_id": ids[i], "score": s, "title": titles[i]} for i, s in zip(indices, scores)]

    def _popular(self, rt: ModelRuntime, k: int) -> list[dict]:
        top = rt.by_popularity[:k].tolist()
        return self._items(rt, top, rt.checkpoint.popularity[top].astype(float).tolist())

    @staticmethod
    def _explain(rt: ModelRuntime, explain: dict) -> dict | None:
        """Engine details ({"gate": [M], "streams": [[indices]]} or {"steps": ...}) with ids."""
        def named(indices):
            return [{"item_id": rt.ids[i], "title": rt.titles[i]} for i in indices]

        out = {}
        if "streams" in explain:
            gate = explain.get("gate") or [None] * len(explain["streams"])
            out["streams"] = [{"stream": m, "gate_weight": g, "items": named(items)}
                              for m, (g, items) in enumerate(zip(gate, explain["streams"]))]
        if "steps" in explain:
            out["steps"] = [{"step": t, "items": named(items)}
                            for t, items in enumerate(explain["steps"])]
        return out or None

    # -- events ---------------------------------------------------------------------------------
    async def append_events(self, body: EventsRequest, disconnected: Disconnected = None) -> dict:
        item_ids = item_strs(body.item_ids)
        unknown = [i for i in dict.fromkeys(item_ids)
                   if any(i not in rt.known for rt in self.runtimes.values())]
        if unknown:
            raise UnknownItems(("body", "item_ids"), unknown)
        async with self.turns.turn(body.user_id):  # one item at a time onto a current cache
            return await self._append_turn(body, item_ids, disconnected)

    async def _append_turn(self, body: EventsRequest, item_ids: list[str],
                           disconnected: Disconnected) -> dict:
        user = body.user_id
        await self.writes.settled(user)
        names = list(self.runtimes) if self.settings.events_extend_cache else []
        versions = [self.runtimes[n].version for n in names]
        near = [self.near.get(user, v) for v in versions]
        ahead = await self._compute_ahead(user, names, near, item_ids, disconnected)
        started = time.perf_counter()
        view = await self.store.append_events(user, item_ids, body.event_id, versions,
                                              hints=[e.envelope if e else b"" for e in near],
                                              writes=[a[0] if a else None for a in ahead])
        self.metrics.stage("events", "all", "store_append", time.perf_counter() - started)
        caches = {name: "bypass" for name in self.runtimes}
        works: dict[str, Work] = {}
        for name, version, model_view, entry, done in zip(names, versions, view.models, near,
                                                          ahead):
            if model_view.written:  # (a refused copy is counted stale where it is read past)
                self.near.put(user, version, done[1])
                self.metrics.near_cache("used")
                caches[name] = "extended"
            elif model_view.fresh_state is not None:
                caches[name] = "hit"  # a repeated event id: nothing changed
            elif model_view.kv is not None or model_view.near:
                works[name] = self._stored_work(
                    self.runtimes[name], None, user,
                    UserView(view.length, view.token, [model_view]), route="events", near=entry)
            else:
                caches[name] = "miss"
        if works:
            try:  # every model's work in one batch
                results = await self.batcher.submit_many(list(works.values()), disconnected)
            except Unavailable as exc:  # shed or shutting down: the events are stored anyway
                results = [exc] * len(works)
            for name, result in zip(works, results):
                caches[name] = self._event_outcome(name, result)
        for name in names:
            self.metrics.cache_outcome(name, "events", caches[name])
        return {
            "user_id": user, "history_length": view.length, "applied": view.applied,
            "cache": caches[self.settings.default_model], "caches": caches,
        }

    async def _compute_ahead(self, user: str, names: list[str], near: list[NearEntry | None],
                             item_ids: list[str], disconnected: Disconnected
                             ) -> list[tuple[StateWrite, NearEntry] | None]:
        """Per model, the cache and state of its near-cache copy of the user's history extended
        by the event's items, computed before the store call (which applies them only if that
        copy is still the stored history: one round trip instead of an append and a write);
        None where there is no copy or the compute failed (the event then takes the read path)."""
        out: list[tuple[StateWrite, NearEntry] | None] = [None] * len(names)
        works, at = [], []
        for i, (name, entry) in enumerate(zip(names, near)):
            covered = Envelope.unpack(entry.envelope) if entry is not None else None
            if covered is None:
                continue
            works.append(Work(self.runtimes[name], None, view=ModelView(items=item_ids, near=True),
                              user_id=user, length=covered.length + len(item_ids),
                              token=covered.token, route="events", near=entry, defer_write=True))
            at.append(i)
        if not works:
            return out
        try:
            results = await self.batcher.submit_many(works, disconnected)
        except Unavailable:  # shed or shutting down: the append goes ahead without writes
            return out
        for i, result in zip(at, results):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result  # cancellation
                log.warning("computing %s's event ahead failed: %r", names[i], result)
                continue
            out[i] = result.write
        return out

    def _event_outcome(self, name: str, result: WorkResult | BaseException) -> str:
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result  # cancellation
            # The events are stored; the cache catches up on the next /recommend.
            log.warning("extending %s's cache after an event failed: %r", name, result)
            self.metrics.error("events_extend_failed")
            return "bypass"
        return "miss" if result.need_full else result.outcome

    # -- users ----------------------------------------------------------------------------------
    async def get_user(self, user_id: str) -> dict:
        history = await self.store.get_history(user_id)
        if not history:
            raise UnknownUser(user_id)
        return {"user_id": user_id, "history": history, "history_length": len(history)}

    async def delete_user(self, user_id: str) -> dict:
        await self.writes.settled(user_id)
        versions = [rt.version for rt in self.runtimes.values()]
        self.near.discard(user_id, *versions)
        if not await self.store.delete_user(user_id, versions):
            raise UnknownUser(user_id)
        return {"user_id": user_id, "deleted": True}

    # -- catalogue ------------------------------------------------------------------------------
    def items(self, model: str | None, q: str | None, ids: str | None, limit: int,
              offset: int) -> dict:
        """GET /items: a page of the title matches of `q` (all items when q is empty), or of the
        comma-separated `ids` in the order given; unknown ids are a 422 naming them."""
        rt = self.runtime(model)
        if ids is None:
            total, rows = rt.catalog.search(q or "", limit, offset)
        else:
            if q is not None:
                raise InputError(("query", "ids"), "give q or ids, not both")
            wanted = [i.strip() for i in ids.split(",") if i.strip()]
            if len(wanted) > MAX_LOOKUP_IDS:
                raise InputError(("query", "ids"), f"ids has {len(wanted)} item ids; the limit "
                                 f"is {MAX_LOOKUP_IDS}", "too_long")
            found = [rt.catalog.lookup(i) for i in wanted]
            unknown = [i for i, row in zip(wanted, found) if row is None]
            if unknown:
                raise UnknownItems(("query", "ids"), list(dict.fromkeys(unknown)), rt.name)
            total, rows = len(found), found[offset:offset + limit]
        return {"model": rt.name, "total": total, "limit": limit, "offset": offset,
                "items": [asdict(row) for row in rows]}

    # -- models ---------------------------------------------------------------------------------
    def models(self) -> dict:
        return {
            "default": self.settings.default_model,
            "models": [
                {"name": rt.name, "version": rt.version, "kind": rt.kind,
                 "default": rt.name == self.settings.default_model, "n_items": rt.n_items,
                 "config": rt.checkpoint.config.to_dict(), "metrics": rt.checkpoint.metrics,
                 "engine": self.graphs.describe(rt.name) if self.graphs else None}
                for rt in self.runtimes.values()
            ],
        }
