"""A trained model as a directory: weights, configs, vocab, titles, popularity, metrics, version.

Contract: `save_checkpoint` writes into a temporary sibling directory and renames it into place,
so a reader never sees a half-written checkpoint. `version` = first 16 hex of sha256(weights
bytes + model config + vocab): same model -> same version. `load` rebuilds the model from the
files alone (eval mode) and raises ValueError naming the missing or corrupt file.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import ModelConfig
from .data import ItemVocab
from .registry import model_class

WEIGHTS, MODEL_CONFIG, TRAIN_CONFIG = "weights.pt", "model_config.json", "train_config.json"
VOCAB, TITLES, POPULARITY, METRICS, VERSION = (
    "vocab.json", "titles.json", "popularity.npy", "metrics.json", "version.txt"
)


@dataclass
class Checkpoint:
    model: nn.Module  # eval mode, on the requested device
    config: ModelConfig
    vocab: ItemVocab
    titles: dict[int, str]
    popularity: np.ndarray  # (n_items + 1,) training interaction counts, index 0 = padding
    metrics: dict
    train_config: dict
    version: str


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP / loss wrappers (anything exposing `.module` or `.model`)."""
    while not hasattr(model, "cfg") and (hasattr(model, "module") or hasattr(model, "model")):
        model = getattr(model, "module", None) or model.model
    return model


# Config options added after checkpoints were first published, with the value that means "as
# before": hashed only when set to something else, so adding an option never changes the version
# of (or invalidates) an existing checkpoint.
NEUTRAL_NEW_OPTIONS = {"trigger_std": 0.0, "dual_process": True}


def _versioned_config(config: ModelConfig) -> dict:
    data = config.to_dict()
    return {k: v for k, v in data.items()
            if not (k in NEUTRAL_NEW_OPTIONS and v == NEUTRAL_NEW_OPTIONS[k])}


def content_version(state_dict: dict, config: ModelConfig, vocab: ItemVocab) -> str:
    """sha256 over the tensors' raw bytes (sorted by name), the config JSON (options in
    NEUTRAL_NEW_OPTIONS left out at their neutral value) and the vocab JSON."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(_versioned_config(config), sort_keys=True).encode())
    digest.update(vocab.to_json().encode())
    return digest.hexdigest()[:16]


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_checkpoint(out_dir, model, vocab: ItemVocab, titles: dict | None, popularity,
                    train_config: dict, metrics: dict) -> str:
    """Write the checkpoint directory (replacing any old one); returns the version string."""
    model = unwrap(model)
    out_dir = Path(out_dir)
    if len(vocab) != model.cfg.n_items:
        raise ValueError(f"vocab has {len(vocab)} items but the model has {model.cfg.n_items}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    version = content_version(state, model.cfg, vocab)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        torch.save(state, tmp / WEIGHTS)
        _write_json(tmp / MODEL_CONFIG, model.cfg.to_dict())
        _write_json(tmp / TRAIN_CONFIG, train_config)
        (tmp / VOCAB).write_text(vocab.to_json())
        if titles:
            _write_json(tmp / TITLES, {str(k): v for k, v in titles.items()})
        np.save(tmp / POPULARITY, np.asarray(popularity, dtype=np.int64))
        _write_json(tmp / METRICS, metrics)
        (tmp / VERSION).write_text(version + "\n")
        _replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only left over if something above failed
    return version


def _replace_dir(new: Path, target: Path) -> None:
    # rename() cannot replace a non-empty directory: move the old one aside first, so the target
    # path is missing for an instant at most, never half-written.
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
    os.rename(new, target)
    if old is not None:
        shutil.rmtree(old)


def _read(path: Path, parse):
    if not path.is_file():
        raise ValueError(f"checkpoint file {path.name} is missing in {path.parent}")
    try:
        return parse(path)
    except (ValueError, KeyError, TypeError, OSError, RuntimeError, EOFError,
            pickle.UnpicklingError) as err:
        raise ValueError(f"checkpoint file {path.name} in {path.parent} is corrupt: {err}") from err


def _json(path: Path):
    return json.loads(path.read_text())


def _load_model(path: Path, config: ModelConfig) -> nn.Module:
    state = _read(path / WEIGHTS, lambda p: torch.load(p, map_location="cpu", weights_only=True))
    model = model_class(config.kind)(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"checkpoint file {WEIGHTS} does not match {MODEL_CONFIG}: {err}") from err
    return model


def checkpoint_dirs(models_dir: Path) -> list[Path]:
    """Every checkpoint directory under models_dir (hidden ones are in-progress writes)."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise ValueError(f"models directory {models_dir} does not exist (set PLR_MODELS_DIR)")
    dirs = sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise ValueError(f"no checkpoints in {models_dir}: train one first (see README)")
    return dirs


def load(path, device="cpu") -> Checkpoint:
    """Read a checkpoint directory written by `save_checkpoint`; the model is in eval mode."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"checkpoint directory {path} does not exist")
    config = _read(path / MODEL_CONFIG, lambda p: ModelConfig.from_dict(_json(p)))
    vocab = _read(path / VOCAB, lambda p: ItemVocab.from_json(p.read_text()))
    model = _load_model(path, config)
    version = _read(path / VERSION, lambda p: p.read_text().strip())
    if version != content_version(model.state_dict(), config, vocab):
        raise ValueError(f"checkpoint file {VERSION} does not match the weights, config and vocab "
                         f"in {path}: a file was changed or is corrupt")
    titles = {}
    if (path / TITLES).exists():
        titles = _read(path / TITLES, lambda p: {int(k): v for k, v in _json(p).items()})
    popularity = _read(path / POPULARITY, lambda p: np.load(p, allow_pickle=False))
    if popularity.shape != (config.n_items + 1,):
        raise ValueError(f"checkpoint file {POPULARITY} has shape {popularity.shape}, "
                         f"expected ({config.n_items + 1},)")
    return Checkpoint(
        model=model.to(device).eval(), config=config, vocab=vocab, titles=titles,
        popularity=popularity, metrics=_read(path / METRICS, _json),
        train_config=_read(path / TRAIN_CONFIG, _json),
        version=version,
    )
