"""The results report: PLR against SASRec and ReaRec on real data, built from run records alone.

`python -m model.experiments.results` rebuilds docs/results.md, docs/results.json and the plots
in docs/results/plots/ from the committed records docs/results/runs/<dataset>/<model>/seed<S>.json
(written by the queue, `python -m model.experiments.queue`, which trains what is missing). Every
number is computed here from those records; nothing is trained. Paired tests pair users by
position, so every record of a dataset must come from the same split (checked by digest).
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

import numpy as np

from ..evaluate import metric_values
from .hardware import hardware
from .recipes import FAMILIES, N_CANDIDATES, recipe
from .runs import DATASETS, RESULTS_DIR, read_record

SEEDS = (2020, 2021, 2022)
METRICS = ("ndcg@10", "recall@10", "ndcg@20", "recall@20")
RECBOLE_MIN_TO_BEST = 36.0  # RecBole 1.2.1 SASRec on ml-100k, one core (docs/sasrec-reference.md)
OUT = Path("docs/results.md")


def paired_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided paired t-test p-value across users."""
    from scipy.stats import ttest_rel

    if np.allclose(a, b):
        return 1.0
    return float(ttest_rel(a, b).pvalue)


def per_user(runs: list[dict], metric: str) -> np.ndarray:
    """Per-user metric averaged over seeds (users are in the same order in every run)."""
    kind, k = metric.split("@")
    return np.mean([metric_values(np.asarray(r["test_ranks"]), kind, int(k)) for r in runs], axis=0)


def load_runs(records_dir: Path, dataset: str, seeds=SEEDS) -> dict[str, list[dict]]:
    """model -> its records on `dataset` (seeds that exist); ValueError on mixed splits."""
    runs = {m: [r for s in seeds if (r := read_record(records_dir / dataset / m / f"seed{s}.json"))]
            for m in FAMILIES}
    digests = {r["split_digest"] for rs in runs.values() for r in rs}
    if len(digests) > 1:
        raise ValueError(f"{dataset}: records from different splits {sorted(digests)}")
    return runs


def summarize_dataset(runs_by_model: dict[str, list[dict]]) -> list[dict]:
    """One row per model with runs: means +- std over seeds, changes and paired p-values."""
    rows = []
    base = runs_by_model.get("sasrec")
    rearec = {m: r for m, r in runs_by_model.items() if m.startswith("rearec") and r}
    best_rearec = max(rearec, key=lambda m: np.mean([x["test"]["ndcg@10"] for x in rearec[m]]),
                      default=None)
    for name, runs in runs_by_model.items():
        if not runs:
            continue
        row = {"model": name, "seeds": [r["seed"] for r in runs]}
        for m in (*METRICS, "masked_ndcg@10"):
            vals = np.array([r["test"][m] for r in runs])
            row[m] = (float(vals.mean()), float(vals.std()))
        if base and name != "sasrec":
            for m in ("ndcg@10", "recall@10"):
                ref = np.mean([r["test"][m] for r in base])
                row[f"rel_{m}"] = float(row[m][0] / ref - 1.0) if ref else float("nan")
            row["p_vs_sasrec"] = paired_p(per_user(runs, "ndcg@10"), per_user(base, "ndcg@10"))
        if best_rearec and name == "plr":
            row["best_rearec"] = best_rearec
            row["p_vs_rearec"] = paired_p(per_user(runs, "ndcg@10"),
                                          per_user(rearec[best_rearec], "ndcg@10"))
        for key in ("train_s", "cpu_s", "time_to_best_s", "params", "best_epoch", "s_per_epoch"):
            row[key] = float(np.mean([r[key] for r in runs]))
        rows.append(row)
    return rows


