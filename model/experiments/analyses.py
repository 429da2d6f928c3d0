"""Four analyses of PLR on MovieLens-100K: robustness, stream distances, width x depth, ablations.

`python -m model.experiments.analyses` writes docs/analyses.md, docs/analyses.json and PNGs under
docs/analyses/. Robustness and stream distances only evaluate the given checkpoints (seconds, no
training) and keep their results in docs/results/analyses/ (committed). Width x depth and the
ablations are training runs around PLR's tuned recipe (model/experiments/recipes.py); the queue
(model/experiments/queue.py) trains them and writes one record per (variant, seed) under
docs/results/runs/ml-100k/ (plr-<variant>/, the recipe itself is the grid's plr/). This module
only reads those records: `--report-only` rebuilds the report and names every missing cell.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import date
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..batches import eval_batch
from ..checkpoint import MODEL_CONFIG, load
from ..evaluate import evaluate
from ..reasoning import reason
from ..train import load_data
from .hardware import hardware
from .runs import RESULTS_DIR, read_record, write_json

ANALYSES = ("robustness", "streams", "width_depth", "ablations")
DATASET, K_CORE = "ml-100k", 0  # the split the default checkpoints were trained on
CHECKPOINTS = {"plr": Path("artifacts/models/plr"), "sasrec": Path("artifacts/models/sasrec")}
DROP_FRACTION = 0.3  # plr-method.md s.3.11
CORRUPTION_SEEDS = (0, 1, 2, 3, 4)  # several draws: one draw's luck should not be the result
SEEDS = (2020, 2021, 2022)
GRID_STREAMS, GRID_STEPS = (1, 2, 4), (1, 2, 3)
ABLATIONS = {  # name -> model config changes against the full (tuned) PLR
    "full PLR": {},
    "no gate (mean of streams)": {"use_gate": False},
    "no GRR": {"grr_weight": 0.0},
    "no RCL": {"rcl_weight": 0.0},
    "no dual-process (score z alone)": {"dual_process": False},
}
EVALUATIONS_DIR = RESULTS_DIR / "analyses"  # robustness.json, streams.json (committed)
RECORDS_DIR = RESULTS_DIR / "runs"  # <dataset>/<variant>/seed<S>.json, written by the queue
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


# -- 3 and 4. training runs (trained by the queue, read here) ----------------------------------------
def saved_config(checkpoint_dir: Path) -> dict:
    """A checkpoint's model config fields, read without loading its weights."""
    return json.loads((Path(checkpoint_dir) / MODEL_CONFIG).read_text())


def width_depth_cells(base_model: dict) -> dict[str, dict]:
    """Cell name "M=m, T=t" -> model config fields, for the width x depth grid."""
    return {f"M={m}, T={t}": {**base_model, "n_streams": m, "n_steps": t}
            for m in GRID_STREAMS for t in GRID_STEPS}


def ablation_cells(base_model: dict) -> dict[str, dict]:
    return {name: {**base_model, **change} for name, change in ABLATIONS.items()}


def analysis_cells(base_model: dict) -> dict[str, dict]:
    """Every width x depth cell and ablation (the names of both sections)."""
    return {**width_depth_cells(base_model), **ablation_cells(base_model)}


def run_key(model_fields: dict) -> str:
    """Short name of a variant; equal configs share it (full PLR == its grid cell)."""
    key = f"M{model_fields['n_streams']}-T{model_fields['n_steps']}"
    key += "" if model_fields.get("use_gate", True) else "-nogate"
    key += "" if model_fields.get("grr_weight", 0.1) > 0 else "-nogrr"
    key += "" if model_fields.get("rcl_weight", 1.0) > 0 else "-norcl"
    key += "" if model_fields.get("dual_process", True) else "-nodual"
    return key


def variant_name(model_fields: dict) -> str:
    """The record directory of a variant that is not the recipe itself: plr-<key>."""
    return f"plr-{run_key(model_fields)}"


def load_cells(cells: dict[str, dict], base_model: dict, records_dir: Path, dataset_name: str,
               seeds) -> dict:
    """Cell name -> {"key", "fields", "runs": the seeds' records that exist}. A cell equal to the
    recipe reads the grid's PLR records."""
    def runs(model_fields: dict) -> list[dict]:
        variant = "plr" if model_fields == base_model else variant_name(model_fields)
        found = [read_record(records_dir / dataset_name / variant / f"seed{s}.json")
                 for s in seeds]
        return [r for r in found if r is not None]

    return {name: {"key": run_key(f), "fields": f, "runs": runs(f)} for name, f in cells.items()}


