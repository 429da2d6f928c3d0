"""The fast training forms equal the plain ones (synthetic batches, tiny configs).

Old formulation = what the losses computed before the speed-ups: every prefix's reasoning
through `reason_all_prefixes`, SASRec's full `encode`, indexed by the kept prefixes afterwards.
With dropout off (and no random prefix sampling or input noise) the new losses and every
parameter's gradient must match them to float tolerance (rtol 1e-5, atol 1e-6).
"""

import pytest
import torch
import torch.nn.functional as F

from model.config import ModelConfig
from model.encoder import dropout
from model.reasoning import diversity_loss, info_nce, reason_all_prefixes
from model.reasoning_kept import reason_kept_prefixes
from model.registry import build_model
from model_helpers import N_ITEMS, synthetic_batch

TINY = dict(n_items=N_ITEMS, d_model=16, n_heads=2, d_ff=32, max_len=20, dropout=0.0,
            reg_prefixes=0, noise_std=0.0)


def tiny(kind, seed=0, **kw):
    torch.manual_seed(seed)
    return build_model(ModelConfig(kind=kind, **{**TINY, **kw})).train()


def batch_with_unkept_prefixes():
    """Targets zeroed on some prefixes, as a window's older, not-owned targets are."""
    items, seq_lens, targets = synthetic_batch(lens=(9, 4, 2, 7, 9))
    targets[0, :5] = 0
    targets[3, :2] = 0
    targets[4, :8] = 0
    return items, seq_lens, targets


def old_loss(model, items, seq_lens, targets):
    """The pre-speed-up formulation of each kind's training loss (dense prefixes, logits over the
    unpadded item table)."""
    cfg, enc = model.cfg, model.encoder
    keep = targets > 0

    def logits(vectors):
        return model.score(vectors) / cfg.temperature

    def item_logits(vectors):
        return enc.scores(vectors)[..., 1:] / cfg.temperature

    hidden, kv = enc.encode(items, seq_lens)
    if cfg.kind == "sasrec":
        return F.cross_entropy(logits(hidden[keep]), targets[keep])
    if cfg.kind == "plr":
        states = reason_all_prefixes(enc, hidden, kv, model.triggers, model.reason_pos)
        z, _, _ = model.fuse(hidden, states)
        loss = F.cross_entropy(logits(z[keep]), targets[keep])
        n, m, t, d = states[keep].shape
        loss = loss + cfg.grr_weight * diversity_loss(item_logits(states[keep].reshape(n, m * t, d)))
        hidden_2, kv_2 = enc.encode(items, seq_lens)
        states_2 = reason_all_prefixes(enc, hidden_2, kv_2, model.triggers, model.reason_pos)
        return loss + cfg.rcl_weight * model.rcl(states, states_2, keep)
    steps = model.prefix_steps(hidden, kv)  # (B, S, T+1, D)
    if cfg.kind == "rearec-erl":
        loss = F.cross_entropy(logits(model.pool(steps[keep])), targets[keep])
        return loss + cfg.kl_weight * diversity_loss(item_logits(steps[keep]))
    kept, t, alpha = steps[keep], cfg.temperature, cfg.temp_scale
    loss = F.cross_entropy(model.score(kept[:, -1]) / t, targets[keep])
    loss = loss + cfg.pl_weight * sum(
        F.cross_entropy(model.score(kept[:, k]) / (t * alpha ** (cfg.n_steps - k)), targets[keep])
        for k in range(cfg.n_steps))
    noisy = model.prefix_steps(hidden, kv)
    return loss + cfg.cl_weight * info_nce(noisy[:, :, 1:], steps[:, :, 1:], keep, t)


def grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind,extra", [
    ("sasrec", {}),
    ("plr", dict(n_streams=3, n_steps=2, rcl_weight=0.5, trigger_std=1.0)),
    ("rearec-erl", dict(n_steps=3)),
    ("rearec-prl", dict(n_steps=2, temperature=0.5)),
])
def test_new_loss_and_gradients_equal_the_old_formulation(kind, extra):
    model = tiny(kind, **extra)
    items, seq_lens, targets = batch_with_unkept_prefixes()
    old = old_loss(model, items, seq_lens, targets)
    new, _ = model.loss(items, seq_lens, targets)
    torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-6)
    old_grads, new_grads = grads(model, old), grads(model, new)
    assert set(new_grads) == set(old_grads)
    for name in old_grads:
        torch.testing.assert_close(new_grads[name], old_grads[name], rtol=1e-5, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_kept_reasoning_equals_the_dense_form_at_the_kept_prefixes():
    model = tiny("plr", n_streams=2, n_steps=3, trigger_std=1.0).eval()
    items, seq_lens, targets = batch_with_unkept_prefixes()
    keep = targets > 0
    with torch.no_grad():
        hidden, kv = model.encoder.encode(items, seq_lens)
        dense = reason_all_prefixes(model.encoder, hidden, kv, model.triggers, model.reason_pos)
        kept = reason_kept_prefixes(model.encoder, hidden, kv, model.triggers, model.reason_pos,
                                    keep)
    assert kept.shape == (int(keep.sum()), 2, 3, 16)
    torch.testing.assert_close(kept, dense[keep], rtol=1e-5, atol=1e-6)


def test_encode_kept_equals_encode_at_the_kept_positions():
    model = tiny("sasrec").eval()
    items, seq_lens, targets = batch_with_unkept_prefixes()
    keep = targets > 0
    with torch.no_grad():
        full, _ = model.encoder.encode(items, seq_lens)
        kept = model.encoder.encode_kept(items, seq_lens, keep)
    torch.testing.assert_close(kept, full[keep], rtol=1e-5, atol=1e-6)


def test_training_attention_path_equals_sdpa_when_nothing_is_dropped():
    """attn_dropout 1e-9 rounds to no dropped lane: the explicit training form must then give
    exactly SDPA's attention, for bool and additive masks."""
    model = tiny("sasrec")
    block = model.encoder.blocks[0]
    q, k, v = (torch.randn(3, 2, 5, 8) for _ in range(3))
    mask = torch.rand(3, 1, 5, 5) > 0.3
    mask[..., 0] = True  # no fully masked row
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    block.attn_dropout = 1e-9
    for m in (mask, additive):
        torch.testing.assert_close(block.attend(q, k, v, m), reference, rtol=1e-5, atol=1e-6)


def test_dropout_drops_at_rate_p_keeps_the_mean_and_is_off_in_eval():
    torch.manual_seed(0)
    x = torch.ones(400_000)
    y = dropout(x, 0.2, True)
    assert abs((y == 0).float().mean().item() - 0.2) < 0.003
    assert abs(y.mean().item() - 1.0) < 0.005
    values = y.unique().tolist()
    assert len(values) == 2 and values[0] == 0.0
    assert values[1] == pytest.approx(65536 / (65536 - round(0.2 * 65536)), rel=1e-6)
    assert dropout(x, 0.2, False) is x and dropout(x, 0.0, True) is x
    odd = torch.randn(3, 5, 7)  # sizes that are no multiple of the 4 lanes in a draw
    assert dropout(odd, 0.5, True).shape == odd.shape
    with pytest.raises(ValueError, match="dropout probability"):
        dropout(x, 1.0, True)


def old_info_nce(anchors, positives, valid, temperature):
    """info_nce before it selected rows first: the whole (S, K, B, B) block divided and masked."""
    b = anchors.shape[0]
    a, p = anchors.permute(1, 2, 0, 3), positives.permute(1, 2, 0, 3)
    logits = a @ p.transpose(-1, -2) / temperature
    cols = valid.T.view(valid.shape[1], 1, 1, b)
    logits = logits.masked_fill(~cols, float("-inf"))
    rows = cols.transpose(-1, -2).expand(-1, logits.shape[1], -1, -1).squeeze(-1)
    labels = torch.arange(b).expand_as(rows)
    return F.cross_entropy(logits[rows], labels[rows])


@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_info_nce_equals_the_block_masked_form_bit_for_bit(temperature):
    # Synthetic (B, S, K, D) views; a prefix position no user reaches (column 0) and users valid
    # at a few positions only, as in a training window.
    torch.manual_seed(3)
    anchors = torch.randn(6, 5, 3, 8, requires_grad=True)
    positives = torch.randn(6, 5, 3, 8, requires_grad=True)
    valid = torch.rand(6, 5) > 0.4
    valid[:, 0] = False
    valid[0, 1:] = True
    new = info_nce(anchors, positives, valid, temperature)
    new_grads = torch.autograd.grad(new, (anchors, positives))
    old = old_info_nce(anchors, positives, valid, temperature)
    old_grads = torch.autograd.grad(old, (anchors, positives))
    assert torch.equal(new, old)
    for n, o in zip(new_grads, old_grads):
        assert torch.equal(n, o)


@pytest.mark.parametrize("kind", ["sasrec", "plr"])
def test_training_scores_equal_the_in_place_masked_product(kind):
    # The -inf columns as addmm's bias vs written into the product afterwards (the form before):
    # same scores and gradients (bit for bit where measured; MKL could take another path for a
    # beta-1 product on another CPU, hence the 1e-6 tolerance).
    model = tiny(kind)
    vectors = torch.randn(40, TINY["d_model"], requires_grad=True)
    targets = torch.randint(1, N_ITEMS + 1, (40,))

    def in_place():
        scores = model.encoder.scores_padded(vectors)
        scores[..., 0] = float("-inf")
        scores[..., N_ITEMS + 1:] = float("-inf")
        return scores

    outs = []
    for form in (lambda: model.train_scores(vectors), in_place):
        scores = form()
        loss = F.cross_entropy(scores, targets)
        params = (vectors, model.encoder.item_emb.weight)
        outs.append((scores.detach(), loss, torch.autograd.grad(loss, params)))
    (new, new_loss, new_grads), (old, old_loss, old_grads) = outs
    assert new.shape[1] % 16 == 0 and new.shape[1] >= N_ITEMS + 1
    assert torch.equal(torch.isinf(new), torch.isinf(old))
    assert torch.isinf(new[:, 0]).all() and torch.isfinite(new[:, 1:N_ITEMS + 1]).all()
    torch.testing.assert_close(new, old, rtol=1e-6, atol=0)
    torch.testing.assert_close(new_loss, old_loss, rtol=1e-6, atol=0)
    for n, o in zip(new_grads, old_grads):
        torch.testing.assert_close(n, o, rtol=1e-6, atol=1e-9)
