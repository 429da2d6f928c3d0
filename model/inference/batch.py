"""Batched, ragged context building: cached rows + new items of many users -> one padded buffer.

`ContextBuilder.build(pasts, news)` copies every user's cached rows into a padded (B, S, W)
workspace in the cache row layout, runs the new items of all users through the encoder blocks with
their K/V (and final hidden) written in place at per-row positions (gpt-fast style: the past is
never concatenated), and returns per-layer K/V views, lengths, h0 and each user's new rows (copies).
It never writes the caches' tensors. The workspace is reused: valid until the next `build` call.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..encoder import KV, Encoder


@dataclass
class Context:
    """The batch in its internal order (users grouped by new-item count); `inverse` maps back."""

    rows: Tensor  # (B, S + spare, W) workspace view, cache row layout; rows >= lens[b] are stale
    n_ctx: int  # S: context slots; the `spare` slots after them are free scratch
    lens: Tensor  # (B,) long: real context length of each row
    h0: Tensor  # (B, D) hidden state of each row's newest item
    new_rows: list[Tensor]  # in request order: (N_b, W) fp32 CPU rows of the new items
    inverse: Tensor | None  # (B,) request b is row inverse[b]; None when the order is unchanged
    n_heads: int

    def layer_kv(self) -> KV:
        """Per-layer (K, V) each (B, H, S + spare, Dh) strided views, right-padded to lens."""
        d, h = self.h0.shape[1], self.n_heads
        n_layers = (self.rows.shape[2] // d - 1) // 2
        return [(_heads(self.rows, 2 * i * d, d, h), _heads(self.rows, (2 * i + 1) * d, d, h))
                for i in range(n_layers)]

    def to_request_order(self, t: Tensor) -> Tensor:
        """(B, ...) rows in batch order -> request order."""
        return t if self.inverse is None else t[self.inverse]


def _heads(rows: Tensor, offset: int, d: int, n_heads: int) -> Tensor:
    """(B, S, W) rows -> columns [offset, offset + d) as a (B, H, S, Dh) strided view (no copy)."""
    return rows[..., offset : offset + d].unflatten(-1, (n_heads, d // n_heads)).transpose(1, 2)


def _groups(n_new: list[int]) -> tuple[list[int], list[tuple[int, int]]]:
    """Batch order (new-item count buckets 1, 2, 3-4, 5-8, ...; zero last) and group slices.

    Bucketing bounds the padding waste of a ragged encoder pass to 2x per group, so one user's
    long prefill does not pad everyone's single appended item to its length.
    """
    def bucket(n):
        return math.inf if n == 0 else math.ceil(math.log2(n))

    order = sorted(range(len(n_new)), key=lambda b: bucket(n_new[b]))
    groups, start = [], 0
    for pos in range(1, len(order) + 1):
        if pos == len(order) or bucket(n_new[order[pos]]) != bucket(n_new[order[start]]):
            if n_new[order[start]] > 0:
                groups.append((start, pos))
            start = pos
    return order, groups


class ContextBuilder:
    def __init__(self, encoder: Encoder, device: torch.device):
        self.encoder = encoder
        self.device = device
        cfg = encoder.cfg
        self.n_layers, self.n_heads, self.d_model = cfg.n_layers, cfg.n_heads, cfg.d_model
        self.width = (2 * cfg.n_layers + 1) * cfg.d_model
        self.max_len = cfg.max_len
        self._workspace = torch.zeros(0, device=device)  # grows, never shrinks; always finite
        self._ar = torch.arange(cfg.max_len + 1, device=device)

    def _buffer(self, batch: int, size: int) -> Tensor:
        numel = batch * size * self.width
        if self._workspace.numel() < numel:
            # Zeros, not empty: masked slots are read by attention and must never be NaN/inf.
            self._workspace = torch.zeros(numel, device=self.device)
        return self._workspace[:numel].view(batch, size, self.width)

    def build(self, pasts: list[list[Tensor]], news: list[list[int]], spare: int = 0) -> Context:
        """pasts[b]: chunks of cached rows (P_b, W) (empty list = none); news[b]: new item indices.

        Every user needs P_b + N_b >= 1 and P_b + N_b <= max_len (the caller applies the window).
        `spare` free slots follow the S = max(P_b + N_b) context slots of every row (scratch for a
        reasoning model's chain K/V, so it need not copy the context).
        """
        dev = self.device
        order, groups = _groups([len(items) for items in news])
        pasts, news = [pasts[b] for b in order], [news[b] for b in order]
        p_list = [sum(c.shape[0] for c in chunks) for chunks in pasts]
        n_list = [len(items) for items in news]
        lens_list = [a + b for a, b in zip(p_list, n_list)]
        batch, size, total = len(order), max(lens_list), max(lens_list) + spare
        rows = self._buffer(batch, total)  # (B, S + spare, W)
        p, lens = torch.tensor([p_list, lens_list], device=dev).unbind(0)
        cols = self._arange(total)
        self._write_past(rows, pasts, p, cols)
        new_slots = (cols >= p[:, None]) & (cols < lens[:, None])  # (B, S + spare)
        # Flat (b * (S + spare) + s) index of every new item, in (row, position) order: found
        # once, so each layer's K/V write is one index_copy_, not a boolean-mask write per layer.
        slots = new_slots.view(-1).nonzero().squeeze(1)
        flat = rows.view(batch * total, self.width)
        ends = list(itertools.accumulate(n_list))  # ends[b]: new items in rows 0..b
        for start, stop in groups:
            at = ends[start - 1] if start else 0
            self._encode_group(rows[start:stop], flat, slots[at : ends[stop - 1]], news[start:stop],
                               p[start:stop], lens[start:stop], max(lens_list[start:stop]))
        h0 = flat[self._arange(batch) * total + lens - 1, -self.d_model :]  # (B, D)
        fresh = flat.index_select(0, slots).cpu()  # (sum N, W): a copy, never a view of the workspace
        new_rows = [None] * batch
        for b, chunk in zip(order, fresh.split(n_list)):
            new_rows[b] = chunk
        inverse = None
        if order != sorted(order):
            inverse = torch.tensor(sorted(range(batch), key=order.__getitem__), device=dev)
        return Context(rows, size, lens, h0, new_rows, inverse, self.n_heads)

    def _arange(self, n: int) -> Tensor:
        """torch.arange(n) on the device, sliced from a cached one (an arange call costs ~5 us)."""
        if self._ar.numel() < n:
            self._ar = torch.arange(max(n, 2 * self._ar.numel()), device=self.device)
        return self._ar[:n]

    def _write_past(self, rows: Tensor, pasts: list[list[Tensor]], p: Tensor, cols: Tensor) -> None:
        if self.device.type == "cpu":  # one memcpy per chunk straight from the caches
            for b, chunks in enumerate(pasts):
                at = 0
                for chunk in chunks:
                    rows[b, at : at + chunk.shape[0]].copy_(chunk)
                    at += chunk.shape[0]
            return
        chunks = [c for user in pasts for c in user]
        if chunks:  # accelerators: one host-to-device transfer; a bool mask indexes in (b, s) order
            flat = torch.cat(chunks)
            if self.device.type == "cuda":
                flat = flat.pin_memory()
            rows[cols < p[:, None]] = flat.to(self.device, non_blocking=True)

    def _encode_group(self, rows: Tensor, flat: Tensor, slots: Tensor, ids: list[list[int]],
                      p: Tensor, lens: Tensor, s_max: int) -> None:
        """Encode new items of a contiguous slice of batch rows, writing their rows in place.

        rows: (G, S, W) view; flat: the whole batch's (B * S, W) view of the same workspace; slots:
        the flat indices of this group's new items in (row, position) order; p, lens (G,) past and
        total lengths, s_max their maximum. Each layer writes the new items' [K | V], and the last
        block's output fills their hidden column.
        """
        dev, d = self.device, self.d_model
        n_max = max(len(row) for row in ids)
        item_ids = torch.tensor([row + [0] * (n_max - len(row)) for row in ids], device=dev)
        j = self._arange(n_max)
        positions = (p[:, None] + j).clamp_(max=self.max_len - 1)  # padded columns: any valid index
        # Query (b, j) sees slots < P_b + j + 1 (itself and everything older); padded queries see the
        # whole row so no softmax row is empty. Additive float mask: SDPA would convert a bool mask
        # on every call, i.e. once per layer.
        visible = torch.minimum(p[:, None] + j + 1, lens[:, None])  # (G, N)
        mask = torch.where(self._arange(s_max) < visible[..., None], 0.0, float("-inf"))
        mask = mask.unsqueeze(1)  # (G, 1, N, S)
        real = None if all(len(row) == n_max for row in ids) else j < (lens - p)[:, None]  # (G, N)
        x = self.encoder.embed_items(item_ids, positions)  # (G, N, D)
        for layer, block in enumerate(self.encoder.blocks):
            # Block.project's layout: qkv columns are [q | k | v], each (H, Dh) flattened, so
            # columns D:3D are this layer's [K | V] segment of a cache row.
            qkv = F.linear(x, block.qkv.weight, block.qkv.bias)  # (G, N, 3D)
            flat[:, 2 * layer * d : 2 * (layer + 1) * d].index_copy_(0, slots, _select(qkv[..., d:], real))
            q = qkv[..., :d].unflatten(-1, (self.n_heads, -1)).transpose(1, 2)  # (G, H, N, Dh)
            keys = _heads(rows[:, :s_max], 2 * layer * d, d, self.n_heads)
            values = _heads(rows[:, :s_max], (2 * layer + 1) * d, d, self.n_heads)
            x = block.finish(x, block.attend(q, keys, values, mask))
        flat[:, -d:].index_copy_(0, slots, _select(x, real))


def _select(t: Tensor, real: Tensor | None) -> Tensor:
    """(G, N, X) -> (sum N, X): the real (non-padded) tokens in (row, column) order."""
    return t.flatten(0, 1) if real is None else t[real]
