"""Raw interaction log: one row per (user_id, item_id, timestamp) event, in file order.

Contract: the three arrays have equal length and row i is the i-th event of the source file, so
row order is the tie-break for equal timestamps. Ids are strings; `titles` maps item_id -> title.
"""

from dataclasses import dataclass, field

import numpy as np


@dataclass
class InteractionLog:
    user_ids: np.ndarray  # (N,) str
    item_ids: np.ndarray  # (N,) str
    timestamps: np.ndarray  # (N,) float64
    titles: dict[str, str] = field(default_factory=dict)
    name: str = "interactions"

    def __post_init__(self):
        self.user_ids = np.asarray(self.user_ids).astype(str)
        self.item_ids = np.asarray(self.item_ids).astype(str)
        self.timestamps = np.asarray(self.timestamps, dtype=np.float64)
        lengths = {len(self.user_ids), len(self.item_ids), len(self.timestamps)}
        if len(lengths) != 1:
            raise ValueError(
                f"user_ids, item_ids and timestamps differ in length: "
                f"{len(self.user_ids)}, {len(self.item_ids)}, {len(self.timestamps)}"
            )

    def __len__(self) -> int:
        return len(self.user_ids)

    def take(self, rows: np.ndarray) -> "InteractionLog":
        """The sub-log of `rows` (indices or boolean mask), keeping titles and name."""
        return InteractionLog(
            self.user_ids[rows], self.item_ids[rows], self.timestamps[rows], self.titles, self.name
        )
