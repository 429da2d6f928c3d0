"""Full-ranking evaluation over every item (plr-method.md s.4): Recall@K and NDCG@K.

Contract: rank = 1 + number of OTHER items scoring >= the target (ties count against the model,
the strict choice), padding never counts; one relevant item, so NDCG@K = 1/log2(rank+1) if
rank <= K. Both views come from one pass: unmasked (primary) and masked (items in the full prefix
set to -inf, except the target itself, so a re-consumed target stays rankable). Users are chunked
by `batch_size` and items by `item_chunk`, so memory is O(batch_size * item_chunk), never B x N.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .batches import eval_batch

KS = (10, 20)


@dataclass
class EvalResult:
    metrics: dict[str, float]  # "recall@10", "ndcg@10", ..., and "masked_" + each
    ranks: np.ndarray  # (U,) 1-based unmasked rank per user, in the order of `pairs`
    masked_ranks: np.ndarray  # (U,)

    def per_user(self, name: str) -> np.ndarray:
        """Per-user values of one metric (e.g. "ndcg@10", "masked_recall@20") for paired tests."""
        masked = name.startswith("masked_")
        kind, k = name.removeprefix("masked_").split("@")
        return metric_values(self.masked_ranks if masked else self.ranks, kind, int(k))


def metric_values(ranks: np.ndarray, kind: str, k: int) -> np.ndarray:
    """Per-user recall or NDCG at cutoff k from 1-based ranks."""
    hit = ranks <= k
    if kind == "recall":
        return hit.astype(np.float64)
    if kind == "ndcg":
        return np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0)
    raise ValueError(f"unknown metric {kind!r}; expected 'recall' or 'ndcg'")


def summarize(ranks: np.ndarray, masked_ranks: np.ndarray, ks: Sequence[int] = KS) -> dict:
    metrics = {}
    for prefix, r in (("", ranks), ("masked_", masked_ranks)):
        for k in ks:
            for kind in ("recall", "ndcg"):
                metrics[f"{prefix}{kind}@{k}"] = float(metric_values(r, kind, k).mean())
    return metrics


def user_vectors(model, item_ids: Tensor, seq_lens: Tensor) -> Tensor:
    """The scoring vectors `predict` would dot with every item (same path, no full score matrix)."""
    hidden, kv = model.encoder.encode(item_ids, seq_lens)
    h0 = model.encoder.last_hidden(hidden, seq_lens)
    return model.user_vectors(h0, kv, seq_lens)


def rank_targets(
    vectors: Tensor, item_table: Tensor, targets: Tensor, seen: Tensor, item_chunk: int
) -> tuple[Tensor, Tensor]:
    """Unmasked and masked 1-based ranks of targets (B,): vectors (B, D), item_table (N+1, D).

    seen: (B, L) item indices to mask (0 = none). Row 0 of item_table is padding, never ranked.
    """
    target_scores = (vectors * item_table[targets]).sum(-1, keepdim=True)  # (B, 1)
    above = torch.zeros(len(targets), dtype=torch.long, device=vectors.device)
    above_masked = torch.zeros_like(above)
    for lo in range(0, item_table.shape[0], item_chunk):
        ids = torch.arange(lo, min(lo + item_chunk, item_table.shape[0]), device=vectors.device)
        beats = (vectors @ item_table[ids].T) >= target_scores  # (B, C)
        beats &= (ids != 0) & (ids.view(1, -1) != targets.view(-1, 1))  # not padding, not itself
        above += beats.sum(1)
        # A seen item only counts against the unmasked rank; masking sets it to -inf.
        seen_here = _chunk_mask(seen, lo, len(ids))
        above_masked += (beats & ~seen_here).sum(1)
    return above + 1, above_masked + 1


def _chunk_mask(seen: Tensor, lo: int, size: int) -> Tensor:
    """(B, L) item indices -> bool (B, size): which of items lo..lo+size-1 each row has seen."""
    rows, cols = torch.nonzero((seen >= lo) & (seen < lo + size) & (seen > 0), as_tuple=True)
    mask = torch.zeros(seen.shape[0], size, dtype=torch.bool, device=seen.device)
    mask[rows, seen[rows, cols] - lo] = True
    return mask


@torch.no_grad()
def evaluate(
    model,
    pairs: Sequence[tuple[np.ndarray, int]],
    max_len: int | None = None,
    ks: Sequence[int] = KS,
    batch_size: int = 256,
    item_chunk: int = 16384,
) -> EvalResult:
    """Rank each (prefix, target) pair's target among all items; model is put in eval mode.

    The model sees each prefix's last `max_len` items (default: model.cfg.max_len); the masked
    view masks every item of the full prefix. Runs on the model's device.
    """
    if not pairs:
        raise ValueError("evaluate needs at least one (prefix, target) pair")
    if batch_size < 1 or item_chunk < 1:
        raise ValueError(f"batch_size and item_chunk must be >= 1, got {batch_size}, {item_chunk}")
    max_len = max_len or model.cfg.max_len
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    item_table = model.encoder.item_emb.weight
    ranks, masked = [], []
    for lo in range(0, len(pairs), batch_size):
        chunk = pairs[lo : lo + batch_size]
        item_ids, seq_lens = eval_batch([p for p, _ in chunk], max_len)
        targets = torch.tensor([t for _, t in chunk], dtype=torch.long, device=device)
        seen, _ = eval_batch([p for p, _ in chunk], max(len(p) for p, _ in chunk))
        vectors = user_vectors(model, item_ids.to(device), seq_lens.to(device))
        r, m = rank_targets(vectors, item_table, targets, seen.to(device), item_chunk)
        ranks.append(r.cpu().numpy())
        masked.append(m.cpu().numpy())
    model.train(was_training)
    ranks, masked = np.concatenate(ranks), np.concatenate(masked)
    return EvalResult(summarize(ranks, masked, ks), ranks, masked)