# -- where PLR helps ---------------------------------------------------------------------------------
def quartile_buckets(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Bucket index per user by the quartiles of `values` (ties may make buckets uneven), and
    one label per bucket ("lo-hi")."""
    edges = np.unique(np.quantile(values, [0.25, 0.5, 0.75]))
    index = np.searchsorted(edges, values, side="left")  # value <= edge -> that bucket
    labels = []
    for b in range(len(edges) + 1):
        members = values[index == b]
        labels.append(f"{members.min()}-{members.max()}" if len(members) else "empty")
    return index, labels


def bucket_table(runs_by_model: dict[str, list[dict]], index: np.ndarray,
                 labels: list[str]) -> list[dict]:
    """Per bucket: user count, each model's test NDCG@10 (per-user, mean over seeds, then over
    the bucket's users), PLR's change against SASRec and its paired p within the bucket."""
    per_model = {m: per_user(r, "ndcg@10") for m, r in runs_by_model.items() if r}
    rows = []
    for b, label in enumerate(labels):
        members = index == b
        row = {"bucket": label, "users": int(members.sum()),
               "ndcg@10": {m: float(v[members].mean()) for m, v in per_model.items()}}
        if {"plr", "sasrec"} <= set(per_model) and members.sum() > 1:
            plr, sasrec = per_model["plr"][members], per_model["sasrec"][members]
            row["plr_vs_sasrec"] = float(plr.mean() / sasrec.mean() - 1) if sasrec.mean() else None
            row["p_plr_vs_sasrec"] = paired_p(plr, sasrec)
        rows.append(row)
    return rows


def where_plr_helps(runs_by_model: dict[str, list[dict]], facts: dict | None) -> dict | None:
    if facts is None or not any(runs_by_model.values()):
        return None
    out = {}
    for key, label in (("history_len", "history length (items before the test target)"),
                       ("target_train_count", "test target's training interactions")):
        index, labels = quartile_buckets(np.asarray(facts[key]))
        out[key] = {"label": label, "rows": bucket_table(runs_by_model, index, labels)}
    return out


# -- the report ----------------------------------------------------------------------------------------
def fmt_row(row: dict) -> str:
    cells = [f"**{row['model']}**" if row["model"] == "plr" else row["model"],
             str(len(row["seeds"]))]
    cells += [f"{row[m][0]:.4f} +- {row[m][1]:.4f}" for m in (*METRICS, "masked_ndcg@10")]
    cells += [f"{100 * row[k]:+.1f} %" if k in row else "" for k in ("rel_ndcg@10", "rel_recall@10")]
    cells.append(f"{row['p_vs_sasrec']:.3g}" if "p_vs_sasrec" in row else "")
    cells.append(f"{row['p_vs_rearec']:.3g} ({row['best_rearec']})" if "p_vs_rearec" in row else "")
    cells += [f"{row['best_epoch']:.0f}", f"{row['time_to_best_s'] / 60:.1f}",
              f"{row['train_s'] / 60:.1f}", f"{row['s_per_epoch']:.0f}", f"{int(row['params']):,}"]
    return "| " + " | ".join(cells) + " |"


HEADER = ("| model | seeds | NDCG@10 | Recall@10 | NDCG@20 | Recall@20 | masked NDCG@10 "
          "| NDCG@10 vs SASRec | Recall@10 vs SASRec | p (NDCG@10) vs SASRec "
          "| p (NDCG@10) vs best ReaRec | best epoch | min to best | train min | s/epoch "
          "| params |\n" + "|---" * 16 + "|")


def recipe_lines() -> list[str]:
    lines = []
    for family in FAMILIES:
        found = recipe(family)
        if found is None:
            lines.append(f"- {family}: **not chosen yet** (tuning round running, "
                         f"{N_CANDIDATES} candidates, docs/tuning.md); its grid runs wait")
            continue
        model, train = found
        lines.append(f"- {family}: " + ", ".join(f"{k} {v}" for k, v in model.items()
                                                 if k != "kind")
                     + "; " + ", ".join(f"{k} {v}" for k, v in train.items()))
    return lines


def verdict(rows: list[dict], n_seeds: int = len(SEEDS)) -> list[str]:
    """One plain sentence on PLR against SASRec: ahead on both metrics, behind on both, or mixed
    (never "beats" when one of the two is behind), with the paired p and how many seeds it rests
    on (fewer than the report's `n_seeds` for either model: said to be a first look); then the
    same against the dataset's best ReaRec variant, once one has a run."""
    plr = next((r for r in rows if r["model"] == "plr"), None)
    sasrec = next((r for r in rows if r["model"] == "sasrec"), None)
    if not plr or "rel_ndcg@10" not in plr:
        return []
    ndcg, recall = plr["rel_ndcg@10"], plr["rel_recall@10"]
    if ndcg > 0 and recall > 0:
        head = "PLR beats SASRec here on test NDCG@10 and Recall@10"
    elif ndcg <= 0 and recall <= 0:
        head = "PLR does NOT beat SASRec here: it is level or behind on test NDCG@10 and Recall@10"
    else:
        ahead, behind = ("NDCG@10", "Recall@10") if ndcg > 0 else ("Recall@10", "NDCG@10")
        head = (f"PLR does NOT beat SASRec here on both metrics: ahead on test {ahead}, level "
                f"or behind on {behind}")
    significant = plr["p_vs_sasrec"] < 0.05
    seeds = min(len(plr["seeds"]), len(sasrec["seeds"]) if sasrec else 0)
    thin = (f"; {len(plr['seeds'])} PLR and {len(sasrec['seeds']) if sasrec else 0} SASRec "
            f"seed(s): a first look until both have {n_seeds}") if seeds < n_seeds else (
            f"; {len(plr['seeds'])} PLR seeds")
    return [f"{head} ({100 * ndcg:+.1f} %, {100 * recall:+.1f} %; paired p "
            f"{plr['p_vs_sasrec']:.3g}, {'' if significant else 'not '}significant at 0.05; "
            f"goal +10 %, p < 0.05{thin}).", ""] + _against_rearec(plr, rows, n_seeds)


def _against_rearec(plr: dict, rows: list[dict], n_seeds: int) -> list[str]:
    """The same plain sentence against the best ReaRec variant of the dataset (the compass goal
    is to be ahead of both variants), once that variant has a run."""
    name = plr.get("best_rearec")
    rearec = next((r for r in rows if r["model"] == name), None)
    if rearec is None:
        return []
    rel = {m: plr[m][0] / rearec[m][0] - 1.0 if rearec[m][0] else float("nan")
           for m in ("ndcg@10", "recall@10")}
    ndcg, recall = rel["ndcg@10"], rel["recall@10"]
    if ndcg > 0 and recall > 0:
        head = f"PLR is ahead of {name} (the best ReaRec here) on test NDCG@10 and Recall@10"
    elif ndcg <= 0 and recall <= 0:
        head = (f"PLR is NOT ahead of {name} (the best ReaRec here): level or behind on test "
                "NDCG@10 and Recall@10")
    else:
        ahead, behind = ("NDCG@10", "Recall@10") if ndcg > 0 else ("Recall@10", "NDCG@10")
        head = (f"PLR is NOT ahead of {name} (the best ReaRec here) on both metrics: ahead on "
                f"test {ahead}, level or behind on {behind}")
    seeds = min(len(plr["seeds"]), len(rearec["seeds"]))
    thin = (f"; {len(plr['seeds'])} PLR and {len(rearec['seeds'])} {name} seed(s): a first "
            f"look until both have {n_seeds}") if seeds < n_seeds else ""
    significant = plr["p_vs_rearec"] < 0.05
    return [f"{head} ({100 * ndcg:+.1f} %, {100 * recall:+.1f} %; paired p "
            f"{plr['p_vs_rearec']:.3g}, {'' if significant else 'not '}significant at 0.05; "
            f"goal: ahead of both ReaRec variants{thin}).", ""]


def bucket_lines(name: str, helps: dict | None) -> list[str]:
    if not helps:
        return []
    lines = [f"### Where PLR helps on {name}", "",
             "Test NDCG@10 per bucket (per-user NDCG@10 averaged over each model's seeds, then "
             "over the bucket's users); buckets are the quartiles of the test users' values "
             "(ties can make them uneven: see the counts). PLR vs SASRec: relative change and "
             "paired p within the bucket.", ""]
    for key, part in helps.items():
        models = list(part["rows"][0]["ndcg@10"])
        lines += [f"By {part['label']}:", "",
                  "| bucket | users | " + " | ".join(models) + " | PLR vs SASRec | p |",
                  "|---" * (len(models) + 4) + "|"]
        for r in part["rows"]:
            change, p = r.get("plr_vs_sasrec"), r.get("p_plr_vs_sasrec")
            lines.append(f"| {r['bucket']} | {r['users']} | "
                         + " | ".join(f"{r['ndcg@10'][m]:.4f}" for m in models)
                         + f" | {'' if change is None else f'{100 * change:+.1f} %'}"
                         f" | {'' if p is None else f'{p:.3g}'} |")
        lines.append("")
    return lines + [f"![buckets](results/plots/buckets-{name}.png)", ""]


def cpu_to_best_s(record: dict) -> float | None:
    """CPU seconds from the start of a run to the end of its best epoch (None for records
    written before the history kept CPU time)."""
    entry = next((e for e in record.get("history", []) if e["epoch"] == record["best_epoch"]), {})
    return entry.get("cpu_s")


def timing_lines(summary: dict, records_dir: Path) -> list[str]:
    rows = {r["model"]: r for r in summary.get("ml-100k", {}).get("rows", [])}
    if "sasrec" not in rows:
        return []
    wall = rows["sasrec"]["time_to_best_s"] / 60
    runs = load_runs(records_dir, "ml-100k")["sasrec"]
    cpu = [c for r in runs if (c := cpu_to_best_s(r)) is not None]
    cpu_text = (f"; its CPU time to the best epoch, which pauses and other jobs do not inflate: "
                f"{np.mean(cpu) / 60:.1f} min ({len(cpu)} seeds) = "
                f"{np.mean(cpu) / 60 / RECBOLE_MIN_TO_BEST:.2f} of RecBole's" if cpu else "")
    return [f"SASRec's wall time to its best validation epoch on ml-100k: {wall:.1f} min (mean of "
            f"{len(rows['sasrec']['seeds'])} seeds, one torch thread, on the shared 2-core "
            f"machine at nice 19, including the minutes its jobs were paused for benchmarks) = "
            f"{wall / RECBOLE_MIN_TO_BEST:.2f} of RecBole 1.2.1's ~{RECBOLE_MIN_TO_BEST:.0f} min "
            f"(goal <= 0.25){cpu_text}. Quiet-machine epoch times: docs/training-speed.md.", ""]


def render(summary: dict, seeds, records_dir: Path = RESULTS_DIR / "runs") -> str:
    hw = hardware()
    lines = [
        "# Results: PLR against SASRec and ReaRec on real data", "",
        f"Written by `python -m model.experiments.results` on {date.today().isoformat()} from the "
        "run records in docs/results/runs/ (trained by `python -m model.experiments.queue`, "
        f"one torch thread per run; {hw['cpu']}, {hw['cores']} cores shared with other jobs; "
        f"torch {hw['torch']}; each record states its own hardware, date and code commit).", "",
        "Protocol (plr-method.md s.4): per-user stable time order, leave-one-out, full ranking "
        "over all items, history unmasked (masked NDCG@10 beside it), test at the best "
        "validation NDCG@10 epoch; every family trains at least 40 epochs, patience 10, at most "
        "200; max_len 50, d 64, 2 layers, 2 heads, Adam, batch 256 unless its recipe says "
        "otherwise. Mean +- std over seeds; relative change of the means; p: two-sided paired "
        "t-test across test users of per-user NDCG@10 averaged over seeds.", "",
        f"Recipes (each chosen on ml-100k seed-2020 validation with the same rule and the same "
        f"number of candidates, docs/tuning.md; the same on every dataset and seed):", "",
        *recipe_lines(), "",
    ]
    total_h = sum(r["train_s"] * len(r["seeds"]) for d in summary.values()
                  for r in d["rows"]) / 3600
    lines += [f"Training wall time of the runs in this report, summed: {total_h:.1f} h.", ""]
    lines += timing_lines(summary, records_dir)
    for name, data in summary.items():
        lines += [f"## {name} (k-core {DATASETS[name]})", ""]
        if not data["rows"]:
            lines += ["No run yet.", ""]
            continue
        lines += [HEADER, *map(fmt_row, data["rows"]), "", *verdict(data["rows"], len(seeds))]
        lines += bucket_lines(name, data["buckets"])
    missing = [f"{d}/{m}" for d, data in summary.items() for m in data["missing"]]
    if missing:
        lines += ["## Not finished", "", f"Runs with fewer than {len(seeds)} seeds (the queue "
                  "resumes them): " + ", ".join(missing), ""]
    lines += ["![grid](results/plots/grid.png)", ""]
    return "\n".join(lines)


def build_report(out: Path = OUT, records_dir: Path = RESULTS_DIR / "runs",
                 seeds=SEEDS) -> list[Path]:
    """Rebuild docs/results.md, .json and the plots from the records; returns the paths."""
    from .results_plots import write_plots

    summary = {}
    for name in DATASETS:
        runs = load_runs(records_dir, name, seeds)
        facts_path = records_dir / name / "split.json"
        facts = json.loads(facts_path.read_text()) if facts_path.exists() else None
        summary[name] = {"rows": summarize_dataset(runs),
                         "buckets": where_plr_helps(runs, facts),
                         "missing": [m for m, r in runs.items() if len(r) < len(seeds)]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(summary, seeds, records_dir))
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    plots = write_plots(summary, out.parent / "results" / "plots")
    return [out, out.with_suffix(".json"), *plots]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--records-dir", type=Path, default=RESULTS_DIR / "runs")
    parser.add_argument("--report-only", action="store_true",
                        help="accepted for compatibility: this module never trains")
    args = parser.parse_args(argv)
    print("wrote", *build_report(args.out, args.records_dir))


if __name__ == "__main__":
    main()
