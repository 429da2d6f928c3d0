"""The shared causal transformer encoder (SASRec backbone) with an explicit K/V cache.

Post-LN blocks as in RecBole/ReaRec: input `LN(E[item] + P[pos])`, then per block
`a = LN(x + Attn(x))`, `y = LN(a + FFN(a))`. Positions count from the oldest item of the context
(oldest = 0) and are always passed in explicitly, never derived from padded columns, so the K/V of
item i depend only on items <= i: appending an item adds one row per layer (plr-method.md s.5).

`forward_layers(x, mask, past)` is the one primitive of every inference path (prefill, append,
reasoning steps): `past` is a list of per-layer (K, V) that the new tokens attend to besides
themselves; it is never modified. Training adds cheaper forms of the same math that skip the
positions without a loss (`encode_kept`, model/reasoning_kept.py) and pad the item table
(`scores_padded`); tests/model/test_training_forms.py holds them equal to the plain forms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig

KV = list[tuple[Tensor, Tensor]]  # per layer: K, V each (B, H, S, Dh)


class Block(nn.Module):
    """One post-LN transformer block; attention is computed by the caller-supplied context."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln_attn = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.ff_in = nn.Linear(cfg.d_model, cfg.d_ff)
        self.ff_out = nn.Linear(cfg.d_ff, cfg.d_model)
        self.ln_ff = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)
        self.attn_dropout = cfg.dropout

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, S, D) -> q, k, v each (B, H, S, Dh)."""
        b, s, d = x.shape
        qkv = _linear(self.qkv, x).view(b, s, 3, self.n_heads, d // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def finish(self, x: Tensor, attn: Tensor) -> Tensor:
        """Residual + LN around attention output attn (B, H, S, Dh), then the FFN sublayer."""
        b, h, s, dh = attn.shape
        return self.finish_tokens(x, attn.transpose(1, 2).reshape(b, s, h * dh))

    def finish_tokens(self, x: Tensor, attn: Tensor) -> Tensor:
        """`finish` on token rows: x and the heads-merged attention output attn, both (..., D).
        Any leading shape: training runs it on the gathered tokens that carry a loss only."""
        a = _norm(self.ln_attn, x + self._drop(_linear(self.out, attn)))
        ff = _linear(self.ff_out, self._drop(_gelu(_linear(self.ff_in, a))))
        return _norm(self.ln_ff, a + self._drop(ff))

    def _drop(self, x: Tensor) -> Tensor:
        return dropout(x, self.drop.p, self.training)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """Softmax attention; mask bool (True = may attend) or additive float, broadcastable to
        (B, H, Q, K). Training with dropout takes the explicit form so the attention weights
        use `dropout` below; SDPA's own dropout draws through the slow Bernoulli kernel."""
        if not self.training or self.attn_dropout == 0.0:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
        weights = dropout(torch.softmax(scores, dim=-1), self.attn_dropout, True)
        return weights @ v


