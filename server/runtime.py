"""Loaded models: one `ModelRuntime` per checkpoint directory (checkpoint + engine + id maps).

`load_runtimes(settings)` loads every subdirectory of `models_dir` once (hidden directories are
in-progress checkpoint writes and skipped) and raises ValueError naming a bad directory or a
missing default model. `warm_up()` runs one tiny recommend so the first request pays no lazy init.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import Checkpoint, checkpoint_dirs, load
from model.inference import Engine, RecRequest

from .catalog import Catalog
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ModelRuntime:
    name: str
    checkpoint: Checkpoint
    engine: Engine
    known: frozenset[str] = field(default_factory=frozenset)
    index: dict[str, int] = field(default_factory=dict)  # external id -> vocab index (known ids)
    by_popularity: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    ids: list[str] = field(default_factory=list)  # vocab index -> external id (0 = padding)
    titles: list[str | None] = field(default_factory=list)  # vocab index -> title or None
    catalog: Catalog = field(default_factory=lambda: Catalog([]))  # title search (GET /items)

    @property
    def version(self) -> str:
        return self.checkpoint.version

    @property
    def kind(self) -> str:
        return self.checkpoint.config.kind

    @property
    def n_items(self) -> int:
        return self.checkpoint.config.n_items

    def unknown(self, item_ids: list[str]) -> list[str]:
        """Ids this model's vocabulary lacks, each once, in request order."""
        return list(dict.fromkeys(i for i in item_ids if i not in self.known))

    def to_indices(self, item_ids: list[str]) -> list[int]:
        """Indices of the ids this model knows (a stored history may hold another model's ids)."""
        get = self.index.get  # one pass; the same answer as vocab.to_index of the known ids
        return [j for j in map(get, item_ids) if j is not None]

    def external(self, indices) -> list[str]:
        ids = self.ids
        return [ids[i] for i in indices]

    def title(self, index: int) -> str | None:
        return self.titles[index]

    def warm_up(self) -> None:
        request = RecRequest(history=[1], cache=None, k=1, exclude_seen=False, explain=True)
        self.engine.recommend([request])


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise ValueError("PLR_DEVICE=cuda but no CUDA device is available")
    return torch.device(setting)


def load_runtime(path: Path, device: torch.device) -> ModelRuntime:
    try:
        ckpt = load(path, device=device)
    except ValueError as exc:
        raise ValueError(f"cannot load model {path.name!r}: {exc}") from exc
    order = np.argsort(-ckpt.popularity[1:], kind="stable") + 1  # most popular first, no padding
    ids = ckpt.vocab.external_ids
    indices = ckpt.vocab.to_index(ids).tolist()
    by_index: list[str] = [""] * (ckpt.config.n_items + 1)
    for item_id, index in zip(ids, indices):
        by_index[index] = item_id
    titles = [ckpt.titles.get(i) for i in range(ckpt.config.n_items + 1)]
    return ModelRuntime(
        name=path.name,
        checkpoint=ckpt,
        engine=Engine(ckpt.model, ckpt.version, device=device),
        known=frozenset(ids),
        index=dict(zip(ids, indices)),
        by_popularity=order,
        ids=by_index,
        titles=titles,
        catalog=Catalog.build(ckpt.vocab.to_external(order), ckpt.titles, order),
    )


def load_runtimes(settings: Settings) -> dict[str, ModelRuntime]:
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    device = resolve_device(settings.device)
    runtimes = {p.name: load_runtime(p, device) for p in checkpoint_dirs(settings.models_dir)}
    if settings.default_model not in runtimes:
        raise ValueError(
            f"default model {settings.default_model!r} not in {settings.models_dir}: "
            f"found {sorted(runtimes)} (set PLR_DEFAULT_MODEL)"
        )
    for rt in runtimes.values():
        log.info("loaded model %s (%s, version %s) on %s", rt.name, rt.kind, rt.version, device)
    return runtimes
