"""Latent reasoning through the shared encoder's blocks: ReaRec (M = 1 chain) and PLR (M streams).

`reason` (inference) runs T steps over an item K/V context, all M streams of all B users in one
forward per step (one fused attention per layer over a scratch key buffer);
`reason_all_prefixes` (training) does every prefix of right-padded sequences at
once. A reasoning token sees the real items it may see and its own chain's earlier tokens only;
item K/V are never modified (`reason` may use free slots after them as scratch when told to).
Both forms agree to float tolerance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .encoder import KV, Block, Encoder, broadcast_readout, broadcast_scores, dropout


def step_inputs(encoder: Encoder, h: Tensor, r_t: Tensor, input_noise: float) -> Tensor:
    """Reasoning token embed_vectors(h + R[t] (+ N(0, noise^2))), ReaRec's input LN + dropout."""
    x = h + r_t
    if input_noise > 0:
        x = x + input_noise * torch.randn_like(x)
    return encoder.embed_vectors(x)


def _attend_chains(block: Block, q: Tensor, item_kv: tuple[Tensor, Tensor], item_mask: Tensor,
                   chain_kv: tuple[Tensor, Tensor], broadcast: bool = False) -> Tensor:
    """Attention of Q chain tokens over shared item keys plus their own chain's tokens only.

    q (B, H, Q, Dh); item K/V (B or 1, H, S, Dh), used in place (broadcast, never copied);
    item_mask bool (B or 1, 1, Q, S); chain K/V (B, H, Q, t, Dh) = this chain's steps 1..t.
    Same softmax and attention dropout as `Block.attend` over the keys [items; own chain], but
    without materialising the other chains' (masked) keys: O(Q (S + t)) instead of O(Q (S + Q t)).
    broadcast: the item products as multiply-and-sum (`broadcast_scores`; exported graphs only).
    """
    n_items = item_kv[0].shape[2]
    scale = q.shape[-1] ** -0.5
    if broadcast:
        item_scores = broadcast_scores(q, item_kv[0])  # (B, H, Q, S)
    else:
        item_scores = (q @ item_kv[0].transpose(-1, -2)) * scale
    item_scores = item_scores.masked_fill(~item_mask, float("-inf"))
    own_scores = (q.unsqueeze(-2) * chain_kv[0]).sum(-1) * scale  # (B, H, Q, t)
    weights = torch.softmax(torch.cat([item_scores, own_scores], dim=-1), dim=-1)
    weights = dropout(weights, block.attn_dropout, block.training)
    own = (weights[..., n_items:].unsqueeze(-1) * chain_kv[1]).sum(-2)  # (B, H, Q, Dh)
    if broadcast:
        return broadcast_readout(weights[..., :n_items], item_kv[1]) + own
    return weights[..., :n_items] @ item_kv[1] + own


def _chain_forward(encoder: Encoder, x: Tensor, item_kv: KV, item_mask: Tensor,
                   chain_kv: KV | None, broadcast: bool = False) -> tuple[Tensor, KV]:
    """All blocks on one step's tokens x (B, Q, D) -> outputs, chain K/V grown by one step."""
    grown: KV = []
    for i, block in enumerate(encoder.blocks):
        q, k, v = block.project(x)  # (B, H, Q, Dh)
        k, v = k.unsqueeze(3), v.unsqueeze(3)  # (B, H, Q, 1, Dh)
        if chain_kv is not None:
            k, v = torch.cat([chain_kv[i][0], k], dim=3), torch.cat([chain_kv[i][1], v], dim=3)
        grown.append((k, v))
        x = block.finish(x, _attend_chains(block, q, item_kv[i], item_mask, (k, v), broadcast))
    return x, grown


def _chain_steps(encoder: Encoder, h: Tensor, item_kv: KV, item_mask: Tensor, r_table: Tensor,
                 input_noise: float, broadcast: bool = False) -> Tensor:
    """T autoregressive steps for Q independent chains per row, one forward per step.

    h: (B, Q, D) step-0 states; item_mask: bool (B or 1, Q, S) item keys each chain may see.
    Chain q sees its own earlier reasoning tokens only. Returns (B, Q, T, D).
    broadcast: see `_attend_chains`.
    """
    item_mask = item_mask.unsqueeze(1)  # (B|1, 1, Q, S): one mask for every head
    chain_kv, states = None, []
    for t in range(r_table.shape[0]):
        x = step_inputs(encoder, h, r_table[t], input_noise)  # (B, Q, D)
        h, chain_kv = _chain_forward(encoder, x, item_kv, item_mask, chain_kv, broadcast)
        states.append(h)
    return torch.stack(states, dim=2)


