"""docs/analyses.md, docs/analyses.json and docs/analyses/*.png from the analyses' result JSONs.

`render(collected, out_md)` only reads what `analyses.collect` gathered; it runs no model. Every
number it writes comes from those JSONs; a cell without runs is written "not run" and a cell
with fewer seeds than asked says how many it has. A plot with no data is removed, not kept stale.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .results import paired_p, per_user

WAITING = ("**Waiting for PLR's tuned recipe** (docs/tuning.md): every cell changes one thing "
           "against it; the queue trains them once it is chosen.")
CELL_METRICS = ("ndcg@10", "recall@10", "recall@20")
STREAM_COLUMNS = (("cosine", "cosine distance"), ("l2", "L2 distance"), ("kl", "KL"),
                  ("topk_identical", "identical top-10"), ("topk_overlap", "top-10 overlap"))


def pct(x: float) -> str:
    return f"{100 * x:+.1f} %"


def mean_std(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std())


def fmt_ms(pair: tuple[float, float], n: int) -> str:
    return f"{pair[0]:.4f}" if n == 1 else f"{pair[0]:.4f} +- {pair[1]:.4f}"


def produced_line(produced: dict) -> str:
    hw = produced["hardware"]
    gpu = f", GPU {hw['gpu']}" if hw.get("gpu") else ", CPU only"
    return (f"Produced on {produced['date']} by `{produced['command']}`; {hw['cpu']}, "
            f"{hw['cores']} cores{gpu}, {produced['torch_threads']} torch thread(s), torch "
            f"{hw['torch']}, Python {hw['python']}.")


# -- 1. robustness ---------------------------------------------------------------------------------
def summarize_robustness(raw: dict) -> dict:
    """Per model: clean and corrupted (mean +- std over corruption draws) test NDCG@10 and
    Recall@10, relative change, paired p clean vs corrupted; PLR vs SASRec when both exist."""
    rows = []
    for name, r in raw["models"].items():
        row = {"model": name, "kind": r["kind"], "draws": len(r["corrupted"]),
               "clean_matches_checkpoint": all(
                   abs(r["clean"][m] - r["checkpoint_test"].get(m, np.nan)) < 1e-6
                   for m in ("ndcg@10", "recall@10"))}
        for m in ("ndcg@10", "recall@10"):
            row[f"clean_{m}"] = r["clean"][m]
            row[f"corrupted_{m}"] = mean_std([c[m] for c in r["corrupted"]])
            row[f"rel_{m}"] = row[f"corrupted_{m}"][0] / r["clean"][m] - 1.0
        clean_users = per_user([{"test_ranks": r["clean_ranks"]}], "ndcg@10")
        corrupted_users = per_user([{"test_ranks": x} for x in r["corrupted_ranks"]], "ndcg@10")
        row["p_clean_vs_corrupted"] = paired_p(clean_users, corrupted_users)
        rows.append(row)
    out = {"rows": rows, "histories": raw["histories"], "produced": raw["produced"],
           "drop_fraction": next(iter(raw["models"].values()))["drop_fraction"]}
    if {"plr", "sasrec"} <= set(raw["models"]):
        out["plr_vs_sasrec"] = compare_models(raw["models"]["plr"], raw["models"]["sasrec"])
    return out


def compare_models(a: dict, b: dict) -> dict:
    """a vs b on clean and corrupted histories: relative NDCG@10 and Recall@10, paired p; and
    whether a's per-user NDCG@10 loss under corruption differs from b's (paired p of the drops)."""
    def drop(r: dict) -> np.ndarray:
        corrupted = per_user([{"test_ranks": x} for x in r["corrupted_ranks"]], "ndcg@10")
        return corrupted - per_user([{"test_ranks": r["clean_ranks"]}], "ndcg@10")

    out = {"drop_p": paired_p(drop(a), drop(b))}
    for view, ranks in (("clean", lambda r: [r["clean_ranks"]]),
                        ("corrupted", lambda r: r["corrupted_ranks"])):
        runs_a = [{"test_ranks": x} for x in ranks(a)]
        runs_b = [{"test_ranks": x} for x in ranks(b)]
        for m in ("ndcg@10", "recall@10"):
            out[f"{view}_rel_{m}"] = per_user(runs_a, m).mean() / per_user(runs_b, m).mean() - 1
        out[f"{view}_p"] = paired_p(per_user(runs_a, "ndcg@10"), per_user(runs_b, "ndcg@10"))
    return out


def robustness_lines(summary: dict | None) -> list[str]:
    lines = ["## 1. Robustness: 30 % of each test history missing", ""]
    if summary is None:
        return lines + ["**Not run.** (`--only robustness`)", ""]
    h, frac = summary["histories"], summary["drop_fraction"]
    lines += [
        produced_line(summary["produced"]), "",
        f"Protocol (plr-method.md s.3.11): from each test user's history (all but the test "
        f"target) {100 * frac:.0f} % of the items (rounded half up, at least one item kept) are "
        f"dropped uniformly at random, order kept; the dropped positions depend only on the "
        f"draw's seed and the user, so every model sees the same histories. No retraining; full "
        f"ranking, unmasked. Corrupted = mean +- std over {summary['rows'][0]['draws']} draws. "
        f"Mean history {h['mean_len']:.1f} -> {h['mean_len_corrupted']:.1f} items, but the models "
        f"see only their last {h['max_len']}: mean window {h['mean_window']:.1f} -> "
        f"{h['mean_window_corrupted']:.1f} items ({100 * h['share_full_window_corrupted']:.0f} % "
        f"of users still fill it), so for long histories dropping mostly swaps recent items for "
        f"older ones.", "",
        "| model | clean NDCG@10 | corrupted NDCG@10 | change | clean Recall@10 | corrupted "
        "Recall@10 | change | p (NDCG@10, clean vs corrupted) | clean = checkpoint's "
        "metrics.json |",
        "|---" * 9 + "|",
    ]
    for r in summary["rows"]:
        lines.append(
            f"| {r['model']} | {r['clean_ndcg@10']:.4f} | {fmt_ms(r['corrupted_ndcg@10'], 2)} | "
            f"{pct(r['rel_ndcg@10'])} | {r['clean_recall@10']:.4f} | "
            f"{fmt_ms(r['corrupted_recall@10'], 2)} | {pct(r['rel_recall@10'])} | "
            f"{r['p_clean_vs_corrupted']:.3g} | "
            f"{'yes' if r['clean_matches_checkpoint'] else 'NO'} |")
    lines.append("")
    lines += plr_vs_sasrec_lines(summary)
    return lines + ["![robustness](analyses/robustness.png)", ""]


def plr_vs_sasrec_lines(summary: dict) -> list[str]:
    """The robustness claim in words, every number and verdict computed from the summary."""
    cmp = summary.get("plr_vs_sasrec")
    if not cmp:
        return []
    rows = {r["model"]: r for r in summary["rows"]}
    smaller = ("smaller than" if rows["plr"]["rel_ndcg@10"] > rows["sasrec"]["rel_ndcg@10"]
               else "not smaller than")
    significant = "significant" if cmp["drop_p"] < 0.05 else "not significant"
    if cmp["clean_rel_ndcg@10"] <= 0:
        lead = "PLR has no NDCG@10 lead over SASRec on clean histories to keep"
    elif cmp["corrupted_rel_ndcg@10"] > 0:
        lead = "PLR keeps its NDCG@10 lead over SASRec on corrupted histories"
    else:
        lead = "PLR loses its NDCG@10 lead over SASRec on corrupted histories"
    return [
        f"PLR's relative NDCG@10 loss ({pct(rows['plr']['rel_ndcg@10'])}) is {smaller} "
        f"SASRec's ({pct(rows['sasrec']['rel_ndcg@10'])}); the per-user losses differ with "
        f"paired p {cmp['drop_p']:.3g} ({significant} at 0.05).",
        f"PLR vs SASRec, NDCG@10: clean {pct(cmp['clean_rel_ndcg@10'])} (paired p "
        f"{cmp['clean_p']:.3g}), corrupted {pct(cmp['corrupted_rel_ndcg@10'])} (p "
        f"{cmp['corrupted_p']:.3g}); Recall@10: clean {pct(cmp['clean_rel_recall@10'])}, "
        f"corrupted {pct(cmp['corrupted_rel_recall@10'])}. {lead}. One training seed per model: "
        "this compares two checkpoints, not two methods.", ""]


# -- 2. stream distances ---------------------------------------------------------------------------
def num(x: float) -> str:
    """4 decimals, or 3 significant digits for tiny non-zero values (a collapse is not a zero)."""
    return f"{x:.4f}" if x == 0 or abs(x) >= 1e-3 else f"{x:.2e}"


def stream_table(summary: dict) -> list[str]:
    def row(label: str, values: dict, norm: str = "") -> str:
        return (f"| {label} | " + " | ".join(num(values[key]) for key, _ in STREAM_COLUMNS)
                + f" | {norm} |")

    lines = ["| state | " + " | ".join(label for _, label in STREAM_COLUMNS)
             + " | mean state norm |", "|---" * (len(STREAM_COLUMNS) + 2) + "|",
             row("start t=0 (h0 + tau_m)", summary["start"])]
    for step, norm in zip(summary["steps"], summary["state_norm"]):
        lines.append(row(f"step t={step['step']} (h_t,m)", step, f"{norm:.3f}"))
    lines.append(row("scored stream h0 + z_m", summary["scored"]))
    lines.append(row(f"reference: two different users, stream 1, t={summary['n_steps']}",
                     summary["between_users"]))
    return lines


def depth_verdict(summary: dict) -> str:
    """One sentence on how the stream distances change from the start through the steps."""
    points = [summary["start"], *summary["steps"]]

    def trend(key: str) -> str:
        first, final = points[0][key], points[-1][key]
        return "shrinks" if final < first else "grows" if final > first else "stays"

    def path(key: str) -> str:
        return " -> ".join(num(p[key]) for p in points)

    last = summary["steps"][-1]
    ratio = last["l2"] / summary["between_users"]["l2"]
    collapsed = (f" The streams are effectively one: at t={summary['n_steps']} their top-10 lists "
                 f"are identical for {100 * last['topk_identical']:.1f} % of stream pairs "
                 f"(threshold for this sentence: 90 %)." if last["topk_identical"] >= 0.9 else "")
    return (f"From the start (t=0) to t={summary['n_steps']} the L2 distance between streams "
            f"{trend('l2')} ({path('l2')}) and the cosine distance {trend('cosine')} "
            f"({path('cosine')}); KL {path('kl')}. At t={summary['n_steps']} two streams of one "
            f"user are {ratio:.3g} times as far apart (L2) as two different users.{collapsed}")


def streams_lines(raw: dict | None, trained: list[dict]) -> list[str]:
    lines = ["## 2. Stream distances per reasoning step", ""]
    if raw is None:
        lines += ["**Not run** on a checkpoint. (`--only streams`)", ""]
    else:
        lines += [produced_line(raw["produced"]), "",
                  "Over the test users' histories (last max_len items), through the model's own "
                  "inference-form reasoning (`model.reasoning.reason`). Per step t, between every "
                  "pair of the M streams' states h_t,m: cosine distance 1 - cos, L2 distance, "
                  "mean KL over ordered pairs between softmax(h E^T / temperature) over all real "
                  "items (what GRR pushes apart), how often two streams' top-10 item sets are "
                  "identical, and their mean top-10 overlap. Rows: the streams' starting points "
                  "(they differ only by their triggers), each step, what the gate mixes (h0 + z_m, "
                  "stream m scored alone), and for scale the same measures between two different "
                  "users (each test user against the previous one).", ""]
        for name, s in raw["models"].items():
            gate = ", ".join(f"{g:.3f}" for g in s["gate_mean"])
            lines += [f"### {name} (M={s['n_streams']}, T={s['n_steps']}, {s['n_users']} users, "
                      f"version {s['version']})", "", *stream_table(s), "",
                      f"Mean gate weights: {gate}. {depth_verdict(s)}", ""]
    lines += ["The paper's claim is that without GRR the streams collapse with depth. A "
              "checkpoint trained with GRR cannot show what happens without it; the training runs "
              "of sections 3 and 4 store the same measures (t = 0 is the start) for every "
              "variant with M >= 2, mean over seeds:", ""]
    if not trained:
        lines += ["No training run with M >= 2 exists yet: not measured.", ""]
        return lines + (["![stream distances](analyses/streams.png)", ""] if raw else [])
    lines += ["| variant | seeds | cosine distance, t = 0..T | L2, t = 0..T | KL, t = 0..T | "
              "identical top-10, t = 0..T |", "|---" * 6 + "|"]
    for t in trained:
        per_step = [" / ".join(num(v) for v in t[key])
                    for key in ("cosine", "l2", "kl", "topk_identical")]
        lines.append(f"| {t['name']} | {t['n']} | " + " | ".join(per_step) + " |")
    return lines + ["", "![stream distances](analyses/streams.png)", ""]


def trained_stream_rows(*cell_groups: dict) -> list[dict]:
    """One row per distinct trained variant with stream measures: lists over t = 0 (start) .. T
    of the means over seeds of cosine, l2, kl and topk_identical."""
    rows, seen = [], set()
    for cells in cell_groups:
        for name, cell in cells.items():
            runs = [r for r in cell["runs"] if r.get("streams")]
            if not runs or cell["key"] in seen:
                continue
            seen.add(cell["key"])
            row = {"name": f"{name} ({cell['key']})", "n": len(runs)}
            for key in ("cosine", "l2", "kl", "topk_identical"):
                points = [[p[key] for p in (r["streams"]["start"], *r["streams"]["steps"])]
                          for r in runs]
                per_step = np.mean(points, axis=0)
                row[key] = per_step.tolist()
            rows.append(row)
    return rows


# -- 3 and 4. training cells -----------------------------------------------------------------------
def summarize_cell(cell: dict, n_seeds: int) -> dict:
    runs = cell["runs"]
    row = {"key": cell["key"], "n": len(runs), "asked": n_seeds,
           "seeds": [r["seed"] for r in runs]}
    if not runs:
        return row
    for m in CELL_METRICS:
        row[m] = mean_std([r["test"][m] for r in runs])
    row["valid_ndcg@10"] = mean_std([r["valid"]["ndcg@10"] for r in runs])
    row["epochs"] = sorted({r["train_config"]["epochs"] for r in runs})
    for key in ("best_epoch", "epochs_run", "s_per_epoch"):
        row[key] = float(np.mean([r[key] for r in runs]))
    return row


def seeds_cell(row: dict) -> str:
    if row["n"] == 0:
        return "not run"
    return f"{row['n']}" if row["n"] >= row["asked"] else f"{row['n']} of {row['asked']} (partial)"


def cell_value(row: dict, metric: str) -> str:
    return fmt_ms(row[metric], row["n"]) if row["n"] else "not run"


def width_depth_lines(rows: dict[str, dict], grid: tuple[tuple, tuple]) -> list[str]:
    streams, steps = grid
    lines = ["## 3. Width x depth: M streams x T steps", ""]
    if not rows:
        return lines + [WAITING, ""]
    done = [r for r in rows.values() if r["n"]]
    if not done:
        return lines + [f"**Not run**: none of the {len(rows)} cells has a run (the queue, "
                        "`python -m model.experiments.queue`, trains them once PLR's recipe is "
                        "chosen).", ""]
    lines += ["Test and validation NDCG@10 at the best validation epoch (mean +- std over seeds); "
              "every cell trains with PLR's tuned recipe except M and T.", "",
              "Test NDCG@10:", "", "| | " + " | ".join(f"T={t}" for t in steps) + " |",
              "|---" * (len(steps) + 1) + "|"]
    for m in streams:
        lines.append(f"| M={m} | " + " | ".join(cell_value(rows[f"M={m}, T={t}"], "ndcg@10")
                                               for t in steps) + " |")
    lines += ["", "| cell | seeds | valid NDCG@10 | test NDCG@10 | test Recall@10 | best epoch | "
              "epoch cap | s/epoch |", "|---" * 8 + "|"]
    for name, r in rows.items():
        lines.append(cell_row(name, r, ("valid_ndcg@10", "ndcg@10", "recall@10")))
    return lines + ["", "![width x depth](analyses/width_depth.png)", ""]


def cell_row(name: str, r: dict, metrics: tuple[str, ...]) -> str:
    cells = [name, seeds_cell(r)] + [cell_value(r, m) for m in metrics]
    if r["n"]:
        cells += [f"{r['best_epoch']:.1f}", "/".join(map(str, r["epochs"])),
                  f"{r['s_per_epoch']:.0f}"]
    else:
        cells += ["", "", ""]
    return "| " + " | ".join(cells) + " |"


def ablation_comparisons(cells: dict, full: str) -> dict[str, dict]:
    """Each variant against the full PLR: relative NDCG@10 / Recall@20 and paired p (NDCG@10)."""
    base = cells[full]["runs"]
    out = {}
    for name, cell in cells.items():
        if name == full or not base or not cell["runs"]:
            continue
        out[name] = {"p": paired_p(per_user(cell["runs"], "ndcg@10"), per_user(base, "ndcg@10"))}
        for m in ("ndcg@10", "recall@20"):
            ref = np.mean([r["test"][m] for r in base])
            out[name][f"rel_{m}"] = float(np.mean([r["test"][m] for r in cell["runs"]]) / ref - 1)
    return out


def ablation_lines(rows: dict[str, dict], comparisons: dict[str, dict]) -> list[str]:
    lines = ["## 4. Ablations", ""]
    if not rows:
        return lines + [WAITING, ""]
    if not any(r["n"] for r in rows.values()):
        return lines + [f"**Not run**: none of the {len(rows)} variants has a run (trained by "
                        "the queue once PLR's recipe is chosen).", ""]
    lines += ["Each variant changes one thing against the full tuned PLR: no gate = plain mean "
              "of the streams (use_gate false), no GRR = grr_weight 0, no RCL = rcl_weight 0, "
              "no dual-process = inference scores z alone instead of h0 + z (dual_process false). "
              "Change and paired p (per-user test NDCG@10 averaged over seeds) are against full "
              "PLR; the paper's ablation metric is Recall@20.", "",
              "| variant | seeds | test NDCG@10 | test Recall@10 | test Recall@20 | valid NDCG@10 "
              "| best epoch | epoch cap | s/epoch | NDCG@10 vs full | Recall@20 vs full "
              "| p vs full |",
              "|---" * 12 + "|"]
    for name, r in rows.items():
        c = comparisons.get(name)
        extra = ([pct(c["rel_ndcg@10"]), pct(c["rel_recall@20"]), f"{c['p']:.3g}"] if c
                 else ["", "", ""])
        base = cell_row(name, r, ("ndcg@10", "recall@10", "recall@20", "valid_ndcg@10"))
        lines.append(base + " " + " | ".join(extra) + " |")
    return lines + ["", "![ablations](analyses/ablations.png)", ""]


# -- the whole report ------------------------------------------------------------------------------
def status_lines(summary: dict) -> list[str]:
    def cells_state(rows):
        if not rows:
            return "waiting for PLR's tuned recipe (docs/tuning.md)"
        full = sum(r["n"] >= r["asked"] for r in rows.values())
        partial = sum(0 < r["n"] < r["asked"] for r in rows.values())
        return (f"{full} of {len(rows)} cells complete, {partial} partial, "
                f"{len(rows) - full - partial} not run")
    return ["| analysis | state |", "|---|---|",
            f"| 1. robustness | {'done' if summary['robustness'] else 'not run'} |",
            f"| 2. stream distances | {'done' if summary['streams'] else 'not run'} |",
            f"| 3. width x depth | {cells_state(summary['width_depth'])} |",
            f"| 4. ablations | {cells_state(summary['ablations'])} |", ""]


def summarize(collected: dict) -> dict:
    """The JSON-ready summary behind the report (no per-user ranks)."""
    n = len(collected["seeds"])
    return {
        "robustness": (summarize_robustness(collected["robustness"])
                       if collected["robustness"] else None),
        "streams": collected["streams"],
        "trained_streams": trained_stream_rows(collected["width_depth"], collected["ablations"]),
        "width_depth": {k: summarize_cell(c, n) for k, c in collected["width_depth"].items()},
        "ablations": {k: summarize_cell(c, n) for k, c in collected["ablations"].items()},
        "ablation_vs_full": (ablation_comparisons(collected["ablations"],
                                                  next(iter(collected["ablations"])))
                             if collected["ablations"] else {}),
        "seeds": collected["seeds"], "base": collected["base"], "produced": collected["produced"],
        "grid": {"n_streams": list(collected["grid"][0]), "n_steps": list(collected["grid"][1])},
    }


def report_lines(summary: dict, grid) -> list[str]:
    seeds = ", ".join(map(str, summary["seeds"]))
    return [
        "# Analyses: robustness, stream distances, width x depth, ablations", "",
        f"Report written on {summary['produced']['date']} by `{summary['produced']['command']}`. "
        "Each section states when and by which command its numbers were produced. Data: "
        "MovieLens-100K, all interactions (k-core 0), per-user stable time order, leave-one-out; "
        "full ranking over all items, history unmasked (plr-method.md s.4). Training runs (3, 4) "
        "change one thing each against "
        + (f"{summary['base']}" if summary["base"] else "PLR's tuned recipe, which does not exist "
           "yet (its tuning round is still running)")
        + f"; seeds {seeds}; trained by `python -m model.experiments.queue`, one record per "
        "(variant, seed) under docs/results/runs/ml-100k/.", "",
        *status_lines(summary),
        *robustness_lines(summary["robustness"]),
        *streams_lines(summary["streams"], summary["trained_streams"]),
        *width_depth_lines(summary["width_depth"], grid),
        *ablation_lines(summary["ablations"], summary["ablation_vs_full"]),
    ]


def render(collected: dict, out_md: Path) -> dict:
    """Write the markdown, the JSON summary and the plots; returns the summary."""
    from .analyses_plots import write_plots  # matplotlib: imported only when a report is written

    grid = collected["grid"]
    summary = summarize(collected)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text("\n".join(report_lines(summary, grid)))
    out_md.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    write_plots(summary, out_md.with_suffix(""), grid)
    return summary
