"""SASRec: the encoder alone; the user vector is h0, the last real position's hidden state.

Trains sequence-to-sequence (every position predicts its next item in one pass) with full-softmax
cross-entropy over all items, as RecBole's CE SASRec does per prefix.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import SequentialRecommender
from .encoder import KV


class SASRec(SequentialRecommender):
    def user_vectors(self, h0: Tensor, ctx_kv: KV, ctx_lens: Tensor, explain: bool = False,
                     n_ctx: int | None = None):
        return (h0, {}) if explain else h0

    def loss(self, item_ids: Tensor, seq_lens: Tensor, targets: Tensor) -> tuple[Tensor, dict]:
        keep = targets > 0
        hidden = self.encoder.encode_kept(item_ids, seq_lens, keep)  # (N, D), positions with a target
        ce = F.cross_entropy(self.logits(hidden), targets[keep])
        return ce, {"ce": ce.item()}
