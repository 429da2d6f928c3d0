"""The request-level operations behind the routes: validate against models and limits, run a job
through the model's micro-batcher, shape the answer. Raises only `server.errors` types.

recommend(): user_id only -> stored history; user_id + history -> the request's history is stored
(extended or replaced) first; history only or use_cache=False -> computed from scratch, nothing read
or written. No usable history -> popularity, flagged. append_events(): all or nothing, once per
event_id, then existing caches of every loaded model are extended (settings.events_extend_cache).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import asdict, dataclass

from .errors import InputError, StoreUnavailable, UnknownItems, UnknownModel, UnknownUser
from .pipeline import Job, JobResult
from .runtime import ModelRuntime
from .settings import Settings
from .store import Store


@dataclass
class RecommendQuery:
    user_id: str | None
    history: list[str] | None
    k: int = 10
    model: str | None = None
    exclude_seen: bool = True
    use_cache: bool = True
    explain: bool = False


MAX_LOOKUP_IDS = 100  # GET /items?ids=: one page's worth (the largest `limit`)


class Services:
    def __init__(self, settings: Settings, runtimes: dict[str, ModelRuntime], store: Store):
        self.settings, self.runtimes, self.store = settings, runtimes, store

    def runtime(self, name: str | None) -> ModelRuntime:
        name = name or self.settings.default_model
        if name not in self.runtimes:
            raise UnknownModel(name, sorted(self.runtimes))
        return self.runtimes[name]

    # -- recommend ------------------------------------------------------------------------------
    async def recommend(self, q: RecommendQuery) -> dict:
        rt = self.runtime(q.model)
        self._check_recommend(q, rt)
        job = Job(
            kind="recommend", user_id=q.user_id, history=q.history,
            stateful=q.user_id is not None and q.use_cache,
            read_history=q.user_id is not None and not q.use_cache and q.history is None,
            k=q.k, exclude_seen=q.exclude_seen, explain=q.explain,
        )
        result: JobResult = await rt.batcher.submit(job)
        return self._answer(q, rt, result)

    def _check_recommend(self, q: RecommendQuery, rt: ModelRuntime) -> None:
        limit_k = min(self.settings.max_k, rt.n_items)
        if q.k > limit_k:
            raise InputError(("body", "k"), f"k is {q.k}; the limit is {limit_k} "
                             f"(max_k {self.settings.max_k}, model {rt.name!r} has {rt.n_items} items)",
                             "less_than_equal")
        if q.history is not None:
            if len(q.history) > self.settings.max_history:
                raise InputError(("body", "history"), f"history has {len(q.history)} items; "
                                 f"the limit is {self.settings.max_history}", "too_long")
            unknown = rt.unknown(q.history)
            if unknown:
                raise UnknownItems(("body", "history"), unknown, rt.name)

    def _answer(self, q: RecommendQuery, rt: ModelRuntime, r: JobResult) -> dict:
        answer = {
            "user_id": q.user_id, "model": rt.name, "model_version": rt.version,
            "history_length": len(r.history), "cache": r.outcome, "fallback": None, "explain": None,
        }
        if r.recommendation is None:
            answer["fallback"] = "popularity"
            answer["items"] = self._popular(rt, q.k)
            return answer
        rec = r.recommendation
        answer["items"] = self._items(rt, rec.item_indices, rec.scores)
        if q.explain and rec.explain:
            answer["explain"] = self._explain(rt, rec.explain)
        return answer

    def _items(self, rt: ModelRuntime, indices, scores) -> list[dict]:
        indices = [int(i) for i in indices]
        return [
            {"item_id": item_id, "score": float(score), "title": rt.title(index)}
            for item_id, index, score in zip(rt.external(indices), indices, scores)
        ]

    def _popular(self, rt: ModelRuntime, k: int) -> list[dict]:
        top = rt.by_popularity[:k]
        return self._items(rt, top, rt.checkpoint.popularity[top].astype(float))

    def _explain(self, rt: ModelRuntime, explain: dict) -> dict | None:
        """Engine details ({"gate": [M], "streams": [[indices]]} or {"steps": ...}) with ids."""
        def named(indices):
            return [{"item_id": i, "title": rt.title(x)} for i, x in zip(rt.external(indices), indices)]

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
    async def append_events(self, user_id: str, item_ids: list[str], event_id: str | None) -> dict:
        unknown = [i for i in dict.fromkeys(item_ids)
                   if any(i not in rt.known for rt in self.runtimes.values())]
        if unknown:
            raise UnknownItems(("body", "item_ids"), unknown)
        # A server-made id makes the store's one transparent retry safe for id-less events too.
        event_id = event_id or f"auto:{uuid.uuid4().hex}"
        caches = {name: "bypass" for name in self.runtimes}
        if not self.settings.events_extend_cache:
            applied, length = await self.store.append_events(user_id, item_ids, event_id)
        else:
            # The append also reads every model's cache, in the same atomic step: the extend
            # jobs then go straight to compute (and a conditional write), no second read.
            names = list(self.runtimes)
            applied, length, states = await self.store.append_events_and_read(
                user_id, item_ids, event_id, [self.runtimes[n].version for n in names])
            results = await asyncio.gather(
                *(self.runtimes[n].batcher.submit(
                    Job(kind="extend", user_id=user_id, stateful=True, state=state))
                  for n, state in zip(names, states)),
                return_exceptions=True,
            )
            for name, result in zip(names, results):
                if isinstance(result, StoreUnavailable):
                    continue  # the events are stored; the cache catches up on the next request
                if isinstance(result, BaseException):
                    raise result
                caches[name] = result.outcome
        return {
            "user_id": user_id, "history_length": length, "applied": applied,
            "cache": caches[self.settings.default_model], "caches": caches,
        }

    # -- users ----------------------------------------------------------------------------------
    async def get_user(self, user_id: str) -> dict:
        history = await self.store.get_history(user_id)
        if not history:
            raise UnknownUser(user_id)
        return {"user_id": user_id, "history": history, "history_length": len(history)}

    async def delete_user(self, user_id: str) -> dict:
        versions = [rt.version for rt in self.runtimes.values()]
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
                 "config": rt.checkpoint.config.to_dict(), "metrics": rt.checkpoint.metrics}
                for rt in self.runtimes.values()
            ],
        }
