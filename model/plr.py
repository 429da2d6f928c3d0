"""PLR: M parallel latent reasoning streams over one shared item context, fused by the MoRS gate.

Inference scores h0 + z (dual-process), z = sum_m g_m z_m, z_m = mean of stream m's states over
steps 1..T, g = softmax(W_g h0 + b). Training scores z alone on every prefix at once, and adds the
GRR diversity term over all M*T states and RCL InfoNCE between two full dropout views
(plr-method.md s.3). The item K/V passed to `user_vectors` are never modified
(free slots after them are scratch when `n_ctx` says so).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import SequentialRecommender
from .config import ModelConfig
from .encoder import KV
from .reasoning import diversity_loss, info_nce, reason, reason_all_prefixes, sample_prefixes
from .reasoning_kept import reason_kept_prefixes, to_prefix_layout


class PLR(SequentialRecommender):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        d = cfg.d_model
        # tau_m; drawn here as well as in reset_parameters so the RNG stream (and with it every
        # seeded run) stays what it was before trigger_std existed.
        self.triggers = nn.Parameter(cfg.init_std * torch.randn(cfg.n_streams, d))
        # R: reasoning-position table, shared by the streams (they differ only by their trigger).
        self.reason_pos = nn.Parameter(cfg.init_std * torch.randn(cfg.n_steps, d))
        self.gate = nn.Linear(d, cfg.n_streams)  # MoRS; unused when cfg.use_gate is False

    def reset_parameters(self) -> None:
        super().reset_parameters()
        # Same draw order as before trigger_std existed: seeded runs reproduce.
        nn.init.normal_(self.triggers, mean=0.0, std=self.cfg.trigger_std or self.cfg.init_std)
        nn.init.normal_(self.reason_pos, mean=0.0, std=self.cfg.init_std)

    # -- shared by inference and training --------------------------------------------------------
    def fuse(self, h0: Tensor, states: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """h0 (..., D), states (..., M, T, D) -> z (..., D), gate (..., M), z_m (..., M, D)."""
        z_streams = states.mean(dim=-2)  # step 0 is not in the pool: h0 enters through h0 + z
        if self.cfg.use_gate:
            gate = torch.softmax(self.gate(h0), dim=-1)
        else:
            gate = h0.new_full((*h0.shape[:-1], self.cfg.n_streams), 1.0 / self.cfg.n_streams)
        z = (gate.unsqueeze(-1) * z_streams).sum(dim=-2)
        return z, gate, z_streams

    # -- inference --------------------------------------------------------------------------------
    @property
    def scratch_slots(self) -> int:
        return self.cfg.n_streams * self.cfg.n_steps

    def user_vectors(self, h0: Tensor, ctx_kv: KV, ctx_lens: Tensor, explain: bool = False,
                     n_ctx: int | None = None):
        """h0 + z (B, D) (z alone when cfg.dual_process is False). With explain, also
        {"gate": (B, M), "stream_vectors": (B, M, D)} where stream_vectors[:, m] = h0 + z_m
        (stream m scored alone, dual-process), so that
        vectors == sum_m gate[:, m] * stream_vectors[:, m]."""
        states = reason(self.encoder, h0, ctx_kv, ctx_lens, self.triggers, self.reason_pos,
                        n_ctx=n_ctx)
        z, gate, z_streams = self.fuse(h0, states)
        dual = self.cfg.dual_process  # False: the ablation that scores z alone
        vectors = h0 + z if dual else z
        if not explain:
            return vectors
        return vectors, {"gate": gate,
                         "stream_vectors": h0.unsqueeze(1) + z_streams if dual else z_streams}

    # -- training ---------------------------------------------------------------------------------
    def prefix_states(self, item_ids: Tensor, seq_lens: Tensor) -> tuple[Tensor, Tensor]:
        """One dropout view: hidden (B, S, D) and all prefixes' reasoning states (B, S, M, T, D)."""
        hidden, kv = self.encoder.encode(item_ids, seq_lens)
        return hidden, reason_all_prefixes(self.encoder, hidden, kv, self.triggers, self.reason_pos)

    def kept_states(self, item_ids: Tensor, seq_lens: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
        """One dropout view at the kept prefixes (keep (B, S)): h0 (N, D), states (N, M, T, D);
        equal to `prefix_states` indexed by keep, without the other prefixes' reasoning."""
        hidden, kv = self.encoder.encode(item_ids, seq_lens)
        states = reason_kept_prefixes(self.encoder, hidden, kv, self.triggers, self.reason_pos,
                                      keep)
        return hidden[keep], states

    def loss_terms(self, item_ids: Tensor, seq_lens: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """Unweighted terms: "ce" on z; "grr" (= -mean KL) and "rcl" when their weights are > 0."""
        keep = targets > 0  # (B, S)
        h0, states = self.kept_states(item_ids, seq_lens, keep)  # (N, D), (N, M, T, D)
        z, _, _ = self.fuse(h0, states)
        terms = {"ce": F.cross_entropy(self.logits(z), targets[keep])}
        if self.cfg.grr_weight > 0:
            chosen = sample_prefixes(keep, self.cfg.reg_prefixes)[keep]  # (N,) of the kept
            terms["grr"] = self.grr(states[chosen])
        if self.cfg.rcl_weight > 0:
            # The second view re-runs the encoder too: two full dropout views, as in the paper.
            _, states_2 = self.kept_states(item_ids, seq_lens, keep)
            terms["rcl"] = self.rcl(to_prefix_layout(states, keep),
                                    to_prefix_layout(states_2, keep), keep)
        return terms

    def loss(self, item_ids: Tensor, seq_lens: Tensor, targets: Tensor) -> tuple[Tensor, dict]:
        terms = self.loss_terms(item_ids, seq_lens, targets)
        weights = {"ce": 1.0, "grr": self.cfg.grr_weight, "rcl": self.cfg.rcl_weight}
        total = sum(weights[name] * term for name, term in terms.items())
        return total, {name: term.item() for name, term in terms.items()}

    def grr(self, states: Tensor) -> Tensor:
        """GRR over the M*T states of each row: states (N, M, T, D) -> -mean pairwise KL."""
        n, m, t, d = states.shape
        logits = self.item_logits(states.reshape(n, m * t, d))
        return diversity_loss(logits)

    def rcl(self, states: Tensor, states_2: Tensor, keep: Tensor) -> Tensor:
        """InfoNCE between the two views of each h_{k,m}; negatives: other users, same prefix."""
        b, s, m, t, d = states.shape
        view_1, view_2 = states.reshape(b, s, m * t, d), states_2.reshape(b, s, m * t, d)
        return info_nce(view_1, view_2, keep, self.cfg.rcl_temperature)
