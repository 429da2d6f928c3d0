"""Turn an InteractionLog into per-user item sequences over an item vocabulary.

Contract: sequences are oldest first, sorted stably by timestamp (file row order breaks ties);
item index 0 is padding, so real items are 1..n_items; filtering (dedupe, then k-core) never
reorders the events it keeps. build_dataset raises ValueError if a filter leaves nothing.
"""

import json
from dataclasses import dataclass, field

import numpy as np

from model.data.log import InteractionLog

DEDUPE_POLICIES = ("keep_all", "first", "last")


class ItemVocab:
    """External item id (str) <-> index (int); index 0 is padding and maps to no item."""

    def __init__(self, external_ids):
        self.external_ids = [str(item_id) for item_id in external_ids]
        self._index = {item_id: i + 1 for i, item_id in enumerate(self.external_ids)}
        if len(self._index) != len(self.external_ids):
            raise ValueError("ItemVocab: external ids must be unique")

    def __len__(self) -> int:
        return len(self.external_ids)

    def __eq__(self, other) -> bool:
        return isinstance(other, ItemVocab) and self.external_ids == other.external_ids

    def to_index(self, item_ids) -> np.ndarray:
        unknown = [item_id for item_id in item_ids if str(item_id) not in self._index]
        if unknown:
            raise ValueError(f"unknown item ids ({len(unknown)}): {unknown[:10]}")
        return np.array([self._index[str(item_id)] for item_id in item_ids], dtype=np.int64)

    def to_external(self, indices) -> list[str]:
        indices = [int(i) for i in indices]
        bad = [i for i in indices if not 1 <= i <= len(self)]
        if bad:
            raise ValueError(f"item indices out of range 1..{len(self)}: {bad[:10]}")
        return [self.external_ids[i - 1] for i in indices]

    def to_json(self) -> str:
        return json.dumps({"external_ids": self.external_ids})

    @classmethod
    def from_json(cls, text: str) -> "ItemVocab":
        return cls(json.loads(text)["external_ids"])


@dataclass
class SequenceDataset:
    name: str
    vocab: ItemVocab
    user_ids: list[str]
    sequences: list[np.ndarray]  # per user, int64 item indices, oldest first
    popularity: np.ndarray  # (n_items + 1,) interaction counts, index 0 = 0
    titles: dict[int, str] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.vocab)

    def stats(self) -> dict:
        seq_lens = np.array([len(s) for s in self.sequences])
        n_users, n_interactions = len(self.sequences), int(seq_lens.sum())
        return {
            "users": n_users,
            "items": self.n_items,
            "interactions": n_interactions,
            "seq_len_min": int(seq_lens.min()),
            "seq_len_median": float(np.median(seq_lens)),
            "seq_len_mean": float(seq_lens.mean()),
            "seq_len_max": int(seq_lens.max()),
            "density": n_interactions / (n_users * self.n_items),
        }


def time_order(log: InteractionLog) -> np.ndarray:
    """Row indices grouped by user (sorted id), oldest first; equal timestamps keep file order."""
    by_time = np.argsort(log.timestamps, kind="stable")
    return by_time[np.argsort(log.user_ids[by_time], kind="stable")]


def drop_repeats(log: InteractionLog, policy: str = "keep_all") -> InteractionLog:
    """Keep every repeat of a (user, item) pair, or only its earliest / latest event in time."""
    if policy not in DEDUPE_POLICIES:
        raise ValueError(f"dedupe must be one of {DEDUPE_POLICIES}, got {policy!r}")
    if policy == "keep_all":
        return log
    order = time_order(log)
    if policy == "last":
        order = order[::-1]
    pairs = np.char.add(np.char.add(log.user_ids[order], "\x1f"), log.item_ids[order])
    _, first_seen = np.unique(pairs, return_index=True)  # first hit in `order`
    return log.take(np.sort(order[first_seen]))


def k_core_filter(log: InteractionLog, k: int) -> InteractionLog:
    """Drop users and items with fewer than k events, repeated until every one left has >= k."""
    if k <= 0:
        return log
    _, user_codes = np.unique(log.user_ids, return_inverse=True)
    _, item_codes = np.unique(log.item_ids, return_inverse=True)
    keep = np.ones(len(log), dtype=bool)
    while True:
        user_counts = np.bincount(user_codes[keep], minlength=user_codes.max() + 1)
        item_counts = np.bincount(item_codes[keep], minlength=item_codes.max() + 1)
        still = keep & (user_counts[user_codes] >= k) & (item_counts[item_codes] >= k)
        if np.array_equal(still, keep):
            return log.take(keep)
        keep = still


def build_dataset(
    log: InteractionLog, k_core: int = 0, dedupe: str = "keep_all", name: str | None = None
) -> SequenceDataset:
    """Dedupe, k-core filter, then group into per-user sequences over a sorted item vocabulary."""
    if len(log) == 0:
        raise ValueError(f"interaction log {log.name!r} is empty")
    deduped = drop_repeats(log, dedupe)
    filtered = k_core_filter(deduped, k_core)
    if len(filtered) == 0:
        raise ValueError(f"k_core={k_core} removed every interaction of {log.name!r}")
    vocab = ItemVocab(np.unique(filtered.item_ids))
    order = time_order(filtered)
    item_index = vocab.to_index(filtered.item_ids[order])
    user_ids, starts = np.unique(filtered.user_ids[order], return_index=True)
    sequences = np.split(item_index, starts[1:])
    popularity = np.bincount(item_index, minlength=len(vocab) + 1).astype(np.int64)
    titles = {i: log.titles[e] for i, e in enumerate(vocab.external_ids, 1) if e in log.titles}
    return SequenceDataset(
        name or log.name, vocab, [str(u) for u in user_ids], sequences, popularity, titles
    )

