"""Shared helpers of the inference tests: tiny models of every kind and synthetic histories."""

import torch

from model.config import ModelConfig
from model.registry import build_model

N_ITEMS, MAX_LEN = 50, 8


def make_model(kind: str, seed: int = 0, **overrides):
    """A randomly initialised tiny model (d=16, 2 layers, 50 items, max_len 8); init_std 0.2 so
    scores are well spread (few near-ties). A kind that fails to import or build fails the test."""
    torch.manual_seed(seed)
    fields = dict(n_items=N_ITEMS, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_len=MAX_LEN, init_std=0.2)
    cfg = ModelConfig(kind=kind, **{**fields, **overrides})
    return build_model(cfg).eval()


def random_history(n: int, seed: int) -> list[int]:
    """Synthetic: n uniform random item indices in [1, N_ITEMS] (repeats allowed)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, N_ITEMS + 1, (n,), generator=g).tolist()
