"""Four analyses of PLR on MovieLens-100K: robustness, stream distances, width x depth, ablations.

`python -m model.experiments.analyses` writes docs/analyses.md, docs/analyses.json and PNGs under
docs/analyses/. Robustness and stream distances only evaluate the given checkpoints (seconds, no
training; runs/analyses/robustness.json and streams.json). Width x depth and the ablations train
with `model.train.train` on the default PLR's recipe (read from its checkpoint's JSON files); each
(variant, seed) saves runs/analyses/<dataset>/<key>/seed<S>.json when it ends, so an interrupted
run resumes, and a saved run from another recipe is an error, never mixed in. `--report-only`
rebuilds the report from the JSONs that exist and names every cell that is missing.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import asdict, fields
from datetime import date
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..batches import eval_batch
from ..checkpoint import MODEL_CONFIG, TRAIN_CONFIG, load
from ..config import ModelConfig
from ..evaluate import evaluate
from ..reasoning import reason
from ..train import TrainConfig, load_data, train
from .hardware import hardware

ANALYSES = ("robustness", "streams", "width_depth", "ablations")
DATASET, K_CORE = "ml-100k", 0  # the split the default checkpoints were trained on
CHECKPOINTS = {"plr": Path("artifacts/models/plr"), "sasrec": Path("artifacts/models/sasrec")}
DROP_FRACTION = 0.3  # plr-method.md s.3.11
CORRUPTION_SEEDS = (0, 1, 2, 3, 4)  # several draws: one draw's luck should not be the result
SEEDS = (2020, 2021, 2022)
GRID_STREAMS, GRID_STEPS = (1, 2, 4), (1, 2, 3)
ABLATIONS = {  # name -> model config changes against the full default PLR
    "full PLR": {},
    "no gate (mean of streams)": {"use_gate": False},
    "no GRR": {"grr_weight": 0.0},
    "no RCL": {"rcl_weight": 0.0},
}
TOP_K = 10


# -- 1. robustness: the corrupted split ------------------------------------------------------------
def drop_history(prefix: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """`prefix` without round(fraction * len) of its items chosen uniformly at random.

    The kept items stay in their order, and at least one item is always kept (a history of one
    item is returned whole).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"drop fraction must be in [0, 1), got {fraction}")
    n = len(prefix)
    n_drop = min(int(fraction * n + 0.5), n - 1)  # round half up; never empty the history
    keep = np.ones(n, dtype=bool)
    keep[rng.choice(n, size=n_drop, replace=False)] = False
    return prefix[keep]


def corrupt_pairs(pairs, eval_users, fraction: float, seed: int) -> list[tuple[np.ndarray, int]]:
    """The same (prefix, target) pairs with `fraction` of each prefix dropped; targets unchanged.

    The dropped positions depend only on (seed, user index), never on the model or on the order
    of `pairs`, so every model is scored on exactly the same corrupted histories.
    """
    if len(pairs) != len(eval_users):
        raise ValueError(f"{len(pairs)} pairs but {len(eval_users)} users")
    return [(drop_history(prefix, fraction, np.random.default_rng([seed, int(user)])), target)
            for (prefix, target), user in zip(pairs, eval_users)]


def check_checkpoint(ckpt, dataset) -> None:
    """ValueError unless the checkpoint was trained on this split (same data, same item indices)."""
    tc = ckpt.train_config
    if tc.get("dataset") != DATASET or tc.get("k_core", 0) != K_CORE:
        raise ValueError(f"checkpoint trained on {tc.get('dataset')!r} k-core {tc.get('k_core')}, "
                         f"the analyses evaluate {DATASET} k-core {K_CORE}")
    if ckpt.vocab != dataset.vocab:
        raise ValueError("checkpoint vocabulary differs from the dataset's: item indices differ")


def history_stats(clean, corrupted, max_len: int = 50) -> dict:
    """Mean history length and mean model window (last max_len items) before and after dropping.

    Why the window: a model sees only its last max_len items, so on long histories dropping
    items mostly pulls older items into the window rather than shortening it.
    """
    before = np.array([len(p) for p, _ in clean], dtype=float)
    after = np.array([len(p) for p, _ in corrupted], dtype=float)
    return {"max_len": max_len, "mean_len": float(before.mean()),
            "mean_len_corrupted": float(after.mean()),
            "mean_window": float(np.minimum(before, max_len).mean()),
            "mean_window_corrupted": float(np.minimum(after, max_len).mean()),
            "share_full_window_corrupted": float((after >= max_len).mean())}


