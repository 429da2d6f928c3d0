"""PLR and the shared reasoning helpers on tiny configs and synthetic data (random item ids).

The spine: the all-prefix training form equals the per-prefix inference form, streams never see
each other, scores do not depend on batch padding, and every loss term and ablation switch does
what it claims.
"""

import pytest
import torch

from model.config import ModelConfig
from model.reasoning import _chain_steps, diversity_loss, reason, reason_all_prefixes
from model.registry import build_model
from model_helpers import N_ITEMS, fit, synthetic_batch

def tiny_plr(seed=0, **kw):
    torch.manual_seed(seed)
    base = dict(kind="plr", n_items=N_ITEMS, d_model=16, n_heads=2, d_ff=32, max_len=20,
                n_streams=3, n_steps=2)
    return build_model(ModelConfig(**{**base, **kw}))


def inference_states(model, items, seq_lens, offsets):
    hidden, kv = model.encoder.encode(items, seq_lens)
    h0 = model.encoder.last_hidden(hidden, seq_lens)
    return reason(model.encoder, h0, kv, seq_lens, offsets, model.reason_pos)


def training_states(model, items, seq_lens, offsets):
    hidden, kv = model.encoder.encode(items, seq_lens)
    return reason_all_prefixes(model.encoder, hidden, kv, offsets, model.reason_pos)


def block_mask_reference(encoder, h0, ctx_kv, ctx_lens, offsets, r_table):
    """The plain form: reasoning tokens appended after the items through Encoder.forward_layers,
    with a dense block mask (stream m sees the real items and stream m's tokens only)."""
    b, m, s = h0.shape[0], offsets.shape[0], ctx_kv[0][0].shape[2]
    real = (torch.arange(s) < ctx_lens.view(-1, 1)).unsqueeze(1).expand(b, m, s)
    own = torch.eye(m, dtype=torch.bool)
    past, h, states = ctx_kv, h0.unsqueeze(1) + offsets, []
    for t in range(r_table.shape[0]):
        mask = torch.cat([real, own.repeat(1, t + 1).expand(b, -1, -1)], dim=-1).unsqueeze(1)
        h, new_kv = encoder.forward_layers(encoder.embed_vectors(h + r_table[t]), mask, past)
        past = [(torch.cat([pk, nk], 2), torch.cat([pv, nv], 2))
                for (pk, pv), (nk, nv) in zip(past, new_kv)]
        states.append(h)
    return torch.stack(states, dim=2)


def test_inference_form_equals_the_dense_block_mask_form_through_forward_layers():
    model = tiny_plr().eval()
    items, seq_lens, _ = synthetic_batch()
    with torch.no_grad():
        hidden, kv = model.encoder.encode(items, seq_lens)
        h0 = model.encoder.last_hidden(hidden, seq_lens)
        fast = reason(model.encoder, h0, kv, seq_lens, model.triggers, model.reason_pos)
        plain = block_mask_reference(model.encoder, h0, kv, seq_lens, model.triggers,
                                     model.reason_pos)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("broadcast", [False, True])
def test_exported_graph_form_equals_the_dense_block_mask_form(broadcast):
    """The per-chain form `reason` takes inside torch.export (model/inference/compiled.py), with
    attention as matmuls or as broadcast products, = the plain form (eager, so it is checked
    here without a compile; tests/inference/test_compiled.py checks the compiled graphs).
    Large weights: at the default init the attention output barely moves the block outputs."""
    model = tiny_plr(init_std=0.5).eval()
    items, seq_lens, _ = synthetic_batch()
    with torch.no_grad():
        hidden, kv = model.encoder.encode(items, seq_lens)
        h0 = model.encoder.last_hidden(hidden, seq_lens)
        b, m, s = h0.shape[0], model.triggers.shape[0], kv[0][0].shape[2]
        real = (torch.arange(s) < seq_lens.view(-1, 1)).unsqueeze(1).expand(b, m, s)
        chains = _chain_steps(model.encoder, h0.unsqueeze(1) + model.triggers, kv, real,
                              model.reason_pos, 0.0, broadcast=broadcast)
        plain = block_mask_reference(model.encoder, h0, kv, seq_lens, model.triggers,
                                     model.reason_pos)
    torch.testing.assert_close(chains, plain, rtol=1e-5, atol=1e-5)