def reason(encoder: Encoder, h0: Tensor, ctx_kv: KV, ctx_lens: Tensor, offsets: Tensor,
           r_table: Tensor, input_noise: float = 0.0, n_ctx: int | None = None) -> Tensor:
    """Inference form. h0 (B, D); ctx_kv per-layer (B or 1, H, S, Dh) right-padded to ctx_lens (B,);
    offsets (M, D) start offsets (zeros for ReaRec, triggers for PLR); r_table (T, D).

    Stream m starts at h0 + offsets[m]; a user's M streams are M new tokens of that user per step.
    Returns the reasoning states (B, M, T, D) (step 0 excluded).

    Each layer-step is one fused attention over a key buffer [n_ctx item slots | one slot per
    (step, stream)] that the chain tokens are written into as they are made; a mask lets stream m
    see only the real items and its own slots. Why not the training form's per-chain attention:
    at serving batch sizes a step costs the per-op floor times its op count. n_ctx None: ctx_kv
    hold items only; they are copied into a new buffer and never written. n_ctx given: ctx_kv
    (batch B, not broadcast) hold n_ctx item slots followed by at least M*T free slots that are
    used as the buffer in place (the serving engine's workspace: no copy of the items).
    """
    b, n_streams, n_steps = h0.shape[0], offsets.shape[0], r_table.shape[0]
    dev, slots = h0.device, ctx_kv[0][0].shape[2]
    if n_ctx is None and torch.compiler.is_compiling():
        # Compiled graphs (model/inference/compiled.py): the per-chain form, attention as
        # broadcast products and a softmax that inductor fuses into a few loops, no ATen call
        # (measured 165 vs 256 us a PLR step with matmuls; 8 fewer bmm calls saved ~10 us more);
        # the fused scratch-buffer attention below is the faster eager form. Same math (tests
        # hold them equal).
        real = torch.arange(slots, device=dev) < ctx_lens.view(-1, 1)  # (B, S)
        return _chain_steps(encoder, h0.unsqueeze(1) + offsets, ctx_kv,
                            real.unsqueeze(1).expand(b, n_streams, slots), r_table, input_noise,
                            broadcast=True)
    if n_ctx is None:
        n_ctx, width = slots, slots + n_steps * n_streams  # slot n_ctx + t*M + m: stream m, step t
        scratch = []
        for k, v in ctx_kv:
            buf = k.new_empty(2, b, k.shape[1], width, k.shape[3])
            buf[0, :, :, :n_ctx], buf[1, :, :, :n_ctx] = k, v  # (B or 1) broadcasts
            scratch.append((buf[0], buf[1]))
    else:
        width = n_ctx + n_steps * n_streams
        if slots < width or ctx_kv[0][0].shape[0] != b:
            raise ValueError(f"in-place reasoning needs (B={b}, H, >= {width}, Dh) context K/V, "
                             f"got {tuple(ctx_kv[0][0].shape)}")
        scratch = ctx_kv
    real = torch.arange(n_ctx, device=dev) < ctx_lens.view(-1, 1)  # (B, S)
    chain = torch.arange(n_steps * n_streams, device=dev) % n_streams  # stream of each chain slot
    own = chain == torch.arange(n_streams, device=dev).view(-1, 1)  # (M, T*M)
    see = torch.cat([real.unsqueeze(1).expand(b, n_streams, n_ctx), own.expand(b, n_streams, -1)],
                    dim=-1)  # (B, M, width)
    # Additive float mask: SDPA would convert a bool mask on every call (T * L times).
    mask = torch.where(see, 0.0, float("-inf")).unsqueeze(1)  # (B, 1, M, width)
    h, states = h0.unsqueeze(1) + offsets, []  # (B, M, D)
    for t in range(n_steps):
        x = step_inputs(encoder, h, r_table[t], input_noise)  # (B, M, D)
        end = n_ctx + (t + 1) * n_streams  # slots of later steps hold nothing yet: cut off
        for i, block in enumerate(encoder.blocks):
            q, k, v = block.project(x)  # (B, H, M, Dh)
            keys, values = scratch[i]
            keys[:, :, end - n_streams : end], values[:, :, end - n_streams : end] = k, v
            x = block.finish(x, block.attend(q, keys[:, :, :end], values[:, :, :end],
                                             mask[..., :end]))
        h = x
        states.append(h)
    return torch.stack(states, dim=2)


