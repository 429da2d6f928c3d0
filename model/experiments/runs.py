"""One training run = one small committed JSON record; its per-epoch state is git-ignored scratch.

Contract: a `RunSpec` names everything a run's result depends on (dataset, k-core, model and
training configuration, seed). `execute(spec, data, record_path)` trains it resumably (the state
lives under runs/state/, deleted once the record is written), then writes the record atomically:
configs, the per-epoch validation curve, best epoch, valid and test metrics (unmasked and
masked), per-user test ranks (for paired tests and buckets), wall and CPU time, hardware, torch
version, date and code commit; never weights. `read_record(path, spec)` returns a record, None
when absent, and raises ValueError when the file was produced by another spec. Reports are built
from these records alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ..allocator import jemalloc_active
from ..config import ModelConfig
from ..train import RUN_ONLY_FIELDS, TrainConfig, train
from .hardware import hardware

RESULTS_DIR = Path("docs/results")  # committed: run records, tuning candidates, split facts
STATE_DIR = Path("runs/state")  # git-ignored: per-epoch training states of unfinished runs
DATASETS = {"ml-100k": 0, "ml-latest-small": 5, "instacart": 5}  # name -> k-core


@dataclass(frozen=True)
class RunSpec:
    dataset: str
    model: dict  # ModelConfig fields (kind included, n_items filled from the data)
    train: dict  # TrainConfig fields that change the result (seed included)
    label: str = ""  # what the run is for ("grid plr", "tuning plr r1-base", ...); not compared
    notes: dict = field(default_factory=dict, compare=False)

    @property
    def k_core(self) -> int:
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; one of {list(DATASETS)}")
        return DATASETS[self.dataset]

    def configs(self, n_items: int) -> tuple[ModelConfig, TrainConfig]:
        model_cfg = ModelConfig(**{**self.model, "n_items": n_items}).validate()
        return model_cfg, TrainConfig(**self.train).validate()

    def identity(self) -> dict:
        """The complete configuration (dataclass defaults filled in, n_items left out: it is the
        data's) that a stored record must match."""
        return _identity(self.dataset, self.k_core, self.model, self.train)


def _identity(dataset: str, k_core: int, model: dict, train_fields: dict) -> dict:
    model = {k: v for k, v in {**asdict(ModelConfig()), **model}.items() if k != "n_items"}
    train_fields = {k: v for k, v in {**asdict(TrainConfig()), **train_fields}.items()
                    if k not in RUN_ONLY_FIELDS}
    return {"dataset": dataset, "k_core": k_core, "model": model, "train": train_fields}


def _stored_identity(record: dict) -> dict:
    """A record's identity; config fields added after it was written count at their defaults
    (a field is only ever added with a default that keeps the old behaviour)."""
    return _identity(record["dataset"], record["k_core"], record["model_config"],
                     record["train_config"])


def read_record(path: Path, spec: RunSpec | None = None) -> dict | None:
    """The record at `path` (None if absent); ValueError if it was trained with another spec."""
    path = Path(path)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    if spec is not None and _stored_identity(record) != spec.identity():
        raise ValueError(f"{path} holds a run of another configuration than {spec.label!r}; "
                         "move it away or change the spec")
    return record


def write_json(path: Path, data) -> None:
    """Write via a temporary sibling and rename, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    os.replace(tmp, path)


def split_digest(pairs) -> str:
    """Short hash of the (prefix length, target) pairs: two runs pair up only if these match."""
    flat = np.array([[len(p), t] for p, t in pairs], dtype=np.int64)
    return hashlib.sha256(flat.tobytes()).hexdigest()[:16]


def split_facts(dataset, split) -> dict:
    """Per test user: history length and the target's training popularity (for the buckets)."""
    counts = np.bincount(np.concatenate(split.train), minlength=dataset.n_items + 1)
    return {"dataset": dataset.name, "n_users": len(split.test), "n_items": dataset.n_items,
            "split_digest": split_digest(split.test),
            "history_len": [len(p) for p, _ in split.test],
            "target_train_count": [int(counts[t]) for _, t in split.test]}


def code_commit() -> str | None:
    """The git commit of the code that ran (None outside a checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "model"],
                               capture_output=True, text=True, timeout=10,
                               cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def state_path(record_path: Path) -> Path:
    """Where an unfinished run keeps its per-epoch state: mirrors the record's path."""
    rel = Path(record_path).resolve().relative_to(RESULTS_DIR.resolve())
    return STATE_DIR / rel.with_suffix(".pt")


def execute(spec: RunSpec, data, record_path: Path, run_threads: int = 1,
            progress: bool = False, device: str = "cpu") -> dict:
    """Train `spec` (resuming a saved state), write its record to record_path, return it.
    run_threads, progress and device change how it runs, not what it computes."""
    dataset, split = data
    model_cfg, train_cfg = spec.configs(dataset.n_items)
    train_cfg = TrainConfig(**{**asdict(train_cfg), "num_threads": run_threads,
                               "progress": progress, "device": device})
    scratch = state_path(record_path)
    started = datetime.now(timezone.utc)
    model, metrics = train(model_cfg, train_cfg, dataset, split, state_path=scratch)
    record = {
        "dataset": spec.dataset, "k_core": spec.k_core, "label": spec.label, **spec.notes,
        "seed": train_cfg.seed, "model_config": model_cfg.to_dict(),
        "train_config": asdict(train_cfg),
        "valid": metrics["valid"], "test": metrics["test"],
        "best_epoch": metrics["best_epoch"], "epochs_run": metrics["epochs_run"],
        "history": metrics["history"],
        "train_s": metrics["train_s"], "cpu_s": metrics["cpu_s"],
        "time_to_best_s": metrics["time_to_best_s"], "s_per_epoch": metrics["s_per_epoch"],
        "resumed_from": metrics["resumed_from"],
        "params": sum(p.numel() for p in model.parameters()),
        "split_digest": split_digest(split.test),
        "test_ranks": metrics["test_ranks"], "test_masked_ranks": metrics["test_masked_ranks"],
        "produced": {"finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "started_piece": started.isoformat(timespec="seconds"),
                     "hardware": hardware(), "torch_threads": torch.get_num_threads(),
                     "loadavg_end": list(os.getloadavg()), "code": code_commit(),
                     "malloc": "jemalloc" if jemalloc_active() else "system"},
    }
    if model_cfg.kind == "plr" and model_cfg.n_streams > 1:
        from .analyses import stream_summary  # stream distances need the weights: now or never

        record["streams"] = stream_summary(model, split.test)
    write_json(record_path, record)
    scratch.unlink(missing_ok=True)
    return record
