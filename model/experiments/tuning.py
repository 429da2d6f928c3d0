"""The tuning report: every candidate of every family and its validation numbers -> docs/tuning.md.

`python -m model.experiments.tuning` rebuilds docs/tuning.md and docs/tuning.json from the
candidate records under docs/results/tuning/ alone (the queue, model/experiments/queue.py, runs
the candidates). Validation numbers only: the tests of the candidates are in their records but
never shown here, because the recipe is chosen without them (model/experiments/recipes.py).
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

from .hardware import hardware
from .recipes import (BASES, CRITERIA, N_CANDIDATES, POLICY, ROUND_2, SASREC_CANDIDATES, TUNED,
                      TUNING_DATASET, TUNING_SEED, candidates, choose, criteria, round_winner)
from .runs import read_record

OUT = Path("docs/tuning.md")
LABELS = {"ndcg@10": "N@10", "recall@10": "R@10", "ndcg@20": "N@20", "recall@20": "R@20",
          "top5": "top-5 mean N@10"}


def change_text(cand) -> str:
    parts = [f"{k}={v}" for k, v in {**cand.change.model, **cand.change.train}.items()]
    return ", ".join(parts) or "(none)"


def family_summary(family: str) -> dict:
    """Every defined candidate with its record's numbers (None while it has not run), the round
    winners and the chosen recipe once both rounds are complete."""
    cands, complete = candidates(family)
    rows = []
    for c in cands:
        record = read_record(c.path)
        row = {"id": c.id, "round": c.round_no, "change": change_text(c), "based_on": c.based_on,
               "model": c.model, "train": c.train, "done": record is not None}
        if record is not None:
            row.update(criteria=criteria(record), best_epoch=record["best_epoch"],
                       epochs_run=record["epochs_run"], train_min=record["train_s"] / 60,
                       cpu_min=record["cpu_s"] / 60, s_per_epoch=record["s_per_epoch"])
        rows.append(row)
    done = {r["id"]: r["criteria"] for r in rows if r["done"]}
    wins = choose(done)[1] if done else {}
    round_1 = round_winner([c for c in cands if c.round_no == 1])
    chosen = round_winner(cands) if complete else None
    return {"family": family, "rows": rows, "wins": wins, "n_done": len(done),
            "round_1_winner": round_1.id if round_1 else None,
            "chosen": chosen.id if chosen else None,
            "recipe": {"model": chosen.model, "train": chosen.train} if chosen else None}


def family_lines(s: dict) -> list[str]:
    lines = [f"## {s['family']}: {s['n_done']} of {N_CANDIDATES} candidates run", ""]
    base_model, base_train = BASES[s["family"]]
    lines += [f"Base (protocol defaults): {base_model}, {base_train}. Round 2 applies its changes "
              "to round 1's winner" + (f" (**{s['round_1_winner']}**)." if s["round_1_winner"]
                                       else "; it is defined once round 1 has finished."), ""]
    lines += ["| candidate | change | " + " | ".join(LABELS[c] for c in CRITERIA)
              + " | criteria won | best epoch | epochs run | min (CPU min) |",
              "|---" * (len(CRITERIA) + 6) + "|"]
    for r in s["rows"]:
        name = f"**{r['id']}**" if r["id"] == s["chosen"] else r["id"]
        if not r["done"]:
            lines.append(f"| {name} | {r['change']} | " + " | ".join("" for _ in CRITERIA)
                         + " | not run yet | | | |")
            continue
        c = r["criteria"]
        lines.append(f"| {name} | {r['change']} | " + " | ".join(f"{c[k]:.4f}" for k in CRITERIA)
                     + f" | {s['wins'].get(r['id'], 0)} | {r['best_epoch']} | {r['epochs_run']}"
                     f" | {r['train_min']:.0f} ({r['cpu_min']:.0f}) |")
    if not any(r["round"] == 2 for r in s["rows"]):
        for change in ROUND_2[s["family"]]:
            text = ", ".join(f"{k}={v}" for k, v in {**change.model, **change.train}.items())
            lines.append(f"| r2-{change.name} | round 1's winner + {text} | "
                         + " | ".join("" for _ in CRITERIA) + " | not run yet | | | |")
    lines.append("")
    if s["chosen"]:
        lines += [f"Chosen recipe: **{s['chosen']}**: model {s['recipe']['model']}, training "
                  f"{s['recipe']['train']}.", ""]
    else:
        lines += ["No recipe yet: the grid's runs of this family wait for it.", ""]
    return lines


def sasrec_lines() -> list[str]:
    lines = ["## sasrec: 13 candidates (recorded before this report existed)", "",
             "From docs/sasrec-reference.md (model.experiments.sasrec_baseline, same rule, same "
             "seed and data). Its first round ran with patience 10 and no minimum epoch count; "
             "the min_epochs 40 policy came from its second round.", "",
             "| candidate | " + " | ".join(LABELS[c] for c in CRITERIA) + " |",
             "|---" * (len(CRITERIA) + 1) + "|"]
    for name, *values in SASREC_CANDIDATES:
        lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
    return lines + ["", "Chosen recipe: dropout 0.5, stride 10, min_epochs 40.", ""]


def build_report(out: Path = OUT) -> list[Path]:
    summaries = [family_summary(f) for f in TUNED]
    hw = hardware()
    lines = [
        "# Tuning: equal budget for every model family", "",
        f"Written by `python -m model.experiments.tuning` on {date.today().isoformat()} from the "
        "candidate records in docs/results/tuning/ (runs by `python -m model.experiments.queue`; "
        f"{hw['cpu']}, {hw['cores']} cores shared with other jobs, 1 torch thread per run).", "",
        f"Protocol: {TUNING_DATASET}, seed {TUNING_SEED}, validation only (test numbers are never "
        f"read to choose). Every family gets {N_CANDIDATES} candidates, SASRec's recorded count; "
        f"every new candidate trains under the same policy ({POLICY}). Round 1 is fixed in "
        "advance; round 2 applies fixed changes to round 1's winner. Rule (docs/sasrec-"
        "reference.md): the candidate best on most of valid NDCG@10, Recall@10, NDCG@20, "
        "Recall@20 (at its best epoch) and the mean of its 5 best epochs' valid NDCG@10; ties "
        "by that mean. The chosen candidate is in bold; its seed-2020 run is the grid's seed-2020 "
        "run.", "",
        "| family | candidates run | chosen |", "|---|---|---|",
        "| sasrec | 13 of 13 (recorded) | dropout 0.5, stride 10, min_epochs 40 |",
        *[f"| {s['family']} | {s['n_done']} of {N_CANDIDATES} | {s['chosen'] or 'not yet'} |"
          for s in summaries], "",
    ]
    for s in summaries:
        lines += family_lines(s)
    lines += sasrec_lines()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps(
        {"families": summaries, "sasrec": SASREC_CANDIDATES}, indent=1) + "\n")
    return [out, out.with_suffix(".json")]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    print("wrote", *build_report(args.out))


if __name__ == "__main__":
    main()
