"""Build a model of any kind from its config: the one place that maps kind names to classes."""

from __future__ import annotations

from .base import SequentialRecommender
from .config import MODEL_KINDS, ModelConfig


def model_class(kind: str) -> type[SequentialRecommender]:
    # Imported lazily so a half-written kind never breaks the others.
    if kind == "sasrec":
        from .sasrec import SASRec

        return SASRec
    if kind == "plr":
        from .plr import PLR

        return PLR
    if kind in ("rearec-erl", "rearec-prl"):
        from .rearec import ReaRec

        return ReaRec
    raise ValueError(f"unknown model kind {kind!r}; expected one of {MODEL_KINDS}")


def build_model(cfg: ModelConfig) -> SequentialRecommender:
    """A freshly initialised model; `cfg` is validated (ValueError names the bad field)."""
    model = model_class(cfg.validate().kind)(cfg)
    model.reset_parameters()
    return model
