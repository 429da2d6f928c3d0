"""Ranking helpers on hand-made score rows (synthetic): exclusions and the exact-k shortcut."""

import pytest
import torch
import torch.nn.functional as F

from model.encoder import _gelu
from model.inference.ranking import exclude_items, top_k


def score_rows(batch=3, n_items=12, seed=0):
    scores = torch.randn(batch, n_items + 1, generator=torch.Generator().manual_seed(seed))
    scores[:, 0] = float("-inf")  # padding column, as SequentialRecommender.score leaves it
    return scores


@pytest.mark.parametrize("per_row", [True, False])
def test_both_exclusion_paths_set_exactly_the_listed_items_to_minus_inf(per_row):
    scores = score_rows()
    lists = [torch.tensor([3, 3, 5]), torch.tensor([], dtype=torch.long), torch.arange(1, 12)]
    expected = scores.clone()
    for b, items in enumerate(lists):
        expected[b, items] = float("-inf")
    exclude_items(scores, lists, per_row=per_row)
    assert torch.equal(scores, expected)


def test_top_k_shortcut_agrees_with_counting_and_never_returns_excluded_items():
    scores = score_rows()
    lists = [torch.tensor([3, 3, 5]), torch.tensor([], dtype=torch.long), torch.arange(1, 12)]
    exclude_items(scores, lists)
    ks = [5, 12, 5]
    counted = top_k(scores, ks)  # counts the finite entries of every row
    bounded = top_k(scores, ks, [len(t) for t in lists])  # row 2 cannot skip: 12 - 11 < 5
    assert counted == bounded
    assert [len(items) for items, _ in counted] == [5, 12, 1]  # exactly min(k, items left)
    assert 3 not in counted[0][0] and 5 not in counted[0][0] and counted[2][0] == [12]
    # duplicates only over-count an exclusion list (3 listed, 2 excluded): the bound stays safe,
    # and k = 10 = exactly the items left still comes back whole
    assert top_k(scores[:1], [10], [3]) == top_k(scores[:1], [10])
    assert len(top_k(scores[:1], [10], [3])[0][0]) == 10


def test_small_tensor_gelu_matches_the_fused_kernel_and_keeps_autograd():
    x = torch.linspace(-6, 6, 512).view(2, 256)
    with torch.no_grad():
        torch.testing.assert_close(_gelu(x), F.gelu(x), rtol=1e-6, atol=1e-6)
    y = x.clone().requires_grad_()
    _gelu(y).sum().backward()  # the training path: ATen's kernel with its gradient
    assert y.grad is not None and torch.isfinite(y.grad).all()


def test_seen_union_keeps_the_seen_items_sorted_and_unique():
    import numpy as np

    from model.inference.state import seen_union

    before = np.array([2, 5, 9], np.uint32)
    for items, want in (([5], [2, 5, 9]), ([1], [1, 2, 5, 9]), ([7], [2, 5, 7, 9]),
                        ([10], [2, 5, 9, 10]), ([9, 1, 1], [1, 2, 5, 9]), ([], [2, 5, 9])):
        got = seen_union(before, items)
        assert got.dtype == np.uint32 and got.tolist() == want, items
    assert seen_union(None, [4, 3, 4]).tolist() == [3, 4]
    assert before.tolist() == [2, 5, 9]  # never modified in place
