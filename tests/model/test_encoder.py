"""Encoder exactness: padding invariance and one-token extension over a K/V cache (synthetic data)."""

import torch

from model.config import ModelConfig
from model.encoder import causal_mask
from model.registry import build_model
from model_helpers import fit, synthetic_batch


def tiny_sasrec(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = ModelConfig(kind="sasrec", n_items=50, d_model=16, n_heads=2, d_ff=32, max_len=20, **kw)
    return build_model(cfg).eval()


def test_scores_do_not_change_when_batched_with_longer_users():
    model = tiny_sasrec()
    short = torch.tensor([[3, 7, 9]])
    alone = model.predict(short, torch.tensor([3]))
    batch = torch.zeros(2, 12, dtype=torch.long)
    batch[0, :3] = short[0]
    batch[1] = torch.randint(1, 51, (12,))
    together = model.predict(batch, torch.tensor([3, 12]))
    torch.testing.assert_close(together[0, 1:], alone[0, 1:], rtol=1e-5, atol=1e-5)
    assert torch.isinf(together[:, 0]).all()  # padding never scored


def test_appending_one_token_over_the_cache_equals_full_recompute():
    enc = tiny_sasrec().encoder
    items = torch.randint(1, 51, (1, 9))
    full_hidden, full_kv = enc.encode(items, torch.tensor([9]))
    prefix_hidden, prefix_kv = enc.encode(items[:, :8], torch.tensor([8]))
    x = enc.embed_items(items[:, 8:], torch.tensor([[8]]))
    mask = torch.ones(1, 1, 1, 9, dtype=torch.bool)
    new_hidden, new_kv = enc.forward_layers(x, mask, past=prefix_kv)
    torch.testing.assert_close(new_hidden[:, 0], full_hidden[:, 8], rtol=1e-5, atol=1e-5)
    for (k_new, v_new), (k_full, v_full) in zip(new_kv, full_kv):
        torch.testing.assert_close(k_new[:, :, 0], k_full[:, :, 8], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(v_new[:, :, 0], v_full[:, :, 8], rtol=1e-5, atol=1e-5)


def test_causal_mask_never_lets_a_row_see_padding_or_the_future():
    mask = causal_mask(torch.tensor([2, 4]), 4)[:, 0]
    assert mask[0].tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
    assert mask[1].tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]


def test_loss_falls_over_a_few_steps_on_a_tiny_model():
    model = tiny_sasrec(dropout=0.0).train()
    items, seq_lens, targets = synthetic_batch(lens=(10,) * 8, seed=0)
    first, last = fit(model, items, seq_lens, targets, steps=30)
    assert last < 0.5 * first