def robustness(name: str, path: Path, data, fraction: float, seeds) -> dict:
    """Test metrics of one checkpoint on clean and on corrupted histories (one per seed)."""
    dataset, split = data
    ckpt = load(path)
    check_checkpoint(ckpt, dataset)
    clean = evaluate(ckpt.model, split.test)
    corrupted = [evaluate(ckpt.model, corrupt_pairs(split.test, split.eval_users, fraction, s))
                 for s in seeds]
    return {
        "model": name, "checkpoint": str(path), "version": ckpt.version, "kind": ckpt.config.kind,
        "drop_fraction": fraction, "corruption_seeds": list(seeds), "n_users": len(split.test),
        "clean": clean.metrics, "checkpoint_test": ckpt.metrics.get("test", {}),
        "corrupted": [r.metrics for r in corrupted],
        "clean_ranks": clean.ranks.tolist(),
        "corrupted_ranks": [r.ranks.tolist() for r in corrupted],
    }


# -- 2. stream distances ---------------------------------------------------------------------------
def stream_divergence(vectors: Tensor, logits_fn, k: int = TOP_K) -> dict[str, Tensor]:
    """Per-user disagreement of M stream vectors (U, M, D), M >= 2; each value (U,).

    cosine: mean over pairs a < b of 1 - cos(v_a, v_b); l2: mean ||v_a - v_b||; kl: mean over
    ordered pairs a != b of KL(p_a || p_b), p = softmax(logits_fn(v)) over the real items (the
    distributions GRR pushes apart); topk_identical: share of pairs whose top-k item sets are
    equal; topk_overlap: mean |top-k_a & top-k_b| / k. Identical streams give 0, 0, 0, 1, 1.
    """
    m = vectors.shape[1]
    if m < 2:
        raise ValueError("stream distances need at least 2 streams")
    a, b = torch.triu_indices(m, m, offset=1, device=vectors.device)  # unordered pairs a < b
    unit = torch.nn.functional.normalize(vectors, dim=-1)
    cosine = 1.0 - (unit[:, a] * unit[:, b]).sum(-1)  # (U, P)
    l2 = (vectors[:, a] - vectors[:, b]).norm(dim=-1)
    logits = logits_fn(vectors)  # (U, M, V)
    log_p = torch.log_softmax(logits, dim=-1)
    # KL(p_a || p_b) = sum p_a log p_a - sum p_a log p_b, all ordered pairs from one matmul.
    cross = log_p.exp() @ log_p.transpose(-1, -2)  # (U, M, M): [a, b] = sum_v p_a log p_b
    kl = torch.diagonal(cross, dim1=-2, dim2=-1).unsqueeze(-1) - cross  # zero diagonal
    kl_mean = kl.sum((-1, -2)) / (m * (m - 1))
    top = logits.topk(k, dim=-1).indices  # (U, M, k)
    shared = (top[:, a].unsqueeze(-1) == top[:, b].unsqueeze(-2)).any(-1).sum(-1)  # (U, P)
    return {"cosine": cosine.mean(1), "l2": l2.mean(1), "kl": kl_mean,
            "topk_identical": (shared == k).float().mean(1),
            "topk_overlap": shared.float().mean(1) / k}


@torch.no_grad()
def reasoning_states(model, prefixes, batch_size: int = 256):
    """Yield (h0 (B, D), states (B, M, T, D), gate (B, M)) of a PLR model, eval mode, in chunks.

    The states come from the model's own inference-form reasoning (`model.reasoning.reason`
    through the encoder), on each prefix's last max_len items: what serving computes.
    """
    if not hasattr(model, "triggers"):
        raise ValueError(f"stream distances need a PLR model, got kind {model.cfg.kind!r}")
    device = next(model.parameters()).device
    model.eval()
    for lo in range(0, len(prefixes), batch_size):
        item_ids, seq_lens = eval_batch(prefixes[lo : lo + batch_size], model.cfg.max_len)
        item_ids, seq_lens = item_ids.to(device), seq_lens.to(device)
        hidden, kv = model.encoder.encode(item_ids, seq_lens)
        h0 = model.encoder.last_hidden(hidden, seq_lens)
        states = reason(model.encoder, h0, kv, seq_lens, model.triggers, model.reason_pos)
        _, gate, _ = model.fuse(h0, states)
        yield h0, states, gate


