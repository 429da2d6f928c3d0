"""Sequences -> tensors: training windows (every target exactly once) and evaluation prefixes.

Contract: training batches are `(item_ids (B, S), seq_lens (B,), targets (B, S))`, right-padded
with 0, where targets[b, i] is the item after prefix item_ids[b, :i+1] (0 = no target);
evaluation batches hold each prefix's LAST max_len items, right-padded (plr-method.md s.4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def window_ends(length: int, max_len: int, offset: int = 0, stride: int | None = None) -> list[int]:
    """End positions (exclusive) of the windows that tile one sequence, newest first.

    Windows hold up to max_len+1 items (max_len inputs, max_len targets); consecutive ends are
    `stride` (default max_len) apart, and each window owns only the targets after the next-older
    end, so every item but the first is a target exactly once and owned targets see at least
    max_len - stride + 1 items of their past (the sequence start aside). `offset` in [0, stride)
    moves the cuts: the newest window still ends at `length` (the targets nearest the evaluation
    keep a full context) and owns only the newest `offset` targets.
    """
    stride = stride or max_len
    if not 1 <= stride <= max_len:
        raise ValueError(f"stride must be in [1, max_len={max_len}], got {stride}")
    if not 0 <= offset < stride:
        raise ValueError(f"offset must be in [0, stride={stride}), got {offset}")
    if length < 2:
        return []
    ends = [length]
    end = length - (offset or stride)
    while end >= 2:  # a window needs an input item and a target
        ends.append(end)
        end -= stride
    return ends


def train_windows(
    sequences: Sequence[np.ndarray], max_len: int, rng: np.random.Generator | None = None,
    stride: int | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(inputs, targets) windows covering every training target once.

    Why windows and not one row per prefix (RecBole's augmentation): seq2seq over windows costs
    one encoder pass per `stride` targets instead of one per target (~50x less at the default
    stride = max_len on MovieLens, whose histories reach 737 items), and the loss still sees
    every target. A smaller stride buys longer contexts per target for stride/max_len of the
    throughput. Why random offsets (`rng`): with fixed cuts a target always sees the same context
    length; a fresh offset per sequence and epoch varies it. Targets owned by an older window are
    zeroed, so nothing counts twice.
    """
    windows = []
    for seq in sequences:
        offset = int(rng.integers(stride or max_len)) if rng is not None else 0
        ends = window_ends(len(seq), max_len, offset, stride)
        for k, end in enumerate(ends):
            start = max(0, end - max_len - 1)
            inputs, targets = seq[start : end - 1], seq[start + 1 : end].copy()
            older_end = ends[k + 1] if k + 1 < len(ends) else 0
            targets[: max(0, older_end - start - 1)] = 0  # owned by the next-older window
            windows.append((inputs, targets))
    return windows


def collate_windows(
    windows: Sequence[tuple[np.ndarray, np.ndarray]],
) -> tuple[Tensor, Tensor, Tensor]:
    """Right-pad (inputs, targets) windows into (item_ids, seq_lens, targets) int64 tensors."""
    if not windows:
        raise ValueError("collate_windows needs at least one window")
    seq_lens = torch.tensor([len(w[0]) for w in windows], dtype=torch.long)
    item_ids = torch.zeros(len(windows), int(seq_lens.max()), dtype=torch.long)
    targets = torch.zeros_like(item_ids)
    for b, (inputs, tgt) in enumerate(windows):
        item_ids[b, : len(inputs)] = torch.from_numpy(np.asarray(inputs, dtype=np.int64))
        targets[b, : len(tgt)] = torch.from_numpy(np.asarray(tgt, dtype=np.int64))
    return item_ids, seq_lens, targets


def eval_batch(prefixes: Sequence[np.ndarray], max_len: int) -> tuple[Tensor, Tensor]:
    """Each prefix's last max_len items, right-padded: (item_ids (B, S), seq_lens (B,))."""
    if any(len(p) == 0 for p in prefixes):
        raise ValueError("evaluation prefixes must be non-empty")
    kept = [np.asarray(p[-max_len:], dtype=np.int64) for p in prefixes]
    seq_lens = torch.tensor([len(p) for p in kept], dtype=torch.long)
    item_ids = torch.zeros(len(kept), int(seq_lens.max()), dtype=torch.long)
    for b, p in enumerate(kept):
        item_ids[b, : len(p)] = torch.from_numpy(p)
    return item_ids, seq_lens


class TrainBatches:
    """One epoch of shuffled window batches for this process's shard.

    Under DDP (world_size > 1) every rank draws the same windows and order from (seed, epoch),
    pads the list by repetition to a multiple of world_size (as DistributedSampler does, so all
    ranks take the same number of steps) and keeps every world_size-th window from index rank;
    the per-rank batch is ceil(batch_size / world_size), keeping the global batch near batch_size.
    """

    def __init__(self, sequences, max_len: int, batch_size: int, seed: int,
                 random_offsets: bool = True, rank: int = 0, world_size: int = 1,
                 stride: int | None = None):
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad batch_size={batch_size} / rank={rank} / world_size={world_size}")
        self.sequences = [s for s in sequences if len(s) >= 2]
        if not self.sequences:
            raise ValueError("no training sequence has a target (all shorter than 2 items)")
        self.max_len, self.seed, self.random_offsets = max_len, seed, random_offsets
        self.stride = stride or max_len
        window_ends(2, max_len, 0, self.stride)  # validates stride
        self.rank, self.world_size = rank, world_size
        self.batch_size = math.ceil(batch_size / world_size)

    def epoch(self, epoch: int) -> list[tuple[Tensor, Tensor, Tensor]]:
        """This rank's batches for one epoch (a list, so progress bars know its length)."""
        rng = np.random.default_rng([self.seed, epoch])
        windows = train_windows(self.sequences, self.max_len,
                                rng if self.random_offsets else None, self.stride)
        order = rng.permutation(len(windows))
        pad = -len(order) % self.world_size
        order = np.concatenate([order, order[:pad]])[self.rank :: self.world_size]
        return [collate_windows([windows[j] for j in order[i : i + self.batch_size]])
                for i in range(0, len(order), self.batch_size)]
