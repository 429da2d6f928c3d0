"""Turning a batch of score rows into top-k lists: exclusions, exact k, and explain details.

Excluded items (seen history, deny list) and the padding column are set to -inf, so top-k returns
exactly min(k, items left) real items per user, never the padding index 0. `explain_details`
scores any per-stream/per-step vectors a model reports under the same exclusions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from .state import top_covers


def exclude_items(scores: Tensor, item_lists: Sequence[Tensor], per_row: bool | None = None) -> None:
    """In place: scores[b, item] = -inf for every item of item_lists[b] (1-D long CPU tensors).

    per_row (default: on CPU) fills row by row; otherwise one index_put over all rows (one
    transfer and one kernel on an accelerator). Both give the same result.
    """
    if per_row if per_row is not None else scores.device.type == "cpu":
        # One index_fill_ per row: at CPU batch sizes this beats building a (row, item) index
        # (repeat_interleave + cat + index_put costs ~0.1 ms even for one row).
        for b, items in enumerate(item_lists):
            if items.numel():
                scores[b].index_fill_(0, items, float("-inf"))
        return
    lengths = torch.tensor([t.numel() for t in item_lists])
    if int(lengths.sum()) == 0:
        return
    rows = torch.repeat_interleave(torch.arange(len(item_lists)), lengths)
    items = torch.cat(list(item_lists))
    scores.index_put_((rows.to(scores.device), items.to(scores.device)),
                      torch.tensor(float("-inf"), device=scores.device))


def top_k(scores: Tensor, ks: Sequence[int], max_excluded: Sequence[int] | None = None,
          ) -> list[tuple[list[int], list[float]]]:
    """Per row b: the min(ks[b], finite entries) best (item indices, scores), best first.

    max_excluded[b], when given, bounds how many real items row b has excluded (-inf); rows with
    room for k after that many exclusions skip counting their finite entries.
    """
    n_real = scores.shape[1] - 1  # column 0 (padding) is always -inf
    if max_excluded is not None and all(k <= n_real - e for k, e in zip(ks, max_excluded)):
        take = list(ks)
    else:
        available = torch.isfinite(scores).sum(dim=1).tolist()
        take = [min(k, a) for k, a in zip(ks, available)]
    k_max = max(take)
    if k_max == 0:
        return [([], []) for _ in ks]
    values, indices = scores.topk(k_max, dim=1)  # sorted, best first
    values, indices = values.cpu().tolist(), indices.cpu().tolist()
    return [(indices[b][:t], values[b][:t]) for b, t in enumerate(take)]


def explain_details(details: dict, model, row: int, excluded: Tensor, k: int) -> dict:
    """One user's explain dict from a model's batched details (leading dim B, request order).

    "<name>_vectors" (B, X, D) become "<name>s": the top-k item indices of each of the X vectors,
    scored like the main list (e.g. PLR "stream_vectors" -> "streams"); other tensors become lists.
    excluded: bool (n_items + 1,) True where the main list excluded the item.
    """
    out = {}
    for key, value in details.items():
        if key.endswith("_vectors") and value.dim() == 3:
            scores = model.score(value[row]).masked_fill(excluded, float("-inf"))  # (X, n_items + 1)
            tops = top_k(scores, [k] * scores.shape[0])
            out[key.removesuffix("_vectors") + "s"] = [items for items, _ in tops]
        else:
            out[key] = value[row].tolist()
    return out


def rank_states(model, states: Sequence, ks: Sequence[int], exclude_seen: Sequence[bool],
                explain: Sequence[bool], exclude: Sequence[Sequence[int]] | None = None,
                ) -> list[tuple[list[int], list[float], dict | None]]:
    """Top-k (item indices, scores, explain dict or None) of each `UserState`, best first.

    Scores are `model.score(state.vector)`; a state's `seen` items are excluded when
    exclude_seen[b], plus exclude[b] when given. A state's stored top list answers exclude_seen
    requests it covers (k within the list, or the list holds every unseen item) without scoring;
    the others are scored. Every path that answers a user (fresh compute or a stored state) ranks
    through here, and the stored list is made here too (`with_top`), so they cannot drift apart.
    """
    if not states:
        return []
    out: list = [None] * len(states)
    n_items = model.cfg.n_items
    scored = []
    for b, s in enumerate(states):
        covered = exclude_seen[b] and not (exclude is not None and len(exclude[b])) and (
            top_covers(len(s.top_items), len(s.seen), n_items, ks[b]))
        if covered and not (explain[b] and s.details):
            k = min(ks[b], len(s.top_items))
            out[b] = (s.top_items[:k].tolist(), s.top_scores[:k].tolist(), None)
        else:
            scored.append(b)
    if scored:
        ranked = _score_and_rank(model, [states[b] for b in scored], [ks[b] for b in scored],
                                 [exclude_seen[b] for b in scored], [explain[b] for b in scored],
                                 None if exclude is None else [exclude[b] for b in scored])
        for b, answer in zip(scored, ranked):
            out[b] = answer
    return out


def with_top(model, states: Sequence, top: int) -> list:
    """`states` with their stored top lists: the best `top` unseen items of each, ranked by the
    same scoring as any request (so a slice of the list is exactly that request's answer)."""
    if not states or top < 1:
        return list(states)
    ranked = _score_and_rank(model, states, [top] * len(states), [True] * len(states),
                             [False] * len(states))
    return [replace(s, top_items=np.asarray(items, np.uint32), top_scores=np.asarray(values, np.float32))
            for s, (items, values, _) in zip(states, ranked)]


def _score_and_rank(model, states: Sequence, ks: Sequence[int], exclude_seen: Sequence[bool],
                    explain: Sequence[bool], exclude: Sequence[Sequence[int]] | None = None,
                    ) -> list[tuple[list[int], list[float], dict | None]]:
    device = model.encoder.item_emb.weight.device
    vectors = torch.stack([s.vector for s in states]).to(device)  # (B, D)
    scores = model.score(vectors)  # (B, n_items + 1), column 0 -inf
    excluded = []
    for b, s in enumerate(states):
        items = torch.from_numpy(s.seen.astype("int64")) if exclude_seen[b] else _EMPTY
        if exclude is not None and len(exclude[b]):
            items = torch.cat([items, torch.as_tensor(list(exclude[b]), dtype=torch.long)])
        excluded.append(items)
    exclude_items(scores, excluded)
    tops = top_k(scores, ks, [t.numel() for t in excluded])
    out = []
    for b, (s, (items, values)) in enumerate(zip(states, tops)):
        info = None
        if explain[b] and s.details:
            details = {key: value.unsqueeze(0).to(device) for key, value in s.details.items()}
            info = explain_details(details, model, 0, torch.isinf(scores[b]), ks[b])
        out.append((items, values, info))
    return out


_EMPTY = torch.zeros(0, dtype=torch.long)
