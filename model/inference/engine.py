"""The exact incremental inference engine: prefill, append and batched recommend over user caches.

Every path (prefill, append, recommend with or without a cache) encodes the serving window of
`window_start` and runs the same model code, so a cached answer equals a full recompute to float
tolerance. Caches are values: append() and recommend() never mutate the caches they are given.
An Engine reuses one workspace buffer, so call it from one thread at a time. Bad input: ValueError.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..base import SequentialRecommender
from .batch import Context, ContextBuilder
from .cache import UserCache
from .ranking import exclude_items, explain_details, top_k
from .window import window_start


@dataclass(frozen=True)
class RecRequest:
    history: Sequence[int]  # the user's FULL history (internal item indices), new items included
    cache: UserCache | None = None  # a cache for a prefix of history (or all of it); None = scratch
    k: int = 10
    exclude_seen: bool = True
    exclude: Sequence[int] = ()
    explain: bool = False


@dataclass(frozen=True)
class Recommendation:
    item_indices: list[int]  # best first; exactly k unless fewer items are left after exclusions
    scores: list[float]
    cache: UserCache  # covers the full history of the request
    explain: dict | None = None  # PLR: {"gate": [M floats], "streams": [[top items] per stream]}


@dataclass
class _Job:
    past: UserCache | None  # reused cache (same window start), or None: encode the window afresh
    new_items: list[int]
    window_start: int


def _as_items(seq: Sequence[int], what: str) -> list[int]:
    try:
        return list(map(operator.index, seq))
    except TypeError:
        raise ValueError(f"{what} must be a sequence of integer item indices") from None


class Engine:
    def __init__(self, model: SequentialRecommender, model_version: str, device="cpu"):
        """Moves `model` to `device` and puts it in eval mode (dropout off: needed for exactness)."""
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.model_version = model_version
        cfg = model.cfg
        self.n_items, self.max_len = cfg.n_items, cfg.max_len
        self._dims = (cfg.n_layers, cfg.n_heads, cfg.d_model)
        self._builder = ContextBuilder(model.encoder, self.device)

    # -- caches ---------------------------------------------------------------------------------
    def load_cache(self, data: bytes) -> UserCache:
        """UserCache.from_bytes for this model's version and dims (CacheFormatError otherwise)."""
        n_layers, n_heads, d_model = self._dims
        return UserCache.from_bytes(data, self.model_version, n_layers=n_layers, n_heads=n_heads,
                                    d_model=d_model)

    def _check_cache(self, cache: UserCache) -> None:
        if not isinstance(cache, UserCache):
            raise ValueError(f"cache must be a UserCache or None, got {type(cache).__name__}")
        if cache.model_version != self.model_version:
            raise ValueError(f"cache is for model version {cache.model_version!r}, engine serves "
                             f"{self.model_version!r}")
        if (cache.n_layers, cache.n_heads, cache.d_model) != self._dims:
            raise ValueError("cache dims (n_layers, n_heads, d_model) do not match the model")

    def _check_range(self, items: list[int], what: str) -> None:
        if items and (min(items) < 1 or max(items) > self.n_items):
            bad = next(i for i in items if not 1 <= i <= self.n_items)
            raise ValueError(f"{what}: item index {bad} out of range [1, {self.n_items}]")

    # -- planning: what to encode for each user -----------------------------------------------------
    def _plan(self, history: Sequence[int], cache: UserCache | None) -> _Job:
        n = len(history)
        if cache is None and n == 0:
            raise ValueError("history is empty and no cache was given")
        start = window_start(n, self.max_len)
        if cache is not None:
            self._check_cache(cache)
            if cache.history_length > n:
                raise ValueError(f"cache covers {cache.history_length} items, history has only {n}")
            if tuple(history[cache.window_start : cache.history_length]) != cache.items:
                raise ValueError("cache is not a prefix of history (its items differ)")
            if cache.window_start == start:
                return _Job(cache, _as_items(history[cache.history_length :], "history"), start)
        return _Job(None, _as_items(history[start:], "history"), start)

    def _plan_append(self, cache: UserCache, items: list[int]) -> _Job:
        self._check_cache(cache)
        start = window_start(cache.history_length + len(items), self.max_len)
        if start == cache.window_start:
            return _Job(cache, items, start)
        # Crossing the window edge: the new window is a suffix of (cached window + new items).
        return _Job(None, (list(cache.items) + items)[start - cache.window_start :], start)

    def _run(self, jobs: list[_Job]) -> tuple[Context, list[UserCache]]:
        """Encode every job's new items in one ragged batch; returns the context and new caches."""
        for job in jobs:
            self._check_range(job.new_items, "history")
        ctx = self._builder.build([list(j.past.chunks) if j.past else [] for j in jobs],
                                  [j.new_items for j in jobs], spare=self.model.scratch_slots)
        caches = []
        for job, rows in zip(jobs, ctx.new_rows):
            if job.past is None:
                caches.append(UserCache(self.model_version, job.window_start, tuple(job.new_items),
                                        (rows,), *self._dims))
            else:
                caches.append(job.past.extended(tuple(job.new_items), rows) if job.new_items else job.past)
        return ctx, caches

    # -- public API ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, history: Sequence[int]) -> UserCache:
        """The cache of a full history (the window applies; every item is range-checked)."""
        self._check_range(_as_items(history, "history"), "history")
        return self._run([self._plan(history, None)])[1][0]

    @torch.inference_mode()
    def append(self, cache: UserCache, items: Sequence[int]) -> UserCache:
        """cache extended by items (one or many); crossing the window edge re-encodes the new window."""
        items = _as_items(items, "items")
        if not items:
            self._check_cache(cache)
            return cache
        return self._run([self._plan_append(cache, items)])[1][0]

    @torch.inference_mode()
    def extend(self, histories: Sequence[Sequence[int]],
               caches: Sequence[UserCache | None]) -> list[UserCache]:
        """Batched: each user's cache brought up to its full history (no scoring)."""
        if len(histories) != len(caches):
            raise ValueError("histories and caches differ in length")
        if not histories:
            return []
        for h in histories:
            self._check_range(_as_items(h, "history"), "history")
        return self._run([self._plan(h, c) for h, c in zip(histories, caches)])[1]

    @torch.inference_mode()
    def recommend(self, requests: Sequence[RecRequest]) -> list[Recommendation]:
        """Top-k for a batch of users: one ragged encoder pass, one reasoning pass, one scoring."""
        if not requests:
            return []
        for r in requests:
            if isinstance(r.k, bool) or not isinstance(r.k, int) or r.k < 1:
                raise ValueError(f"k must be an integer >= 1, got {r.k!r}")
        jobs = [self._plan(r.history, r.cache) for r in requests]
        excluded = self._exclusions(requests)
        ctx, caches = self._run(jobs)
        want_explain = any(r.explain for r in requests)
        out = self.model.user_vectors(ctx.h0, ctx.layer_kv(), ctx.lens, explain=want_explain,
                                      n_ctx=ctx.n_ctx)
        vectors, details = out if want_explain else (out, None)
        scores = self.model.score(ctx.to_request_order(vectors))  # (B, n_items + 1), column 0 -inf
        exclude_items(scores, excluded)
        tops = top_k(scores, [r.k for r in requests], [len(t) for t in excluded])
        if details is not None:
            details = {key: ctx.to_request_order(v) for key, v in details.items()}
        results = []
        for b, (r, (items, values)) in enumerate(zip(requests, tops)):
            info = None
            if r.explain:
                info = explain_details(details, self.model, b, torch.isinf(scores[b]), r.k)
            results.append(Recommendation(items, values, caches[b], info))
        return results

    def _exclusions(self, requests: Sequence[RecRequest]) -> list[Tensor]:
        """Per request, the item indices to exclude (1-D long); also range-checks every history."""
        out = []
        for b, r in enumerate(requests):
            hist, deny = _as_items(r.history, "history"), _as_items(r.exclude, "exclude")
            for what, items in (("history", hist), ("exclude", deny)):
                if items and (min(items) < 1 or max(items) > self.n_items):
                    self._check_range(items, f"request {b} {what}")
            out.append(torch.tensor(hist + deny if r.exclude_seen else deny, dtype=torch.long))
        return out