class Encoder(nn.Module):
    """Item embeddings (tied output), positions, and `n_layers` blocks."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.n_items + 1, cfg.d_model, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.ln_in = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.drop_in = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))

    # -- inputs -------------------------------------------------------------------------------
    def embed_items(self, item_ids: Tensor, positions: Tensor) -> Tensor:
        """(B, S) item indices and their positions from the oldest context item -> (B, S, D)."""
        items = F.embedding(item_ids, self.item_emb.weight, self.item_emb.padding_idx)  # row 0: no grad
        return self.embed_vectors(items + F.embedding(positions, self.pos_emb.weight))

    def embed_vectors(self, x: Tensor) -> Tensor:
        """The input LN + dropout shared by item tokens and reasoning tokens (ReaRec's way)."""
        return dropout(_norm(self.ln_in, x), self.drop_in.p, self.training)

    # -- the primitive ----------------------------------------------------------------------
    def forward_layers(self, x: Tensor, mask: Tensor, past: KV | None = None) -> tuple[Tensor, KV]:
        """Run all blocks on new tokens x (B, S, D).

        mask: bool (B or 1, 1, S, S_past + S), True = may attend; keys are ordered past then new.
        Returns the final hidden states (B, S, D) and the new tokens' own per-layer (K, V).
        """
        new_kv: KV = []
        for i, block in enumerate(self.blocks):
            q, k, v = block.project(x)
            new_kv.append((k, v))
            if past is not None:
                k = torch.cat([past[i][0].expand(k.shape[0], -1, -1, -1), k], dim=2)
                v = torch.cat([past[i][1].expand(v.shape[0], -1, -1, -1), v], dim=2)
            x = block.finish(x, block.attend(q, k, v, mask))
        return x, new_kv

    # -- convenience paths ------------------------------------------------------------------
    def encode(self, item_ids: Tensor, seq_lens: Tensor) -> tuple[Tensor, KV]:
        """Full causal pass over right-padded (B, S) item indices with real lengths (B,).

        Returns hidden states (B, S, D) (rows past a user's length are junk) and per-layer K/V.
        """
        b, s = item_ids.shape
        positions = torch.arange(s, device=item_ids.device).expand(b, s)
        x = self.embed_items(item_ids, positions)
        return self.forward_layers(x, causal_mask(seq_lens, s))

    def encode_kept(self, item_ids: Tensor, seq_lens: Tensor, keep: Tensor) -> Tensor:
        """`encode(item_ids, seq_lens)[0][keep]`: (N, D) final states at the kept positions.

        keep: bool (B, S). The last block's attention still runs over every position (its keys
        are every item), but its output projection, FFN and LayerNorms run at the kept positions
        only. Why: in training only positions with a target carry a loss, and at SASRec's stride
        of 10 that is a fifth of a 50-item window.
        """
        b, s = item_ids.shape
        positions = torch.arange(s, device=item_ids.device).expand(b, s)
        x = self.embed_items(item_ids, positions)
        mask = causal_mask(seq_lens, s)
        for block in self.blocks[:-1]:
            x = block.finish(x, block.attend(*block.project(x), mask))
        last = self.blocks[-1]
        attn = last.attend(*last.project(x), mask)  # (B, H, S, Dh)
        merged = attn.transpose(1, 2).reshape(b, s, -1)[keep]  # (N, D)
        return last.finish_tokens(x[keep], merged)

    def last_hidden(self, hidden: Tensor, seq_lens: Tensor) -> Tensor:
        """h0: the hidden state at each row's last real position. hidden (B, S, D) -> (B, D)."""
        idx = (seq_lens - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
        return hidden.gather(1, idx).squeeze(1)

    def scores_padded(self, user_vectors: Tensor) -> Tensor:
        """`scores` against the item table padded with zero rows to a multiple of 16: (..., P),
        P >= n_items + 1; columns past n_items are 0 and are no items. Training only. Why: MKL
        writes an (N, 1683)-wide product (ml-100k) ~2-3x slower than a 1696-wide one (rows that
        are no multiple of the vector width), and training computes such logits several times a
        step. The first n_items + 1 columns equal `scores`."""
        return user_vectors @ self.padded_items().T

    def padded_items(self) -> Tensor:
        """The item table with zero rows appended up to a multiple of 16 rows (training only)."""
        table = self.item_emb.weight
        pad = -table.shape[0] % 16
        return torch.cat([table, table.new_zeros(pad, table.shape[1])]) if pad else table

    def scores(self, user_vectors: Tensor) -> Tensor:
        """Dot products with every item embedding (tied). (..., D) -> (..., n_items + 1)."""
        return user_vectors @ self.item_emb.weight.T


# Functional calls on the modules' own parameters: same math as calling the modules, without the
# per-call nn.Module dispatch (~5 us each on CPU), which dominated one-token inference steps. The
# parameters are read from `_parameters` directly: `layer.weight` goes through nn.Module.__getattr__
# (~0.6 us a lookup, tens per request), the dict is always current (no cached copies to go stale).
def _linear(layer: nn.Linear, x: Tensor) -> Tensor:
    params = layer._parameters
    return F.linear(x, params["weight"], params["bias"])


def _norm(ln: nn.LayerNorm, x: Tensor) -> Tensor:
    params = ln._parameters
    return F.layer_norm(x, ln.normalized_shape, params["weight"], params["bias"], ln.eps)


def _gelu(x: Tensor) -> Tensor:
    """Exact (erf) GELU. On small tensors without autograd it is composed from erf and in-place
    arithmetic: ATen's fused CPU GELU kernel costs ~10 us even on a few hundred values (erf alone
    ~1.3 us), the most expensive op of a one-item step. Large tensors (prefills, training) keep
    the fused kernel, which wins once memory passes dominate. Same formula, float rounding aside."""
    if torch.compiler.is_compiling() or x.requires_grad or x.numel() > 8192 or x.device.type != "cpu":
        return F.gelu(x)  # (compiling: one path for every shape, no size-dependent guard)
    y = torch.erf(x * 0.7071067811865476)
    return y.add_(1.0).mul_(x).mul_(0.5)


# Few-query attention as broadcast multiply-and-sum instead of matmuls, for the exported one-user
# graphs (model/inference/compiled.py), where a step attends with 1 (append) or M (reasoning)
# queries: Inductor fuses each product-and-sum into one loop, while a matmul stays an ATen bmm or
# SDPA call whose dispatch (~3-5 us) dwarfs its arithmetic. In a side-by-side probe on the
# served checkpoints (history 49) PLR's append graph took 93 -> 73 us, SASRec's 41 -> 31 us.
# Same math; the sums run in another order (float rounding).
def broadcast_scores(q: Tensor, k: Tensor) -> Tensor:
    """Scaled attention scores q k^T / sqrt(Dh): q (..., Q, Dh), k (..., S, Dh) -> (..., Q, S)."""
    return (q.unsqueeze(-2) * k.unsqueeze(-3)).sum(-1) * q.shape[-1] ** -0.5


def broadcast_readout(weights: Tensor, v: Tensor) -> Tensor:
    """Attention read-out weights @ v: weights (..., Q, S), v (..., S, Dh) -> (..., Q, Dh)."""
    return (weights.unsqueeze(-1) * v.unsqueeze(-3)).sum(-2)


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout: zero each element with probability p, scale the rest by 1 / (1 - p).

    On CPU the keep mask comes from 16-bit random lanes, four per 64-bit draw, against a
    threshold: F.dropout's Bernoulli kernel costs ~8 ns an element here and was a third of a
    SASRec training step, this ~1.5 ns. So p is rounded to a multiple of 1/65536 (0.2 ->
    0.199997) and the scale uses the rounded p, keeping E[dropout(x)] = x exactly. Same
    distribution as F.dropout, different random draws (a seeded run is reproducible, but not
    the same run as with F.dropout). Other devices use F.dropout.
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    dropped = round(p * 65536)  # lanes below this threshold are dropped
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
    lanes = words.view(torch.int16)[:n].view(x.shape)  # uniform over [-32768, 32767]
    keep = (lanes >= dropped - 32768).to(x.dtype)
    return x * keep.mul_(65536 / (65536 - dropped))


def causal_mask(seq_lens: Tensor, size: int) -> Tensor:
    """Bool (B, 1, S, S): query i may see key j iff j <= i and j < len.

    Padded query rows (i >= len) still see the real keys, so no row is fully masked (NaN-free).
    """
    ar = torch.arange(size, device=seq_lens.device)
    causal = ar.view(1, size, 1) >= ar.view(1, 1, size)  # (1, S, S)
    valid = ar.view(1, 1, size) < seq_lens.view(-1, 1, 1)  # (B, 1, S)
    return (causal & valid).unsqueeze(1)


def init_weights(module: nn.Module, std: float) -> None:
    """N(0, std) for linear/embedding weights, zero biases, unit LayerNorm (RecBole's init)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()