def read_json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


# -- command line ----------------------------------------------------------------------------------
def provenance(args) -> dict:
    """When, how and where a result was produced: stored with every result and in the report."""
    return {"date": date.today().isoformat(), "command": args.command, "hardware": hardware(),
            "torch_threads": torch.get_num_threads()}


def run_evaluations(args, data) -> None:
    """Analyses 1 and 2 on the given checkpoints (seconds each); results under runs-dir."""
    if "robustness" in args.only:
        results = {name: robustness(name, path, data, args.drop_fraction, args.corruption_seeds)
                   for name, path in args.checkpoints.items()}
        corrupted = corrupt_pairs(data[1].test, data[1].eval_users, args.drop_fraction,
                                  args.corruption_seeds[0])
        max_len = min(saved_config(p)["max_len"] for p in args.checkpoints.values())
        write_json(args.evaluations_dir / "robustness.json", {
            "models": results, "histories": history_stats(data[1].test, corrupted, max_len),
            "produced": provenance(args)})
    if "streams" in args.only:
        plr = {n: p for n, p in args.checkpoints.items() if saved_config(p)["kind"] == "plr"}
        results = {name: streams(name, path, data) for name, path in plr.items()}
        write_json(args.evaluations_dir / "streams.json",
                   {"models": results, "produced": provenance(args)})


def plr_recipe() -> tuple[dict, dict] | None:
    """PLR's tuned recipe (None until its tuning round is complete)."""
    from .recipes import recipe

    return recipe("plr")


def collect(args) -> dict:
    """Everything the report shows, read from the committed results (missing pieces are None
    or empty)."""
    base = plr_recipe()
    cells = {"width_depth": {}, "ablations": {}}
    if base is not None:
        where = (base[0], args.records_dir, DATASET, args.seeds)
        cells = {"width_depth": load_cells(width_depth_cells(base[0]), *where),
                 "ablations": load_cells(ablation_cells(base[0]), *where)}
    base_text = ("PLR's tuned recipe (docs/tuning.md): model "
                 + ", ".join(f"{k} {v}" for k, v in base[0].items() if k != "kind")
                 + "; training " + ", ".join(f"{k} {v}" for k, v in base[1].items())
                 if base else None)
    return {
        "robustness": read_json(args.evaluations_dir / "robustness.json"),
        "streams": read_json(args.evaluations_dir / "streams.json"),
        **cells, "seeds": list(args.seeds), "base": base_text, "produced": provenance(args),
        "grid": (GRID_STREAMS, GRID_STEPS),
    }


def write_report(args) -> list[Path]:
    from .analyses_report import render  # plotting pulls in matplotlib: only when writing

    render(collect(args), args.out)
    return [args.out, args.out.with_suffix(".json"), args.out.with_suffix("")]


def build_report() -> list[Path]:
    """The report with default options, from the committed results (the queue calls this)."""
    return write_report(parse_args(["--report-only"]))


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
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")],
                        default=list(SEEDS))
    parser.add_argument("--drop-fraction", type=float, default=DROP_FRACTION)
    parser.add_argument("--corruption-seeds", type=lambda s: [int(x) for x in s.split(",")],
                        default=list(CORRUPTION_SEEDS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads for evaluation")
    parser.add_argument("--evaluations-dir", type=Path, default=EVALUATIONS_DIR,
                        help="where robustness.json and streams.json are kept")
    parser.add_argument("--records-dir", type=Path, default=RECORDS_DIR,
                        help="run records of the training cells (<dataset>/<variant>/seed<S>.json)")
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
    torch.set_num_threads(args.threads)
    if not args.report_only and {"robustness", "streams"} & set(args.only):
        run_evaluations(args, load_data(DATASET, k_core=K_CORE))
    if not args.report_only and {"width_depth", "ablations"} & set(args.only):
        print("width x depth and ablations are trained by `python -m model.experiments.queue`; "
              "this report shows the records that exist", file=sys.stderr)
    write_report(args)
    print(f"wrote {args.out}, {args.out.with_suffix('.json')} and {args.out.with_suffix('')}/*.png")


if __name__ == "__main__":
    main()
