"""Unfinished runs carried from one machine to the next: their per-epoch training states, parked
in the repository when a session stops and restored when the queue starts again.

Why: a PLR or ReaRec run takes one to two hours of one core, a session stops after a few, and
the next may start on a fresh machine with only what was committed. The per-epoch states live
in git-ignored runs/state/ (model/experiments/runs.py), so every session boundary used to lose
every run in flight, and the same runs restarted from epoch 1 session after session.

Contract (paths relative to the working directory, as the queue runs them):
- `park()` copies the state of every unfinished run (no record yet) from runs/state/ to
  docs/results/parked/ (same relative path, ~3 MB each, written atomically), removes parked
  copies of runs that have a record now, and returns the paths it wrote and removed, to commit.
  Run it with the workers paused or stopped (`python -m model.experiments.queue --park
  --commit`): a state is replaced atomically, so a copy is never torn, but a running worker may
  write a newer one right after.
- `unpark()` copies a parked state back to runs/state/ where the run has no record and this
  machine has no state of its own (a local state is at least as new as what this machine
  parked); the queue calls it when it starts. A run then resumes at the epoch after the parked
  one, exactly as it would have on the machine that parked it (train.py's resume contract).
- `drop(record_path)`: the parked copy of a run that just got its record, removed (its path
  returned when there was one), so the commit of the record also removes the copy.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .runs import RESULTS_DIR, STATE_DIR

PARKED_DIR = RESULTS_DIR / "parked"


def _record_of(rel: Path, results_dir: Path) -> Path:
    return results_dir / rel.with_suffix(".json")


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def park(state_dir: Path = STATE_DIR, results_dir: Path = RESULTS_DIR,
         parked_dir: Path = PARKED_DIR) -> list[Path]:
    """Copy unfinished runs' states into parked_dir; drop parked copies of finished runs."""
    changed = []
    for state in sorted(Path(state_dir).rglob("*.pt")):
        rel = state.relative_to(state_dir)
        if _record_of(rel, results_dir).exists():
            continue  # finished (its state is about to be deleted): nothing to carry
        _copy(state, Path(parked_dir) / rel)
        changed.append(Path(parked_dir) / rel)
    for parked in sorted(Path(parked_dir).rglob("*.pt")):
        if _record_of(parked.relative_to(parked_dir), results_dir).exists():
            parked.unlink()
            changed.append(parked)
    return changed


def unpark(state_dir: Path = STATE_DIR, results_dir: Path = RESULTS_DIR,
           parked_dir: Path = PARKED_DIR) -> list[Path]:
    """Restore parked states of unfinished runs that this machine has no state for."""
    restored = []
    for parked in sorted(Path(parked_dir).rglob("*.pt")):
        rel = parked.relative_to(parked_dir)
        local = Path(state_dir) / rel
        if _record_of(rel, results_dir).exists() or local.exists():
            continue
        _copy(parked, local)
        restored.append(local)
    return restored


def drop(record_path: Path, results_dir: Path = RESULTS_DIR,
         parked_dir: Path = PARKED_DIR) -> list[Path]:
    """Remove the parked copy of the run whose record is `record_path`; its path, if any."""
    try:
        rel = Path(record_path).resolve().relative_to(Path(results_dir).resolve())
    except ValueError:  # not a record of results_dir: nothing of it can be parked there
        return []
    parked = Path(parked_dir) / rel.with_suffix(".pt")
    if not parked.exists():
        return []
    parked.unlink()
    return [parked]
