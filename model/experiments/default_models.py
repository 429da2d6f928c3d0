"""Train the default serving checkpoints: SASRec and PLR on MovieLens-100K, with the validated recipes.

`python -m model.experiments.default_models --out artifacts/models` writes `<out>/sasrec` and
`<out>/plr` (the directories the server loads by default). Each is its family's recipe
(model/experiments/recipes.py: chosen on seed-2020 validation of ml-100k with an equal tuning
budget, docs/tuning.md) trained on seed 2020, i.e. the grid's seed-2020 run again: the seed the
recipe was chosen on, fixed before any test number was read (choosing the seed by its test
score would report a lucky draw). Training is deterministic on one thread of one machine, so the
checkpoint's test metrics reproduce that run's record (docs/results/runs/ml-100k/<name>/
seed2020.json); both are printed and the record's numbers are kept in the checkpoint's metrics.
Interrupted training resumes from its per-epoch state (runs/state/serving/<name>.pt). An existing
checkpoint is kept unless --force. The protocol's context is max_len 50; longer histories are
served with the window rule of plr-method.md s.5.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch

from ..checkpoint import save_checkpoint
from ..train import TrainConfig, load_data, train
from .queue import grid_path
from .recipes import TUNING_DATASET, TUNING_SEED, recipe
from .runs import STATE_DIR, RunSpec, read_record

SERVING_MODELS = ("sasrec", "plr")


def serving_spec(name: str, seed: int = TUNING_SEED) -> RunSpec:
    """The serving run of `name`: its recipe on ml-100k at `seed`. ValueError before the recipe
    exists (a family's tuning candidates have not all run)."""
    found = recipe(name)
    if found is None:
        raise ValueError(f"no validated recipe for {name!r} yet: its tuning candidates have not "
                         "all run (python -m model.experiments.queue)")
    model_fields, train_fields = found
    return RunSpec(TUNING_DATASET, model_fields, {**train_fields, "seed": seed},
                   label=f"serving {name}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="artifacts/models")
    parser.add_argument("--seed", type=int, default=TUNING_SEED)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (the grid's records were trained on 1)")
    parser.add_argument("--force", action="store_true", help="retrain even if a checkpoint exists")
    parser.add_argument("--models", type=lambda s: s.split(","), default=list(SERVING_MODELS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    specs = {name: serving_spec(name, args.seed) for name in args.models}  # fail before training
    dataset, split = load_data(TUNING_DATASET)
    for name, spec in specs.items():
        out = Path(args.out) / name
        if (out / "version.txt").exists() and not args.force:
            print(f"{out}: exists, kept (use --force to retrain)")
            continue
        print(f"training the default {name} checkpoint ({spec.model}, {spec.train}) -> {out}")
        model_cfg, train_cfg = spec.configs(dataset.n_items)
        train_cfg = TrainConfig(**{**asdict(train_cfg), "num_threads": args.threads,
                                   "progress": False})
        state = STATE_DIR / "serving" / f"{name}-seed{args.seed}.pt"
        model, metrics = train(model_cfg, train_cfg, dataset, split, state_path=state)
        record = grid_path(TUNING_DATASET, name, args.seed)
        try:
            grid = read_record(record, spec)
        except ValueError as exc:  # the grid ran another recipe (records changed since)
            print(f"not compared with the grid's run: {exc}")
            grid = None
        if grid is not None:
            metrics["grid_record"] = {"path": str(record), "test": grid["test"],
                                      "best_epoch": grid["best_epoch"]}
        provenance = {"dataset": TUNING_DATASET, "k_core": spec.k_core, "dedupe": "keep_all",
                      "torch": torch.__version__, "script": "model.experiments.default_models",
                      "recipe": {"model": spec.model, "train": spec.train}}
        version = save_checkpoint(out, model, dataset.vocab, dataset.titles, dataset.popularity,
                                  {**asdict(train_cfg), **provenance}, metrics)
        state.unlink(missing_ok=True)
        print(json.dumps({"model": name, "version": version, "best_epoch": metrics["best_epoch"],
                          "test": metrics["test"],
                          "grid_record_test": grid["test"] if grid else None}, indent=2))


if __name__ == "__main__":
    main()
