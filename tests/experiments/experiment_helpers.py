"""Shared helpers of the experiment tests (SYNTHETIC data only, never reported as results)."""

import numpy as np

from model.data import InteractionLog, build_dataset, leave_one_out


def synthetic_data(n_users: int = 30, n_items: int = 40, max_events: int = 20, seed: int = 0):
    """SYNTHETIC users of 4..max_events random items: (dataset, leave-one-out split)."""
    rng = np.random.default_rng(seed)
    rows = [(f"u{u}", f"i{int(rng.integers(n_items))}", float(t))
            for u in range(n_users) for t in range(int(rng.integers(4, max_events + 1)))]
    users, items, times = map(np.array, zip(*rows))
    dataset = build_dataset(InteractionLog(users, items, times, name="synthetic"))
    return dataset, leave_one_out(dataset)
