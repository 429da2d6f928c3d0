"""SASRec on MovieLens-100K under the reference protocol, 3 seeds, against RecBole's numbers.

Writes runs/sasrec-baseline/seed{S}.json (+ checkpoint dir) per seed, then docs/sasrec-reference.json
and docs/sasrec-reference.md. Resumable: a seed whose JSON exists is read back, not retrained, and a JSON
from a different recipe is an error (use another --runs-dir). The recipe is the protocol of
plr-method.md s.4; options such as --dropout deviate from it and are listed in the report.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import asdict, fields, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import save_checkpoint
from ..config import ModelConfig
from .hardware import hardware
from ..train import TrainConfig, load_data, train

SEEDS = (2020, 2021, 2022)
METRICS = ("ndcg@10", "recall@10", "ndcg@20", "recall@20")
RECBOLE = {"ndcg@10": 0.0640, "recall@10": 0.1357, "ndcg@20": 0.0876, "recall@20": 0.2291}
RECBOLE_GRU4REC_NDCG10 = 0.0694
RECBOLE_TIME = "~18 epochs x ~2 min = ~36 min to the best epoch (RecBole 1.2.1, seed 2020)"

# The reference protocol (plr-method.md s.1, s.4); --dropout etc. override it, listed as deviations.
MODEL = ModelConfig(kind="sasrec", d_model=64, n_layers=2, n_heads=2, d_ff=256, dropout=0.2,
                    max_len=50, temperature=1.0)
TRAIN = TrainConfig(epochs=400, patience=10, batch_size=256, lr=1e-3, weight_decay=0.0,
                    metric="ndcg@10", stride=50)
TUNABLE = {"dropout": MODEL, "temperature": MODEL, "stride": TRAIN, "weight_decay": TRAIN,
           "batch_size": TRAIN, "lr": TRAIN, "min_epochs": TRAIN, "ema_decay": TRAIN,
           "lr_schedule": TRAIN, "epochs": TRAIN}
ALWAYS_NOTES = [
    "Training is sequence-to-sequence over windows of up to 51 items cut from the end of each "
    "training sequence (every target exactly once per epoch, cuts re-drawn each epoch; "
    "model/batches.py); RecBole trains one row per prefix. A batch is that many windows, not "
    "prefixes.",
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m model.experiments.sasrec_baseline",
                                description=__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--runs-dir", default="runs/sasrec-baseline")
    p.add_argument("--results-md", default="docs/sasrec-reference.md")
    p.add_argument("--results-json", default="docs/sasrec-reference.json")
    p.add_argument("--num-threads", type=int, default=0, help="0 = all cores")
    p.add_argument("--device", default="auto")
    p.add_argument("--progress", action="store_true", help="show per-batch progress bars")
    for name, base in TUNABLE.items():
        p.add_argument("--" + name.replace("_", "-"), type=type(getattr(base, name)),
                       default=getattr(base, name), help="recipe deviation (choose on validation)")
    p.add_argument("--note", action="append", default=[],
                   help="how a deviation was chosen (validation evidence), repeatable")
    return p.parse_args(argv)


def configs(args) -> tuple[ModelConfig, TrainConfig]:
    pick = lambda base: {k: getattr(args, k) for k, b in TUNABLE.items() if b is base}  # noqa: E731
    return replace(MODEL, **pick(MODEL)), replace(TRAIN, **pick(TRAIN))


def deviations(args) -> list[str]:
    return [f"{name}: {getattr(base, name)} -> {getattr(args, name)}"
            for name, base in TUNABLE.items() if getattr(args, name) != getattr(base, name)]


def recipe(args) -> dict:
    model_cfg, train_cfg = configs(args)
    skip = ("seed", "device", "num_threads", "progress")
    return {"dataset": "ml-100k", "k_core": 0, "dedupe": "keep_all", "model": model_cfg.to_dict(),
            "train": {k: v for k, v in asdict(train_cfg).items() if k not in skip}}


def same_recipe(stored: dict, current: dict) -> bool:
    """stored == current, where a config field the stored record predates counts as its default
    (a field is only ever added with a default that keeps the old behaviour)."""
    filled = dict(stored)
    for part, cls in (("model", ModelConfig), ("train", TrainConfig)):
        defaults = {f.name: f.default for f in fields(cls)}
        missing = {k: defaults[k] for k in current[part] if k not in stored[part] and k in defaults}
        filled[part] = {**missing, **stored[part]}
    return filled == current


def run_seed(seed: int, args, data) -> dict:
    """Train one seed (or read it back) and return its result record."""
    path = Path(args.runs_dir) / f"seed{seed}.json"
    if path.exists():
        record = json.loads(path.read_text())
        if not same_recipe(record["recipe"], recipe(args)):
            raise ValueError(f"{path} was trained with another recipe; use another --runs-dir")
        print(f"seed {seed}: read back from {path}", file=sys.stderr)
        return record
    dataset, split = data
    model_cfg, train_cfg = configs(args)
    tc = replace(train_cfg, seed=seed, device=args.device, num_threads=args.num_threads,
                 progress=args.progress)
    model, metrics = train(model_cfg, tc, dataset, split)
    version = save_checkpoint(Path(args.runs_dir) / f"seed{seed}", model, dataset.vocab,
                              dataset.titles, dataset.popularity,
                              {**asdict(tc), "dataset": "ml-100k"}, metrics)
    record = {"seed": seed, "recipe": recipe(args), "version": version, **metrics}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record) + "\n")
    return record


def aggregate(records: list[dict]) -> dict:
    """mean and sample std over seeds of every test metric (unmasked and masked)."""
    out = {}
    for name in [*METRICS, *(f"masked_{m}" for m in METRICS)]:
        values = np.array([r["test"][name] for r in records])
        out[name] = {"mean": float(values.mean()),
                     "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
    return out


def _fmt(stat: dict) -> str:
    return f"{stat['mean']:.4f} +- {stat['std']:.4f}"


def render_markdown(report: dict) -> str:
    agg, seeds, hw = report["aggregate"], report["seeds"], report["hardware"]
    lines = [
        "# Results", "",
        "## SASRec on MovieLens-100K (reference protocol)", "",
        "All 100,000 interactions, no k-core, per-user stable time order, leave-one-out, full "
        "ranking over all 1,682 items, last 50 items as context, selection on validation "
        "NDCG@10 (patience 10), test at the best validation epoch. Unmasked is the primary "
        "number; masked (items already in the history set to -inf) is beside it. Ranks count "
        "ties against the model.", "",
        "| | NDCG@10 | Recall@10 | NDCG@20 | Recall@20 |", "|---|---|---|---|---|",
        f"| **ours, mean +- std ({len(seeds)} seeds), unmasked** | "
        + " | ".join(_fmt(agg[m]) for m in METRICS) + " |",
        "| RecBole 1.2.1 SASRec (seed 2020), unmasked | "
        + " | ".join(f"{RECBOLE[m]:.4f}" for m in METRICS) + " |",
        "| ours / RecBole | " + " | ".join(
            f"{agg[m]['mean'] / RECBOLE[m]:.3f}x" for m in METRICS) + " |",
        "| ours, masked | " + " | ".join(_fmt(agg[f"masked_{m}"]) for m in METRICS) + " |",
        "", f"RecBole GRU4Rec on the same protocol: NDCG@10 {RECBOLE_GRU4REC_NDCG10:.4f}.", "",
        "Per seed (test; masked in parentheses):", "",
        "| seed | NDCG@10 | Recall@10 | NDCG@20 | Recall@20 | best epoch | epochs run | "
        "time to best | s/epoch |", "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in seeds:
        t = r["test"]
        lines.append(f"| {r['seed']} | " + " | ".join(
            f"{t[m]:.4f} ({t['masked_' + m]:.4f})" for m in METRICS)
            + f" | {r['best_epoch']} | {r['epochs_run']} | {r['time_to_best_s'] / 60:.1f} min"
            f" | {r['s_per_epoch']:.1f} |")
    lines += [
        "", f"Wall time to the best epoch: {report['time_to_best_min']:.1f} min mean over seeds "
        f"(ours, hardware below) vs RecBole {RECBOLE_TIME}.", "",
        "Deviations from the reference protocol (settings chosen on validation, never on test):",
        "",
        *[f"- {d}" for d in report["deviations"] or ["(no hyperparameter deviations)"]],
        *[f"- {note}" for note in report["recipe_notes"]], "",
        f"Hardware: {hw['cpu']}, {hw['cores']} cores"
        + (f", GPU {hw['gpu']}" if hw["gpu"] else ", no GPU")
        + f" (shared with other jobs while it ran); torch {hw['torch']}, Python {hw['python']}. "
        f"Date: {report['date']}.", "",
        f"Reproduce (resumable; finished seeds are read back from {report['runs_dir']}/):", "",
        "```", report["command"], "```", "",
        f"Per-user test ranks of every seed are in {report['results_json']} (for paired tests).",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    data = load_data("ml-100k")
    records = [run_seed(seed, args, data) for seed in args.seeds]
    report = {
        "seeds": [{k: v for k, v in r.items() if k != "history"} for r in records],
        "aggregate": aggregate(records), "recbole": RECBOLE,
        "recbole_gru4rec_ndcg@10": RECBOLE_GRU4REC_NDCG10, "recipe": recipe(args),
        "deviations": deviations(args), "recipe_notes": ALWAYS_NOTES + args.note,
        "time_to_best_min": float(np.mean([r["time_to_best_s"] for r in records]) / 60),
        "hardware": hardware(), "runs_dir": args.runs_dir, "results_json": args.results_json,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "command": "python -m model.experiments.sasrec_baseline "
                   + shlex.join(argv if argv is not None else sys.argv[1:]),
    }
    Path(args.results_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results_json).write_text(json.dumps(report, indent=1) + "\n")
    Path(args.results_md).write_text(render_markdown(report))
    print(render_markdown(report))
    return report


if __name__ == "__main__":
    main()
