"""Full-ranking metrics: hand-computed ranks, masking, and chunking invariance (synthetic data)."""

import math

import numpy as np
import pytest
import torch

from model.config import ModelConfig
from model.evaluate import evaluate, metric_values, rank_targets, summarize
from model.registry import build_model

# Items 1..4 score 3, 1, 2, 2 for the user vector [1, 0]; row 0 is padding.
ITEMS = torch.tensor([[0.0, 0.0], [3.0, 0.0], [1.0, 0.0], [2.0, 0.0], [2.0, 0.0]])
USER = torch.tensor([[1.0, 0.0]])


def ranks_of(target, seen=(0,), vectors=USER, item_chunk=100):
    seen = torch.tensor([list(seen)])
    r, m = rank_targets(vectors, ITEMS, torch.tensor([target]), seen, item_chunk)
    return int(r[0]), int(m[0])


def test_rank_counts_ties_against_the_model():
    assert ranks_of(1) == (1, 1)
    assert ranks_of(3) == (3, 3)  # item 1 scores higher, item 4 ties: pessimistic rank 3
    assert ranks_of(2) == (4, 4)


def test_masking_removes_seen_items_but_never_the_target():
    assert ranks_of(3, seen=[1]) == (3, 2)
    assert ranks_of(3, seen=[1, 4, 0]) == (3, 1)
    assert ranks_of(3, seen=[3]) == (3, 3)  # a re-consumed target stays rankable


def test_padding_never_counts_even_when_it_outscores_the_target():
    assert ranks_of(2, vectors=-USER) == (1, 1)  # scores -3, -1, -2, -2 and padding 0


def test_item_chunking_gives_identical_ranks():
    for chunk in (1, 2, 3, 5):
        assert ranks_of(3, seen=[1], item_chunk=chunk) == (3, 2)


def test_metrics_match_hand_computed_values():
    ranks = np.array([1, 3, 10, 11, 20, 21])
    assert metric_values(ranks, "recall", 10).tolist() == [1, 1, 1, 0, 0, 0]
    ndcg = metric_values(ranks, "ndcg", 10)
    assert ndcg[:3] == pytest.approx([1.0, 0.5, 1 / math.log2(11)])
    metrics = summarize(ranks, np.ones(6, dtype=int))
    assert metrics["recall@20"] == pytest.approx(5 / 6)
    assert metrics["ndcg@20"] == pytest.approx(
        (1 + 0.5 + 1 / math.log2(11) + 1 / math.log2(12) + 1 / math.log2(21)) / 6)
    assert metrics["masked_ndcg@10"] == 1.0


def tiny_model():
    torch.manual_seed(0)
    cfg = ModelConfig(kind="sasrec", n_items=50, d_model=16, n_heads=2, d_ff=32, max_len=8)
    return build_model(cfg).eval()


def synthetic_pairs(n=23, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(1, 51, size=rng.integers(1, 20)), int(rng.integers(1, 51)))
            for _ in range(n)]


def test_evaluate_matches_brute_force_ranking_from_predict():
    model, pairs = tiny_model(), synthetic_pairs()
    result = evaluate(model, pairs)
    for (prefix, target), rank, masked in zip(pairs, result.ranks, result.masked_ranks):
        kept = torch.tensor(prefix[-8:]).view(1, -1)
        scores = model.predict(kept, torch.tensor([kept.shape[1]]))[0]
        others = torch.ones(51, dtype=torch.bool)
        others[[0, target]] = False
        beats = (scores >= scores[target]) & others
        assert rank == 1 + int(beats.sum())
        seen = torch.zeros(51, dtype=torch.bool)
        seen[torch.tensor(prefix)] = True
        assert masked == 1 + int((beats & ~seen).sum())


def test_user_and_item_chunking_give_identical_results():
    model, pairs = tiny_model(), synthetic_pairs()
    full = evaluate(model, pairs, batch_size=1000, item_chunk=1000)
    chunked = evaluate(model, pairs, batch_size=4, item_chunk=7)
    assert np.array_equal(full.ranks, chunked.ranks)
    assert np.array_equal(full.masked_ranks, chunked.masked_ranks)
    assert full.metrics == chunked.metrics
    assert np.allclose(full.per_user("masked_ndcg@20").mean(), full.metrics["masked_ndcg@20"])
    assert (full.masked_ranks <= full.ranks).all()


def test_evaluate_rejects_empty_input():
    with pytest.raises(ValueError):
        evaluate(tiny_model(), [])