def _mean_over_users(chunks: list[dict[str, Tensor]]) -> dict[str, float]:
    return {name: float(torch.cat([c[name] for c in chunks]).mean()) for name in chunks[0]}


def item_logits(model, vectors: Tensor) -> Tensor:
    """Logits over the real items (padding dropped) as GRR sees them: scores / temperature."""
    return model.encoder.scores(vectors)[..., 1:] / model.cfg.temperature


@torch.no_grad()
def stream_summary(model, pairs, batch_size: int = 256) -> dict:
    """Stream disagreement averaged over the users of `pairs`: at the start h0 + tau_m (t = 0),
    per reasoning step t = 1..T, and for the scored stream vectors h0 + z_m; plus a scale
    reference (each user's stream-1 state at step T against the previous user's), the mean
    gate weights and the mean state norm per step."""
    def divergence(vectors: Tensor) -> dict[str, Tensor]:
        return stream_divergence(vectors, lambda v: item_logits(model, v))

    n_steps = model.cfg.n_steps
    per_step = [[] for _ in range(n_steps)]
    start, scored, last, gates, norms = [], [], [], [], []
    for h0, states, gate in reasoning_states(model, [p for p, _ in pairs], batch_size):
        start.append(divergence(h0.unsqueeze(1) + model.triggers))
        for t in range(n_steps):
            per_step[t].append(divergence(states[:, :, t]))
        scored.append(divergence(h0.unsqueeze(1) + states.mean(dim=2)))
        last.append(states[:, 0, -1])
        gates.append(gate)
        norms.append(states.norm(dim=-1).mean(dim=1))  # (B, T)
    last = torch.cat(last)  # (U, D)
    users = torch.stack([last, last.roll(1, dims=0)], dim=1)  # (U, 2, D): user u and user u-1
    between = [divergence(users[lo : lo + batch_size]) for lo in range(0, len(users), batch_size)]
    return {
        "n_users": len(pairs), "n_streams": model.cfg.n_streams, "n_steps": n_steps, "top_k": TOP_K,
        "start": _mean_over_users(start),
        "steps": [{"step": t + 1, **_mean_over_users(per_step[t])} for t in range(n_steps)],
        "scored": _mean_over_users(scored), "between_users": _mean_over_users(between),
        "gate_mean": torch.cat(gates).mean(0).tolist(),
        "state_norm": torch.cat(norms).mean(0).tolist(),
    }


def streams(name: str, path: Path, data) -> dict:
    dataset, split = data
    ckpt = load(path)
    check_checkpoint(ckpt, dataset)
    return {"model": name, "checkpoint": str(path), "version": ckpt.version,
            **stream_summary(ckpt.model, split.test)}


# -- 3 and 4. training runs ------------------------------------------------------------------------
def saved_config(checkpoint_dir: Path) -> dict:
    """A checkpoint's model config fields, read without loading its weights."""
    return json.loads((Path(checkpoint_dir) / MODEL_CONFIG).read_text())


def base_recipe(checkpoint_dir: Path) -> tuple[dict, dict]:
    """(model config fields without n_items, TrainConfig fields) the checkpoint was trained with.

    Read from its JSON files alone (no weights); provenance keys that are not TrainConfig fields
    (dataset, torch version, ...) are dropped.
    """
    model_fields = saved_config(checkpoint_dir)
    model_fields.pop("n_items", None)
    train_fields = json.loads((checkpoint_dir / TRAIN_CONFIG).read_text())
    known = {f.name for f in fields(TrainConfig)}
    return model_fields, {k: v for k, v in train_fields.items() if k in known}


def width_depth_cells(base_model: dict) -> dict[str, dict]:
    """Cell name "M=m, T=t" -> model config fields, for the width x depth grid."""
    return {f"M={m}, T={t}": {**base_model, "n_streams": m, "n_steps": t}
            for m in GRID_STREAMS for t in GRID_STEPS}


def ablation_cells(base_model: dict) -> dict[str, dict]:
    return {name: {**base_model, **change} for name, change in ABLATIONS.items()}


