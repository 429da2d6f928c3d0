"""The contract every model kind implements, on top of the shared `Encoder`.

Training: `loss(item_ids, seq_lens, targets)` over right-padded (B, S) sequences where
`targets[b, i]` is the item that follows prefix `item_ids[b, :i+1]` (0 = no target).
Inference: `user_vectors(h0, ctx_kv, ctx_lens)` turns the encoder's fast state and the context's
per-layer K/V into the vector scored against every item; the incremental engine calls it with
cached K/V, `predict` with freshly computed K/V, so both paths share every line after the encoder.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import ModelConfig
from .encoder import KV, Encoder, init_weights


class SequentialRecommender(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.encoder = Encoder(cfg)

    def reset_parameters(self) -> None:
        init_weights(self, self.cfg.init_std)

    # -- inference ----------------------------------------------------------------------------
    def user_vectors(self, h0: Tensor, ctx_kv: KV, ctx_lens: Tensor, explain: bool = False,
                     n_ctx: int | None = None):
        """(B, D) fast state + context K/V (B, H, S, Dh per layer, right-padded to ctx_lens).

        Returns (B, D) scoring vectors, or (vectors, details dict) when explain is True.
        n_ctx None: ctx_kv are read only. n_ctx given: ctx_kv have n_ctx context slots followed by
        at least `scratch_slots` free slots the model may overwrite (the engine's workspace).
        """
        raise NotImplementedError

    @property
    def scratch_slots(self) -> int:
        """Free K/V slots after the context that `user_vectors(..., n_ctx=...)` may use."""
        return 0

    @torch.no_grad()
    def predict(self, item_ids: Tensor, seq_lens: Tensor) -> Tensor:
        """Full recompute: scores (B, n_items + 1) for right-padded contexts; column 0 is -inf."""
        hidden, kv = self.encoder.encode(item_ids, seq_lens)
        h0 = self.encoder.last_hidden(hidden, seq_lens)
        return self.score(self.user_vectors(h0, kv, seq_lens))

    def score(self, vectors: Tensor) -> Tensor:
        scores = self.encoder.scores(vectors)
        scores[..., 0] = float("-inf")  # padding is never an item
        return scores

    # -- training -----------------------------------------------------------------------------
    def loss(self, item_ids: Tensor, seq_lens: Tensor, targets: Tensor) -> tuple[Tensor, dict]:
        """Scalar training loss and a dict of its named float parts (for logging)."""
        raise NotImplementedError

    def logits(self, vectors: Tensor) -> Tensor:
        """Training logits: (N, D) -> (N, P) (P >= n_items + 1, see `train_scores`) / temperature."""
        return self.tempered(self.train_scores(vectors))

    def train_scores(self, vectors: Tensor) -> Tensor:
        """Training scores over the padded item table (`Encoder.scores_padded`): (N, P), -inf at
        the padding item 0 and at the columns past n_items, so a softmax or cross-entropy over
        them equals one over the real items. The -inf columns enter as the product's bias
        (addmm) instead of being written into its output: written in place, they made autograd
        clone the whole (N, P) gradient twice in backward (a SASRec step's cross-entropy took
        ~1.3x as long). x + 0 is x, so the scores are the same (bit for bit on the machine the
        grid trains on; tests hold them to 1e-6)."""
        table = self.encoder.padded_items()
        bias = vectors.new_zeros(table.shape[0])
        bias[0] = float("-inf")
        bias[self.cfg.n_items + 1 :] = float("-inf")
        return torch.addmm(bias, vectors, table.T)

    def item_logits(self, vectors: Tensor) -> Tensor:
        """Finite training logits over the real items only, (..., n_items) / temperature, for the
        diversity terms (a -inf column would turn their p log p into NaN)."""
        return self.tempered(self.encoder.scores_padded(vectors)[..., 1 : self.cfg.n_items + 1])

    def tempered(self, logits: Tensor) -> Tensor:
        """logits / temperature; at temperature 1 the logits themselves (a division by 1 is an
        exact no-op, but a full pass over an (N, n_items) tensor and its gradient)."""
        t = self.cfg.temperature
        return logits if t == 1.0 else logits / t
