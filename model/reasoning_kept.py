"""The training form of latent reasoning, at the prefixes that carry a loss only.

`reason_kept_prefixes(..., keep)` equals `model.reasoning.reason_all_prefixes(...)[keep]` (same
math; tested on gradients too) but runs the per-token work of a reasoning step (QKV and output
projections, FFN, LayerNorms, dropout) on the N*M kept chains alone: in a training window the
newest targets and the padding carry no loss, a third of all prefixes on ml-100k. Only the
attention over the items uses the dense (B, S*M) chain layout, because the chains of one row
share that row's item keys; a chain's own earlier steps stay in the compact layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .encoder import KV, Block, Encoder, dropout
from .reasoning import step_inputs


def reason_kept_prefixes(encoder: Encoder, hidden: Tensor, item_kv: KV, offsets: Tensor,
                         r_table: Tensor, keep: Tensor, input_noise: float = 0.0) -> Tensor:
    """hidden (B, S, D) and item_kv from `Encoder.encode`; offsets (M, D); r_table (T, D);
    keep bool (B, S). Returns (N, M, T, D): the reasoning states of the N kept prefixes in
    row-major order. The chain of prefix i, stream m starts at hidden[:, i] + offsets[m] and sees
    items 0..i and its own earlier steps only."""
    b, s, d = hidden.shape
    n_streams, n_steps = offsets.shape[0], r_table.shape[0]
    prefix = keep.reshape(-1).nonzero().squeeze(1)  # flat b * S + i of each kept prefix
    layout = _Layout(prefix, b, s, n_streams, hidden.device)
    h = (hidden.reshape(b * s, d).index_select(0, prefix).unsqueeze(1) + offsets).reshape(-1, d)
    items = [_flat_items(k, v) for k, v in item_kv]  # per layer: K^T, V as (B*H, ...)
    chain_kv: list[tuple[Tensor, Tensor]] | None = None
    states = []
    for t in range(n_steps):
        x = step_inputs(encoder, h, r_table[t], input_noise)  # (N*M, D)
        grown = []
        for i, block in enumerate(encoder.blocks):
            q, k, v = _heads(block, x)  # each (N*M, H, Dh)
            k, v = k.unsqueeze(2), v.unsqueeze(2)  # (N*M, H, 1, Dh)
            if chain_kv is not None:
                k = torch.cat([chain_kv[i][0], k], dim=2)
                v = torch.cat([chain_kv[i][1], v], dim=2)
            grown.append((k, v))
            x = block.finish_tokens(x, _attend(block, q, items[i], (k, v), layout))
        chain_kv, h = grown, x
        states.append(h)
    return torch.stack(states, dim=1).view(len(prefix), n_streams, n_steps, d)


class _Layout:
    """Where each kept chain sits in the dense (B, H, Q = S*M, ...) attention layout."""

    def __init__(self, prefix: Tensor, b: int, s: int, n_streams: int, device):
        chain = (prefix.unsqueeze(1) * n_streams + torch.arange(n_streams, device=device))
        chain = chain.reshape(-1)  # flat index into B * Q of each kept chain
        self.b, self.q = b, s * n_streams
        self.row, self.col = chain // self.q, chain % self.q
        ar = torch.arange(s, device=device)
        causal = (ar.view(s, 1) >= ar.view(1, s)).repeat_interleave(n_streams, dim=0)  # (Q, S)
        # Additive mask, fused into the score matmul (baddbmm): chain of prefix i sees items <= i.
        self.bias = torch.zeros(1, self.q, s, device=device).masked_fill_(~causal, float("-inf"))

    def to_dense(self, t: Tensor) -> Tensor:
        """(N*M, H, X) -> (B, H, Q, X), zeros at the chains that carry no loss."""
        dense = t.new_zeros(self.b, t.shape[1], self.q, t.shape[2])
        dense[self.row, :, self.col] = t
        return dense

    def to_kept(self, t: Tensor) -> Tensor:
        """(B, H, Q, X) -> (N*M, H, X)."""
        return t[self.row, :, self.col]


def _flat_items(k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Item K (B, H, S, Dh) -> K^T (B*H, Dh, S); V -> (B*H, S, Dh): contiguous once per view
    instead of once per reasoning step."""
    b, h, s, dh = k.shape
    return k.transpose(-1, -2).reshape(b * h, dh, s), v.reshape(b * h, s, dh)


def _heads(block: Block, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Token rows x (N, D) -> q, k, v each (N, H, Dh), the split `Block.project` makes."""
    n, d = x.shape
    qkv = F.linear(x, block.qkv.weight, block.qkv.bias)
    return qkv.view(n, 3, block.n_heads, d // block.n_heads).unbind(1)


def _attend(block: Block, q: Tensor, items: tuple[Tensor, Tensor],
            chain_kv: tuple[Tensor, Tensor], layout: _Layout) -> Tensor:
    """Kept chains' attention over their row's items and their own steps -> (N*M, D).

    The same softmax and attention dropout as `model.reasoning._attend_chains` over the keys
    [items; own chain]: q (N*M, H, Dh); chain K/V (N*M, H, t, Dh).
    """
    n, h, dh = q.shape
    scale = dh ** -0.5
    item_kt, item_v = items
    n_items = item_kt.shape[-1]
    q_dense = layout.to_dense(q).view(layout.b * h, layout.q, dh)
    item_scores = torch.baddbmm(layout.bias, q_dense, item_kt, alpha=scale)  # (B*H, Q, S)
    own_scores = (q.unsqueeze(2) * chain_kv[0]).sum(-1) * scale  # (N*M, H, t)
    scores = torch.cat([item_scores.view(layout.b, h, layout.q, n_items),
                        layout.to_dense(own_scores)], dim=-1)
    weights = dropout(torch.softmax(scores, dim=-1), block.attn_dropout, block.training)
    item_out = torch.bmm(weights[..., :n_items].reshape(layout.b * h, layout.q, n_items), item_v)
    own_weights = layout.to_kept(weights[..., n_items:])  # (N*M, H, t)
    own_out = (own_weights.unsqueeze(-1) * chain_kv[1]).sum(2)  # (N*M, H, Dh)
    out = layout.to_kept(item_out.view(layout.b, h, layout.q, dh)) + own_out
    return out.reshape(n, h * dh)


def to_prefix_layout(kept: Tensor, keep: Tensor) -> Tensor:
    """(N, ...) rows of the kept prefixes -> (B, S, ...) with zeros at the other prefixes."""
    dense = kept.new_zeros(keep.numel(), *kept.shape[1:])
    dense = dense.index_copy(0, keep.reshape(-1).nonzero().squeeze(1), kept)
    return dense.view(*keep.shape, *kept.shape[1:])