def run_key(model_fields: dict) -> str:
    """Directory name of a variant; equal configs share it (full PLR == the grid's M=2, T=2)."""
    key = f"M{model_fields['n_streams']}-T{model_fields['n_steps']}"
    key += "" if model_fields.get("use_gate", True) else "-nogate"
    key += "" if model_fields.get("grr_weight", 0.1) > 0 else "-nogrr"
    key += "" if model_fields.get("rcl_weight", 1.0) > 0 else "-norcl"
    return key


def run_path(runs_dir: Path, dataset_name: str, model_fields: dict, seed: int) -> Path:
    return runs_dir / dataset_name / run_key(model_fields) / f"seed{seed}.json"


def train_cell(model_fields: dict, train_fields: dict, seed: int, data,
               max_epochs: int | None = None, progress: bool = False) -> dict:
    """Train one variant with one seed; its metrics, per-user test ranks and stream distances."""
    dataset, split = data
    model_cfg = ModelConfig(**{**model_fields, "n_items": dataset.n_items})
    overrides = {"seed": seed, "progress": progress}
    if max_epochs:
        overrides["epochs"] = max_epochs
    train_cfg = TrainConfig(**{**train_fields, **overrides})
    model, metrics = train(model_cfg, train_cfg, dataset, split)
    return {
        "key": run_key(model_fields), "seed": seed, "model_config": model_cfg.to_dict(),
        "train_config": asdict(train_cfg), "valid": metrics["valid"], "test": metrics["test"],
        "best_epoch": metrics["best_epoch"], "epochs_run": metrics["epochs_run"],
        "train_s": metrics["train_s"], "s_per_epoch": metrics["s_per_epoch"],
        "test_ranks": metrics["test_ranks"],
        "streams": stream_summary(model, split.test) if model_cfg.n_streams > 1 else None,
    }


