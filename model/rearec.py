"""ReaRec (depth-scaled latent reasoning), kinds "rearec-erl" and "rearec-prl" (plr-method.md s.2).

One chain of T steps from h0 (model/reasoning.py with M = 1 and a zero offset). ERL scores the mean
of h_0..h_T and trains CE on it minus kl_weight * mean pairwise KL between the step distributions;
PRL scores h_T and trains CE at every step with temperatures t * alpha^(T-k) plus InfoNCE between
clean and noise-perturbed chains. The item K/V passed to `user_vectors` are never modified
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


class ReaRec(SequentialRecommender):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        if cfg.kind not in ("rearec-erl", "rearec-prl"):
            raise ValueError(f"ReaRec needs kind rearec-erl or rearec-prl, got {cfg.kind!r}")
        self.reason_pos = nn.Parameter(cfg.init_std * torch.randn(cfg.n_steps, cfg.d_model))  # R

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.normal_(self.reason_pos, mean=0.0, std=self.cfg.init_std)

    @property
    def ensemble(self) -> bool:
        return self.cfg.kind == "rearec-erl"

    def _offset(self, like: Tensor) -> Tensor:
        return like.new_zeros(1, self.cfg.d_model)  # one stream, no trigger

    def pool(self, steps: Tensor) -> Tensor:
        """Scoring vector from all steps (..., T+1, D): ERL the mean, PRL the last step."""
        return steps.mean(dim=-2) if self.ensemble else steps[..., -1, :]

    # -- inference --------------------------------------------------------------------------------
    @property
    def scratch_slots(self) -> int:
        return self.cfg.n_steps  # one chain

    def user_vectors(self, h0: Tensor, ctx_kv: KV, ctx_lens: Tensor, explain: bool = False,
                     n_ctx: int | None = None):
        """(B, D); with explain also {"step_vectors": (B, T+1, D)}, h_0..h_T."""
        states = reason(self.encoder, h0, ctx_kv, ctx_lens, self._offset(h0), self.reason_pos,
                        n_ctx=n_ctx)
        steps = torch.cat([h0.unsqueeze(1), states[:, 0]], dim=1)  # (B, T+1, D)
        vectors = self.pool(steps)
        return (vectors, {"step_vectors": steps}) if explain else vectors

    # -- training ---------------------------------------------------------------------------------
    def prefix_steps(self, hidden: Tensor, kv: KV, input_noise: float = 0.0) -> Tensor:
        """Every prefix's chain h_0..h_T: (B, S, T+1, D)."""
        offset = self._offset(hidden)
        states = reason_all_prefixes(self.encoder, hidden, kv, offset, self.reason_pos, input_noise)
        return torch.cat([hidden.unsqueeze(2), states[:, :, 0]], dim=2)

    def kept_steps(self, hidden: Tensor, kv: KV, keep: Tensor, input_noise: float = 0.0) -> Tensor:
        """`prefix_steps(...)[keep]`, (N, T+1, D), reasoning only at the kept prefixes."""
        states = reason_kept_prefixes(self.encoder, hidden, kv, self._offset(hidden),
                                      self.reason_pos, keep, input_noise)
        return torch.cat([hidden[keep].unsqueeze(1), states[:, 0]], dim=1)

    def loss_terms(self, item_ids: Tensor, seq_lens: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """Unweighted terms. ERL: "ce", "kl" (= -mean KL). PRL: "ce" (h_T), "pl" (earlier steps),
        "cl". A term whose weight is 0 is not computed."""
        keep = targets > 0
        hidden, kv = self.encoder.encode(item_ids, seq_lens)
        steps = self.kept_steps(hidden, kv, keep)  # (N, T+1, D)
        if self.ensemble:
            terms = {"ce": F.cross_entropy(self.logits(self.pool(steps)), targets[keep])}
            if self.cfg.kl_weight > 0:
                chosen = steps[sample_prefixes(keep, self.cfg.reg_prefixes)[keep]]  # (n, T+1, D)
                logits = self.item_logits(chosen)
                terms["kl"] = diversity_loss(logits)
            return terms
        return self._progressive_terms(hidden, kv, steps, keep, targets)

    def _progressive_terms(self, hidden: Tensor, kv: KV, kept: Tensor, keep: Tensor,
                           targets: Tensor) -> dict[str, Tensor]:
        n_steps, t, alpha = self.cfg.n_steps, self.cfg.temperature, self.cfg.temp_scale
        target = targets[keep]  # kept: (N, T+1, D), target: (N,)
        terms = {"ce": F.cross_entropy(self.train_scores(kept[:, -1]) / t, target)}
        if self.cfg.pl_weight > 0:
            # Earlier steps get softer targets: temperature t * alpha^(T-k) for k = 0..T-1.
            terms["pl"] = sum(
                F.cross_entropy(self.train_scores(kept[:, k]) / (t * alpha ** (n_steps - k)),
                                target)
                for k in range(n_steps))
        if self.cfg.cl_weight > 0:
            # The noisy chain shares this pass's encoder output; only its reasoning inputs differ.
            noisy = self.kept_steps(hidden, kv, keep, input_noise=self.cfg.noise_std)
            terms["cl"] = info_nce(to_prefix_layout(noisy[:, 1:], keep),
                                   to_prefix_layout(kept[:, 1:], keep), keep, t)
        return terms

    def loss(self, item_ids: Tensor, seq_lens: Tensor, targets: Tensor) -> tuple[Tensor, dict]:
        terms = self.loss_terms(item_ids, seq_lens, targets)
        cfg = self.cfg
        weights = {"ce": 1.0, "kl": cfg.kl_weight, "pl": cfg.pl_weight, "cl": cfg.cl_weight}
        total = sum(weights[name] * term for name, term in terms.items())
        return total, {name: term.item() for name, term in terms.items()}
