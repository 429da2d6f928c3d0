"""ReaRec-ERL and ReaRec-PRL on tiny configs and synthetic data (random item ids).

Checks the scoring vector each variant serves, that all-prefix training matches per-prefix
inference, padding invariance, and that each loss term is finite, differentiable and switchable.
"""

import pytest
import torch

from model.config import ModelConfig
from model.registry import build_model
from model_helpers import N_ITEMS, fit, synthetic_batch

KINDS = ("rearec-erl", "rearec-prl")


def tiny_rearec(kind, seed=0, **kw):
    torch.manual_seed(seed)
    base = dict(kind=kind, n_items=N_ITEMS, d_model=16, n_heads=2, d_ff=32, max_len=20, n_steps=2)
    return build_model(ModelConfig(**{**base, **kw}))


def explained(model, items, seq_lens):
    hidden, kv = model.encoder.encode(items, seq_lens)
    h0 = model.encoder.last_hidden(hidden, seq_lens)
    return model.user_vectors(h0, kv, seq_lens, explain=True)


@pytest.mark.parametrize("kind", KINDS)
def test_erl_serves_the_mean_of_all_steps_and_prl_the_last(kind):
    model = tiny_rearec(kind).eval()
    items, seq_lens, _ = synthetic_batch()
    with torch.no_grad():
        vectors, details = explained(model, items, seq_lens)
    steps = details["step_vectors"]
    assert steps.shape == (4, 3, 16)
    expected = steps.mean(1) if kind == "rearec-erl" else steps[:, -1]
    torch.testing.assert_close(vectors, expected)


@pytest.mark.parametrize("kind", KINDS)
def test_all_prefix_training_steps_equal_per_prefix_inference(kind):
    model = tiny_rearec(kind).eval()
    items, seq_lens, _ = synthetic_batch()
    with torch.no_grad():
        hidden, kv = model.encoder.encode(items, seq_lens)
        all_prefixes = model.prefix_steps(hidden, kv)  # (B, S, T+1, D)
        for b, n in enumerate(seq_lens.tolist()):
            for i in range(n):
                _, details = explained(model, items[b : b + 1, : i + 1], torch.tensor([i + 1]))
                torch.testing.assert_close(all_prefixes[b, i], details["step_vectors"][0],
                                           rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_scores_do_not_change_when_batched_with_longer_users(kind):
    model = tiny_rearec(kind).eval()
    short = torch.tensor([[3, 7, 9]])
    alone = model.predict(short, torch.tensor([3]))
    batch = torch.zeros(2, 12, dtype=torch.long)
    batch[0, :3] = short[0]
    batch[1] = torch.randint(1, N_ITEMS + 1, (12,))
    together = model.predict(batch, torch.tensor([3, 12]))
    torch.testing.assert_close(together[0, 1:], alone[0, 1:], rtol=1e-5, atol=1e-5)
    assert torch.isinf(together[:, 0]).all()


@pytest.mark.parametrize("kind,names",
                         [("rearec-erl", {"ce", "kl"}), ("rearec-prl", {"ce", "pl", "cl"})])
def test_every_loss_term_is_finite_and_reaches_the_reasoning_positions(kind, names):
    model = tiny_rearec(kind).train()
    items, seq_lens, targets = synthetic_batch()
    terms = model.loss_terms(items, seq_lens, targets)
    assert set(terms) == names
    for name, term in terms.items():
        assert torch.isfinite(term), name
        model.zero_grad()
        term.backward(retain_graph=True)
        grad = model.reason_pos.grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_erl_kl_term_is_negative_mean_divergence_and_weight_zero_drops_it():
    items, seq_lens, targets = synthetic_batch()
    model = tiny_rearec("rearec-erl", dropout=0.0).train()
    loss, parts = model.loss(items, seq_lens, targets)
    assert parts["kl"] <= 0  # minus a mean KL: lower when steps disagree
    torch.testing.assert_close(loss.item(), parts["ce"] + 0.05 * parts["kl"])
    no_kl = tiny_rearec("rearec-erl", dropout=0.0, kl_weight=0.0).train()
    _, parts_off = no_kl.loss(items, seq_lens, targets)
    assert set(parts_off) == {"ce"}


def test_prl_noise_changes_only_the_contrastive_term_and_weights_switch_terms_off():
    items, seq_lens, targets = synthetic_batch()
    model = tiny_rearec("rearec-prl", dropout=0.0).train()
    torch.manual_seed(5)
    quiet = model.loss_terms(items, seq_lens, targets)
    model.cfg.noise_std = 1.0
    loud = model.loss_terms(items, seq_lens, targets)
    torch.testing.assert_close(loud["ce"], quiet["ce"])
    assert loud["cl"] > quiet["cl"]  # bigger perturbation, harder to match the clean chain
    off = tiny_rearec("rearec-prl", pl_weight=0.0, cl_weight=0.0).train()
    assert set(off.loss_terms(items, seq_lens, targets)) == {"ce"}


@pytest.mark.parametrize("kind", KINDS)
def test_loss_falls_on_a_tiny_synthetic_dataset(kind):
    model = tiny_rearec(kind, dropout=0.0, temperature=0.5).train()
    items, seq_lens, targets = synthetic_batch(lens=(8, 8, 8, 8, 8, 8), seed=3)
    first, last = fit(model, items, seq_lens, targets, steps=60)
    assert last < 0.3 * first
