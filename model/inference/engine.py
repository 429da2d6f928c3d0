"""The exact incremental inference engine: prefill, append and batched recommend over user caches.

Every path (prefill, append, advance, recommend with or without a cache) encodes the serving
window of `window_start` and runs the same model code, so a cached answer equals a full recompute
to float tolerance. `advance` brings caches up to date and returns each user's `UserState` (the
scoring vector and what explain and exclusions need); `rank` answers from states alone, with no
transformer pass; `recommend` is advance + rank. Caches and states are values: nothing here
mutates what it is given. An Engine reuses one workspace buffer, so call its forward paths from
one thread at a time (`rank` only reads the weights). Bad input: ValueError.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..base import SequentialRecommender
from .batch import Context, ContextBuilder
from .cache import UserCache
from .ranking import rank_states, with_top
from .state import UserState, seen_union
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
    state: UserState | None = None  # the state the answer was ranked from (store it to reuse)


@dataclass(frozen=True)
class Advance:
    """One user to bring up to date: `cache` (None = nothing cached) and the item indices that
    follow what it covers (with no cache: the whole history). `seen` is the sorted unique item
    indices of the history the cache covers (required with a cache; the state's exclusion set is
    seen + new_items)."""

    new_items: Sequence[int]
    cache: UserCache | None = None
    seen: np.ndarray | None = None


@dataclass
class _Job:
    past: UserCache | None  # reused cache (same window start), or None: encode the window afresh
    new_items: list[int]
    window_start: int
    seen: np.ndarray | None = None  # the state's exclusion set (filled by the caller's plan)


def _as_items(seq: Sequence[int], what: str) -> list[int]:
    try:
        return list(map(operator.index, seq))
    except TypeError:
        raise ValueError(f"{what} must be a sequence of integer item indices") from None


DEFAULT_TOP = 100  # stored answer length: requests with k <= this need no scoring
# Up to this many users a batch runs user by user through the compiled graphs (~0.2 ms each for
# PLR at d=64); larger batches amortise the eager per-op floor over their users instead. Measured
# (docs/inference.md, "Compiled user by user or one eager batch"): eager costs 2.2x per user at
# B=5 and only draws level near B=32. A lower cap made an overloaded server slower per user the
# moment its batches grew past it, which fed the overload.
COMPILED_MAX_BATCH = 32


class Engine:
    def __init__(self, model: SequentialRecommender, model_version: str, device="cpu",
                 top: int = DEFAULT_TOP):
        """Moves `model` to `device` and puts it in eval mode (dropout off: needed for exactness).
        `top`: how many ranked unseen items each computed `UserState` stores."""
        self.device = torch.device(device)
        self.top = top
        self.model = model.to(self.device).eval()
        self.model_version = model_version
        cfg = model.cfg
        self.n_items, self.max_len = cfg.n_items, cfg.max_len
        self._dims = (cfg.n_layers, cfg.n_heads, cfg.d_model)
        self._builder = ContextBuilder(model.encoder, self.device)
        self.graphs = None  # CompiledGraphs once attached (CPU only); None = eager

    def attach_graphs(self, graphs) -> None:
        """Use ahead-of-time compiled graphs (model/inference/compiled.py) for small batches."""
        if self.device.type != "cpu":
            raise ValueError("compiled graphs are CPU packages; this engine runs on " + str(self.device))
        self.graphs = graphs

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

    def _plan_advance(self, step: Advance) -> _Job:
        items = _as_items(step.new_items, "new_items")
        if step.cache is None:
            if not items:
                raise ValueError("advance needs new_items when no cache is given")
            job = _Job(None, items[window_start(len(items), self.max_len) :],
                       window_start(len(items), self.max_len))
            job.seen = seen_union(step.seen, items)
            return job
        if step.seen is None:
            raise ValueError("advance with a cache needs the seen items of the history it covers")
        job = self._plan_append(step.cache, items)
        job.seen = seen_union(step.seen, items)
        return job

    def _states(self, jobs: list[_Job]) -> tuple[list[UserCache], list[UserState]]:
        """New caches and states of every job: small batches through the compiled graphs when
        attached, else one ragged encoder pass and one reasoning pass over the whole batch."""
        if self.graphs is not None and len(jobs) <= COMPILED_MAX_BATCH:
            done = [self._compiled(job) for job in jobs]
        else:
            done = [(*result, None) for result in self._eager(jobs)]
        caches = [cache for cache, _, _, _ in done]
        states = [
            UserState(self.model_version, vector, job.seen, cache.history_length, details,
                      *(() if answer is None else answer))
            for job, (cache, vector, details, answer) in zip(jobs, done)
        ]
        todo = [b for b, (_, _, _, answer) in enumerate(done) if answer is None]
        if todo:  # ranked here unless a compiled graph already did
            for b, state in zip(todo, with_top(self.model, [states[b] for b in todo], self.top)):
                states[b] = state
        return caches, states

    def _eager(self, jobs: list[_Job]) -> list[tuple[UserCache, torch.Tensor, dict]]:
        ctx, caches = self._run(jobs)
        vectors, details = self.model.user_vectors(ctx.h0, ctx.layer_kv(), ctx.lens,
                                                   explain=True, n_ctx=ctx.n_ctx)
        vectors = ctx.to_request_order(vectors).float().cpu()
        details = {key: ctx.to_request_order(v).float().cpu() for key, v in details.items()}
        return [(cache, vectors[b], {key: v[b] for key, v in details.items()})
                for b, cache in enumerate(caches)]

    def _compiled(self, job: _Job):
        """One job through a compiled graph (append1 or prefill), else through the eager path:
        (cache, vector, details, answer or None)."""
        n_past = job.past.n_ctx if job.past is not None else 0
        if not self.graphs.covers(n_past, len(job.new_items)):
            return (*self._eager([job])[0], None)  # e.g. several new items on a cache (rare)
        self._check_range(job.new_items, "history")
        seen = torch.from_numpy(job.seen.astype(np.int64))
        if job.past is None:
            rows, vector, answer, details = self.graphs.run_prefill(job.new_items, seen)
            cache = UserCache(self.model_version, job.window_start, tuple(job.new_items),
                              (rows,), *self._dims)
        else:
            rows, vector, answer, details = self.graphs.run_append1(job.past.rows,
                                                                    job.new_items[0], seen)
            cache = job.past.extended(tuple(job.new_items), rows)
        return cache, vector, details, answer if self.graphs.top == self.top else None

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
    def advance(self, steps: Sequence[Advance]) -> list[tuple[UserCache, UserState]]:
        """Batched: each user's cache extended by its new items and its state computed."""
        if not steps:
            return []
        jobs = [self._plan_advance(step) for step in steps]
        for job in jobs:
            self._check_range(job.new_items, "new_items")
            if job.seen.size and int(job.seen[-1]) > self.n_items:
                raise ValueError(f"seen: item index {int(job.seen[-1])} out of range [1, {self.n_items}]")
        return list(zip(*self._states(jobs)))

    @torch.inference_mode()
    def rank(self, states: Sequence[UserState], ks: Sequence[int], exclude_seen: Sequence[bool],
             explain: Sequence[bool]) -> list[tuple[list[int], list[float], dict | None]]:
        """Top-k of stored states: scoring only (no forward pass, no workspace: thread-safe)."""
        for s in states:
            if s.model_version != self.model_version:
                raise ValueError(f"state is for model version {s.model_version!r}, engine serves "
                                 f"{self.model_version!r}")
        for k in ks:
            _check_k(k)
        return rank_states(self.model, states, ks, exclude_seen, explain)

    @torch.inference_mode()
    def recommend(self, requests: Sequence[RecRequest]) -> list[Recommendation]:
        """Top-k for a batch of users: one ragged encoder pass, one reasoning pass, one scoring."""
        if not requests:
            return []
        for r in requests:
            _check_k(r.k)
        jobs = [self._plan(r.history, r.cache) for r in requests]
        excluded = self._exclusions(requests)
        for job, hist in zip(jobs, excluded):
            job.seen = seen_union(None, hist)
        caches, states = self._states(jobs)
        ranked = rank_states(self.model, states, [r.k for r in requests],
                             [r.exclude_seen for r in requests], [r.explain for r in requests],
                             [r.exclude for r in requests])
        return [Recommendation(items, values, cache, info, state)
                for (items, values, info), cache, state in zip(ranked, caches, states)]

    def _exclusions(self, requests: Sequence[RecRequest]) -> list[list[int]]:
        """Per request, its history as item indices; also range-checks histories and deny lists."""
        out = []
        for b, r in enumerate(requests):
            hist, deny = _as_items(r.history, "history"), _as_items(r.exclude, "exclude")
            for what, items in (("history", hist), ("exclude", deny)):
                if items and (min(items) < 1 or max(items) > self.n_items):
                    self._check_range(items, f"request {b} {what}")
            out.append(hist)
        return out


def _check_k(k) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
