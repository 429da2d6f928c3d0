"""Shared by the server tests (imported by name, so it must not be called conftest): tiny
synthetic checkpoints — random init, d=16, 50 items — for API tests, never for accuracy."""

from __future__ import annotations

import numpy as np

from model.checkpoint import save_checkpoint
from model.config import ModelConfig
from model.data import ItemVocab
from model.registry import build_model

N_ITEMS = 50
ITEM_IDS = [str(1000 + i) for i in range(N_ITEMS)]  # external ids differ from indices on purpose
MAX_LEN = 8  # small, so tests cross the serving window's restart


def save_tiny(directory, kind: str, seed: int, item_ids: list[str] = ITEM_IDS) -> str:
    """A synthetic (random-init) checkpoint; popularity decreases with the index."""
    import torch

    torch.manual_seed(seed)
    n_items = len(item_ids)
    cfg = ModelConfig(kind=kind, n_items=n_items, d_model=16, n_layers=2, n_heads=2, d_ff=32,
                      max_len=MAX_LEN, n_steps=2, n_streams=3, dropout=0.1)
    model = build_model(cfg)
    titles = {i: f"Item {item_ids[i - 1]}" for i in range(1, 11)}  # titles known for 10 items
    popularity = np.arange(n_items + 1)[::-1].copy()
    popularity[0] = 0
    return save_checkpoint(directory, model, ItemVocab(item_ids), titles, popularity,
                           train_config={"synthetic": True}, metrics={"note": "synthetic"})


# API-level parity with a full recompute: 1e-5 relative on every score, plus an absolute floor of
# 1e-6 for scores near zero (the scores here reach ~0.6; the largest measured cached-vs-full
# difference is 3e-8). The same items in the same order: a swapped pair is a failure.
RTOL, ATOL = 1e-5, 1e-6


def assert_same_answer(answer: dict, reference: dict, rtol: float = RTOL, atol: float = ATOL):
    assert [i["item_id"] for i in answer["items"]] == [i["item_id"] for i in reference["items"]]
    for got, want in zip(answer["items"], reference["items"]):
        assert abs(got["score"] - want["score"]) <= atol + rtol * abs(want["score"]), (got, want)


def settle(client) -> None:
    """Wait for the cache/state writes the server scheduled behind its answers: a test that then
    reads Redis directly sees them (the server's own reads wait for them by themselves)."""
    client.portal.call(client.app.state.plr.writes.drain)