def reason_all_prefixes(encoder: Encoder, hidden: Tensor, item_kv: KV, offsets: Tensor,
                        r_table: Tensor, input_noise: float = 0.0) -> Tensor:
    """Training form over every prefix at once (plr-method.md s.6).

    hidden (B, S, D) and item_kv from `Encoder.encode` of right-padded sequences. The chain of
    prefix i, stream m starts at hidden[:, i] + offsets[m] and sees items 0..i and its own earlier
    steps only. Returns (B, S, M, T, D); rows at padded positions are junk (finite).
    The reference for `model.reasoning_kept.reason_kept_prefixes`, the form training uses.
    """
    b, s, d = hidden.shape
    n_streams = offsets.shape[0]
    h = (hidden.unsqueeze(2) + offsets).reshape(b, s * n_streams, d)  # chain q = i * M + m
    ar = torch.arange(s, device=hidden.device)
    causal = ar.view(s, 1) >= ar.view(1, s)  # (S, S): prefix i sees items j <= i
    item_mask = causal.repeat_interleave(n_streams, dim=0).unsqueeze(0)  # (1, S*M, S)
    states = _chain_steps(encoder, h, item_kv, item_mask, r_table, input_noise)
    return states.view(b, s, n_streams, r_table.shape[0], d)


def sample_prefixes(keep: Tensor, per_row: int) -> Tensor:
    """Bool (B, S): up to `per_row` random True entries of each row of `keep` (0 = keep all)."""
    if per_row <= 0 or per_row >= keep.shape[1]:
        return keep
    r = torch.rand(keep.shape, device=keep.device).masked_fill(~keep, -1.0)
    kth = r.topk(per_row, dim=1).values[:, -1:]
    return keep & (r >= kth)


def diversity_loss(logits: Tensor) -> Tensor:
    """-mean over ordered pairs a != b of KL(p_a || sg(p_b)), p = softmax(logits), logits (N, K, V).

    Lower when the K distributions of a row disagree (the term rewards divergence); the target side
    is detached as in ReaRec-ERL's code. Logits must be finite (drop the padding column first).
    Computed in O(K) from sum_{b != a} log p_b = sum_b log p_b - log p_a.
    """
    k = logits.shape[1]
    if k < 2:
        return logits.new_zeros(())
    log_p = F.log_softmax(logits, dim=-1)  # (N, K, V)
    target = log_p.detach()
    others = target.sum(dim=1, keepdim=True) - target  # (N, K, V): sum over b != a of log p_b
    kl_sum = (log_p.exp() * ((k - 1) * log_p - others)).sum(dim=(1, 2))  # (N,)
    return -(kl_sum / (k * (k - 1))).mean()


def info_nce(anchors: Tensor, positives: Tensor, valid: Tensor, temperature: float) -> Tensor:
    """In-batch InfoNCE per (prefix position, state): anchors, positives (B, S, K, D); valid (B, S).

    The positive of anchor (b, i, k) is positives[b, i, k]; its negatives are the other valid users'
    positives at the same prefix position i and state k. Dot product / temperature (no normalising).
    """
    b = anchors.shape[0]
    a = anchors.permute(1, 2, 0, 3)  # (S, K, B, D)
    p = positives.permute(1, 2, 0, 3)
    logits = a @ p.transpose(-1, -2)  # (S, K, B, B)
    if temperature != 1.0:  # x / 1.0 is x: no pass over the whole block (and none back) for it
        logits = logits / temperature
    rows = valid.T.unsqueeze(1).expand(-1, logits.shape[1], -1)  # (S, K, B): valid anchors
    if not rows.any():
        return anchors.sum() * 0.0  # no valid pair: a zero that keeps the graph
    # The valid anchors' rows first, then each row's invalid columns masked: the same values (and
    # gradients) as masking the whole (S, K, B, B) block and then selecting, without the block-sized
    # masked copy and its backward.
    position = rows.nonzero()[:, 0]  # (R,): the prefix position of each selected row
    row_logits = logits[rows].masked_fill(~valid.T[position], float("-inf"))  # (R, B)
    labels = torch.arange(b, device=anchors.device).expand_as(rows)
    return F.cross_entropy(row_logits, labels[rows])