def test_in_place_scratch_form_equals_the_copying_form_and_leaves_the_items_alone():
    """reason(..., n_ctx=S) on K/V with spare slots (the engine's workspace) = reason on the items."""
    model = tiny_plr().eval()
    items, seq_lens, _ = synthetic_batch()
    spare = model.scratch_slots  # M * T
    with torch.no_grad():
        hidden, kv = model.encoder.encode(items, seq_lens)
        h0 = model.encoder.last_hidden(hidden, seq_lens)
        copying = reason(model.encoder, h0, kv, seq_lens, model.triggers, model.reason_pos)
        n_ctx = kv[0][0].shape[2]
        roomy = [tuple(torch.cat([t, torch.full_like(t[:, :, :spare], 7.0)], dim=2) for t in layer)
                 for layer in kv]  # junk (finite) in the spare slots: must not matter
        before = [tuple(t[:, :, :n_ctx].clone() for t in layer) for layer in roomy]
        in_place = reason(model.encoder, h0, roomy, seq_lens, model.triggers, model.reason_pos,
                          n_ctx=n_ctx)
        with pytest.raises(ValueError, match="in-place reasoning"):
            reason(model.encoder, h0, kv, seq_lens, model.triggers, model.reason_pos, n_ctx=n_ctx)
    torch.testing.assert_close(in_place, copying, rtol=1e-5, atol=1e-6)
    for layer, kept in zip(roomy, before):
        for t, k in zip(layer, kept):
            assert torch.equal(t[:, :, :n_ctx], k)  # items untouched; only scratch was written
        assert not torch.equal(layer[0][:, :, n_ctx:], torch.full_like(layer[0][:, :, n_ctx:], 7.0))


def test_all_prefix_training_form_equals_each_prefix_through_the_inference_form():
    model = tiny_plr().eval()
    items, seq_lens, _ = synthetic_batch()
    with torch.no_grad():
        all_prefixes = training_states(model, items, seq_lens, model.triggers)  # (B, S, M, T, D)
        for b, n in enumerate(seq_lens.tolist()):
            for i in range(n):
                prefix, prefix_len = items[b : b + 1, : i + 1], torch.tensor([i + 1])
                alone = inference_states(model, prefix, prefix_len, model.triggers)
                torch.testing.assert_close(all_prefixes[b, i], alone[0], rtol=1e-5, atol=1e-5)


def test_changing_one_streams_trigger_leaves_the_other_streams_unchanged():
    model = tiny_plr().eval()
    items, seq_lens, _ = synthetic_batch()
    moved = model.triggers.detach().clone()
    moved[1] += 3.0  # stream 2 only
    with torch.no_grad():
        for form in (inference_states, training_states):
            before = form(model, items, seq_lens, model.triggers)
            after = form(model, items, seq_lens, moved)
            others = [0, 2]
            torch.testing.assert_close(after[..., others, :, :], before[..., others, :, :])
            assert not torch.allclose(after[..., 1, :, :], before[..., 1, :, :])


def test_scores_do_not_change_when_batched_with_longer_users():
    model = tiny_plr().eval()
    short = torch.tensor([[3, 7, 9]])
    alone = model.predict(short, torch.tensor([3]))
    batch = torch.zeros(2, 12, dtype=torch.long)
    batch[0, :3] = short[0]
    batch[1] = torch.randint(1, N_ITEMS + 1, (12,))
    together = model.predict(batch, torch.tensor([3, 12]))
    torch.testing.assert_close(together[0, 1:], alone[0, 1:], rtol=1e-5, atol=1e-5)
    assert torch.isinf(together[:, 0]).all()


def test_explain_returns_a_gate_summing_to_one_and_stream_vectors_that_mix_to_the_user_vector():
    model = tiny_plr().eval()
    items, seq_lens, _ = synthetic_batch()
    with torch.no_grad():
        hidden, kv = model.encoder.encode(items, seq_lens)
        h0 = model.encoder.last_hidden(hidden, seq_lens)
        vectors, details = model.user_vectors(h0, kv, seq_lens, explain=True)
        plain = model.user_vectors(h0, kv, seq_lens)
    b, d, m = len(seq_lens), 16, 3
    assert vectors.shape == (b, d) and details["gate"].shape == (b, m)
    assert details["stream_vectors"].shape == (b, m, d)
    torch.testing.assert_close(details["gate"].sum(-1), torch.ones(b))
    mixed = (details["gate"].unsqueeze(-1) * details["stream_vectors"]).sum(1)
    torch.testing.assert_close(mixed, vectors)
    torch.testing.assert_close(plain, vectors)


def test_grr_rewards_streams_whose_item_distributions_diverge():
    same = torch.randn(5, 1, N_ITEMS).expand(5, 4, N_ITEMS)
    apart = torch.randn(5, 4, N_ITEMS) * 5
    assert abs(diversity_loss(same).item()) < 1e-6
    assert diversity_loss(apart).item() < diversity_loss(same).item() - 0.1


def test_grr_is_lower_for_a_model_whose_triggers_pull_streams_apart():
    model = tiny_plr(rcl_weight=0.0).eval()
    items, seq_lens, targets = synthetic_batch()
    with torch.no_grad():
        model.triggers.zero_()
        close = model.loss_terms(items, seq_lens, targets)["grr"]
        model.triggers.copy_(5.0 * torch.randn_like(model.triggers))
        apart = model.loss_terms(items, seq_lens, targets)["grr"]
    assert apart < close <= 0


