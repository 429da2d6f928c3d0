"""Shared pieces of the model tests: synthetic batches and a short fitting loop (synthetic data)."""

import torch

N_ITEMS = 50


def synthetic_batch(lens=(7, 4, 2, 6), seed=1, n_items=N_ITEMS):
    """Right-padded random sequences; targets[b, i] = the next item, 0 past the end (synthetic)."""
    g = torch.Generator().manual_seed(seed)
    full = torch.randint(1, n_items + 1, (len(lens), max(lens) + 1), generator=g)
    items = torch.zeros(len(lens), max(lens), dtype=torch.long)
    targets = torch.zeros_like(items)
    for b, n in enumerate(lens):
        items[b, :n] = full[b, :n]
        targets[b, :n] = full[b, 1 : n + 1]
    return items, torch.tensor(lens), targets


def fit(model, items, seq_lens, targets, steps, lr=1e-2, part="ce"):
    """Adam for `steps` steps on one batch; returns (first, last) value of loss part `part`."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    first = last = None
    for _ in range(steps):
        loss, parts = model.loss(items, seq_lens, targets)
        last = parts[part]
        first = last if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    return first, last