def write_json(path: Path, data) -> None:
    """Write via a temporary sibling and rename, so a reader never sees half a run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def read_json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


# Training settings a run may differ in and still count for its cell: the seed, the epoch cap
# (--max-epochs; the report shows each cell's cap) and how it ran, not what it learned.
FREE_TRAIN_FIELDS = ("seed", "epochs", "progress", "num_threads", "device", "eval_batch_size")


def existing_run(path: Path, model_fields: dict, train_fields: dict) -> dict | None:
    """The run JSON at `path` (None if absent); ValueError if it was trained with another recipe,
    so a changed base checkpoint never silently mixes with old runs."""
    run = read_json(path)
    if run is None:
        return None
    # Compare complete configs (dataclass defaults filled in), n_items aside: it is the data's.
    wanted = ModelConfig(**{**model_fields, "n_items": 1}).to_dict()
    differ = sorted(k for k, v in wanted.items()
                    if k != "n_items" and run["model_config"].get(k) != v)
    differ += sorted(k for k, v in asdict(TrainConfig(**train_fields)).items()
                     if k not in FREE_TRAIN_FIELDS and run["train_config"].get(k) != v)
    if differ:
        raise ValueError(f"{path} was trained with another recipe (fields {differ}); "
                         "move it away or use another --runs-dir")
    return run


def load_cells(cells: dict[str, dict], train_fields: dict, runs_dir: Path, dataset_name: str,
               seeds) -> dict:
    """Cell name -> {"key", "fields", "runs": the seeds' run JSONs that exist}."""
    def runs(model_fields: dict) -> list[dict]:
        found = [existing_run(run_path(runs_dir, dataset_name, model_fields, s), model_fields,
                              train_fields) for s in seeds]
        return [r for r in found if r is not None]

    return {name: {"key": run_key(f), "fields": f, "runs": runs(f)} for name, f in cells.items()}


# -- command line ----------------------------------------------------------------------------------
def provenance(args) -> dict:
    """When, how and where a result was produced: stored with every result and in the report."""
    return {"date": date.today().isoformat(), "command": args.command, "hardware": hardware(),
            "torch_threads": torch.get_num_threads()}


def run_training(cells: dict[str, dict], base_train: dict, data, args) -> None:
    """Train every missing (cell, seed), seed-major; each run's JSON is written when it ends."""
    for seed in args.seeds:
        for name, model_fields in cells.items():
            path = run_path(args.runs_dir, DATASET, model_fields, seed)
            if existing_run(path, model_fields, base_train):
                continue
            print(f"training {name} ({run_key(model_fields)}) seed {seed} -> {path}", flush=True)
            result = train_cell(model_fields, base_train, seed, data, args.max_epochs,
                                not args.no_progress)
            write_json(path, {**result, "produced": provenance(args)})
            write_report(args)


def run_evaluations(args, data) -> None:
    """Analyses 1 and 2 on the given checkpoints (seconds each); results under runs-dir."""
    if "robustness" in args.only:
        results = {name: robustness(name, path, data, args.drop_fraction, args.corruption_seeds)
                   for name, path in args.checkpoints.items()}
        corrupted = corrupt_pairs(data[1].test, data[1].eval_users, args.drop_fraction,
                                  args.corruption_seeds[0])
        max_len = min(saved_config(p)["max_len"] for p in args.checkpoints.values())
        write_json(args.runs_dir / "robustness.json", {
            "models": results, "histories": history_stats(data[1].test, corrupted, max_len),
            "produced": provenance(args)})
    if "streams" in args.only:
        plr = {n: p for n, p in args.checkpoints.items() if saved_config(p)["kind"] == "plr"}
        results = {name: streams(name, path, data) for name, path in plr.items()}
        write_json(args.runs_dir / "streams.json",
                   {"models": results, "produced": provenance(args)})


def collect(args) -> dict:
    """Everything the report shows, read from runs-dir (missing pieces are None or empty)."""
    base_model, base_train = base_recipe(args.base)
    where = (base_train, args.runs_dir, DATASET, args.seeds)
    return {
        "robustness": read_json(args.runs_dir / "robustness.json"),
        "streams": read_json(args.runs_dir / "streams.json"),
        "width_depth": load_cells(width_depth_cells(base_model), *where),
        "ablations": load_cells(ablation_cells(base_model), *where),
        "seeds": list(args.seeds), "base": str(args.base), "produced": provenance(args),
        "grid": (GRID_STREAMS, GRID_STEPS),
    }


def write_report(args) -> None:
    from .analyses_report import render  # plotting pulls in matplotlib: only when writing

    render(collect(args), args.out)


def parse_checkpoints(text: str) -> dict[str, Path]:
    """"name=dir,name=dir" -> {name: Path(dir)}."""
    pairs = [item.split("=", 1) for item in text.split(",") if item]
    if any(len(p) != 2 for p in pairs):
        raise argparse.ArgumentTypeError(f"expected name=dir[,name=dir...], got {text!r}")
    return {name: Path(path) for name, path in pairs}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m model.experiments.analyses",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--only", type=lambda s: s.split(","), default=list(ANALYSES),
                        help=f"comma-separated subset of {','.join(ANALYSES)}")
    parser.add_argument("--checkpoints", type=parse_checkpoints, default=dict(CHECKPOINTS),
                        help="name=dir,... evaluated by robustness (PLR ones also by streams)")
    parser.add_argument("--base", type=Path, default=CHECKPOINTS["plr"],
                        help="checkpoint whose model/train config the training runs start from")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")],
                        default=list(SEEDS))
    parser.add_argument("--max-epochs", type=int, help="epoch cap (default: the base recipe's)")
    parser.add_argument("--drop-fraction", type=float, default=DROP_FRACTION)
    parser.add_argument("--corruption-seeds", type=lambda s: [int(x) for x in s.split(",")],
                        default=list(CORRUPTION_SEEDS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads for evaluation")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/analyses"))
    parser.add_argument("--out", type=Path, default=Path("docs/analyses.md"))
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing; rebuild the report from the JSONs in --runs-dir")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only) - set(ANALYSES))
    if unknown:
        parser.error(f"unknown analyses {unknown}; expected a subset of {list(ANALYSES)}")
    argv = sys.argv[1:] if argv is None else list(argv)
    args.command = " ".join(["python -m model.experiments.analyses", *map(shlex.quote, argv)])
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)  # the training runs set their own (train_config)
    if not args.report_only:
        data = load_data(DATASET, k_core=K_CORE)
        run_evaluations(args, data)
        base_model, base_train = base_recipe(args.base)
        cells = {}
        if "width_depth" in args.only:
            cells.update(width_depth_cells(base_model))
        if "ablations" in args.only:
            cells.update({n: f for n, f in ablation_cells(base_model).items()
                          if run_key(f) not in {run_key(c) for c in cells.values()}})
        run_training(cells, base_train, data, args)
    write_report(args)
    print(f"wrote {args.out}, {args.out.with_suffix('.json')} and {args.out.with_suffix('')}/*.png")


if __name__ == "__main__":
    main()
