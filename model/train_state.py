"""Per-epoch training state on disk, so an interrupted run resumes where it stopped.

Contract: `save_state(path, state)` writes atomically (temporary sibling, then rename), so a
reader sees either the previous epoch's file or the new one, never half of one. The state holds
everything the next epoch depends on (model, optimizer, weight average, the RNG streams, the best
epoch so far and the history), so resuming from it gives the same run as never stopping.
`load_state(path, fingerprint)` raises ValueError if the file belongs to another configuration.
These files are scratch (git-ignored `runs/`); the results worth keeping are the run JSONs.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


def rng_state() -> dict:
    """Every RNG a training epoch may draw from: torch (dropout, sampling), numpy, Python."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_state(path: Path, state: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path, fingerprint: dict) -> dict | None:
    """The saved state at `path`, None if there is none; ValueError if it was saved by a run
    with another fingerprint (model and training configuration)."""
    path = Path(path)
    if not path.exists():
        return None
    # weights_only=False: the file holds numpy and Python RNG states, and it is this machine's
    # own scratch file (never downloaded, never committed).
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("fingerprint") != fingerprint:
        raise ValueError(f"{path} was saved by another configuration; delete it or use another "
                         f"path (saved {state.get('fingerprint')}, now {fingerprint})")
    return state