def test_every_loss_term_is_finite_and_reaches_triggers_and_reasoning_positions():
    model = tiny_plr().train()
    items, seq_lens, targets = synthetic_batch()
    terms = model.loss_terms(items, seq_lens, targets)
    assert set(terms) == {"ce", "grr", "rcl"}
    for name, term in terms.items():
        assert torch.isfinite(term), name
        model.zero_grad()
        term.backward(retain_graph=True)
        for param in (model.triggers, model.reason_pos):
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    model.zero_grad()
    terms["ce"].backward()
    assert model.gate.weight.grad.abs().sum() > 0  # the gate learns from the recommendation loss


def test_ablation_switches_change_what_they_claim():
    items, seq_lens, targets = synthetic_batch()
    no_gate = tiny_plr(use_gate=False).eval()
    with torch.no_grad():
        hidden, kv = no_gate.encoder.encode(items, seq_lens)
        h0 = no_gate.encoder.last_hidden(hidden, seq_lens)
        _, details = no_gate.user_vectors(h0, kv, seq_lens, explain=True)
    torch.testing.assert_close(details["gate"], torch.full((len(seq_lens), 3), 1 / 3))
    no_gate.train().loss(items, seq_lens, targets)[0].backward()
    assert no_gate.gate.weight.grad is None  # the gate is out of the graph

    full = tiny_plr(dropout=0.0).train()
    loss, parts = full.loss(items, seq_lens, targets)
    torch.testing.assert_close(loss.item(), parts["ce"] + 0.1 * parts["grr"] + parts["rcl"])
    no_grr = tiny_plr(dropout=0.0, grr_weight=0.0).train()
    no_rcl = tiny_plr(dropout=0.0, rcl_weight=0.0).train()
    assert set(no_grr.loss(items, seq_lens, targets)[1]) == {"ce", "rcl"}
    loss_no_rcl, parts_no_rcl = no_rcl.loss(items, seq_lens, targets)
    assert set(parts_no_rcl) == {"ce", "grr"}
    torch.testing.assert_close(loss_no_rcl.item(), parts["ce"] + 0.1 * parts["grr"])


def test_a_tiny_plr_memorises_a_tiny_synthetic_dataset():
    model = tiny_plr(dropout=0.0, n_streams=2, temperature=0.5).train()
    items, seq_lens, targets = synthetic_batch(lens=(8, 8, 8, 8, 8, 8), seed=3)
    first, last = fit(model, items, seq_lens, targets, steps=80)
    assert last < 0.2 * first
    model.eval()
    hits = [model.predict(items[:, : i + 1], torch.full((6,), i + 1)).argmax(-1) == targets[:, i]
            for i in range(8)]
    assert torch.stack(hits).float().mean() > 0.9


def test_trigger_std_sets_the_trigger_scale_and_the_default_keeps_the_old_init():
    default, wide = tiny_plr(seed=3).eval(), tiny_plr(seed=3, trigger_std=1.0).eval()
    assert default.triggers.std().item() < 0.1 < 0.5 < wide.triggers.std().item()
    # everything but the triggers is initialised identically: the option draws nothing extra
    same = {k for k, v in default.state_dict().items() if torch.equal(v, wide.state_dict()[k])}
    assert same == set(default.state_dict()) - {"triggers"}
    items, seq_lens, _ = synthetic_batch()
    with torch.no_grad():  # wide triggers start the streams apart despite the input LayerNorm
        narrow_states = inference_states(default, items, seq_lens, default.triggers)
        wide_states = inference_states(wide, items, seq_lens, wide.triggers)
    spread = lambda s: (s[:, 0] - s[:, 1]).norm(dim=-1).mean().item()  # noqa: E731
    assert spread(wide_states) > 10 * spread(narrow_states)
    with pytest.raises(ValueError, match="trigger_std"):
        ModelConfig(kind="plr", n_items=5, trigger_std=-1.0).validate()


def test_dual_process_off_scores_z_alone_and_the_default_keeps_checkpoint_versions():
    from model.checkpoint import NEUTRAL_NEW_OPTIONS, _versioned_config
    dual, single = tiny_plr(seed=4).eval(), tiny_plr(seed=4, dual_process=False).eval()
    items, seq_lens, _ = synthetic_batch()
    with torch.no_grad():
        hidden, kv = dual.encoder.encode(items, seq_lens)
        h0 = dual.encoder.last_hidden(hidden, seq_lens)
        both = dual.user_vectors(h0, kv, seq_lens)
        alone, details = single.user_vectors(h0, kv, seq_lens, explain=True)
    torch.testing.assert_close(both - h0, alone)  # same weights: only h0 is left out
    mixed = (details["gate"].unsqueeze(-1) * details["stream_vectors"]).sum(1)
    torch.testing.assert_close(mixed, alone)
    assert NEUTRAL_NEW_OPTIONS["dual_process"] is True
    assert "dual_process" not in _versioned_config(dual.cfg)
    assert _versioned_config(single.cfg)["dual_process"] is False
