"""The results report's arithmetic on hand-made records (synthetic ranks, no training)."""

import json

import numpy as np
import pytest

from model.experiments.results import build_report, quartile_buckets, summarize_dataset
from model.experiments.runs import write_json


def run(model, seed, ranks, digest="d1"):
    """A hand-made run record (synthetic ranks)."""
    ranks = np.asarray(ranks)
    ndcg10 = float(np.where(ranks <= 10, 1 / np.log2(ranks + 1), 0).mean())
    recall10 = float((ranks <= 10).mean())
    return {"model": model, "seed": seed, "test_ranks": ranks.tolist(), "split_digest": digest,
            "test": {"ndcg@10": ndcg10, "recall@10": recall10, "ndcg@20": ndcg10,
                     "recall@20": recall10, "masked_ndcg@10": ndcg10},
            "train_s": 60.0, "cpu_s": 55.0, "time_to_best_s": 30.0, "params": 100,
            "best_epoch": 3, "s_per_epoch": 6.0}


def test_relative_change_and_paired_test_against_sasrec():
    rng = np.random.default_rng(0)
    base = rng.integers(1, 40, size=200)
    better = np.maximum(1, base - 5)  # every user's target ranks 5 places higher
    rows = summarize_dataset({
        "sasrec": [run("sasrec", s, base) for s in (1, 2)],
        "rearec-erl": [run("rearec-erl", s, base) for s in (1, 2)],
        "plr": [run("plr", s, better) for s in (1, 2)],
    })
    plr = next(r for r in rows if r["model"] == "plr")
    sasrec_ndcg = run("sasrec", 1, base)["test"]["ndcg@10"]
    assert plr["rel_ndcg@10"] == pytest.approx(plr["ndcg@10"][0] / sasrec_ndcg - 1)
    assert plr["rel_ndcg@10"] > 0.1
    assert plr["p_vs_sasrec"] < 1e-3 and plr["p_vs_rearec"] < 1e-3
    assert plr["best_rearec"] == "rearec-erl"
    erl = next(r for r in rows if r["model"] == "rearec-erl")
    assert erl["p_vs_sasrec"] == 1.0  # identical ranks: no difference at all


def write_records(root, runs, n_users):
    for r in runs:
        write_json(root / "ml-100k" / r["model"] / f"seed{r['seed']}.json", r)
    lengths = np.arange(n_users) + 3
    write_json(root / "ml-100k" / "split.json", {
        "history_len": lengths.tolist(), "target_train_count": (lengths % 7).tolist()})


def test_report_says_plainly_when_plr_does_not_beat_sasrec_and_where(tmp_path):
    base = np.arange(100) % 12 + 1
    worse = base + 3
    worse[:50] = base[:50]  # PLR is level on the 50 shortest histories, behind on the rest
    write_records(tmp_path / "runs", [run("sasrec", 2020, base), run("plr", 2020, worse)], 100)
    out = tmp_path / "results.md"
    build_report(out, tmp_path / "runs", seeds=(2020, 2021))
    text = out.read_text()
    assert "PLR does NOT beat SASRec here: it is level or behind" in text
    assert "1 PLR and 1 SASRec seed(s): a first look until both have 2" in text
    assert "Not finished" in text and "ml-100k/sasrec" in text  # 1 of 2 seeds only
    summary = json.loads(out.with_suffix(".json").read_text())
    by_length = summary["ml-100k"]["buckets"]["history_len"]["rows"]
    assert sum(r["users"] for r in by_length) == 100 and len(by_length) == 4
    assert by_length[0]["plr_vs_sasrec"] == 0.0 and by_length[-1]["plr_vs_sasrec"] < 0
    assert (tmp_path / "results" / "plots" / "grid.png").exists()
    assert (tmp_path / "results" / "plots" / "buckets-ml-100k.png").exists()


def test_verdict_never_says_beats_when_one_metric_is_behind():
    from model.experiments.results import verdict

    def rows(ndcg, recall, seeds=(1, 2, 3)):
        return [{"model": "sasrec", "seeds": list(seeds)},
                {"model": "plr", "seeds": list(seeds), "rel_ndcg@10": ndcg,
                 "rel_recall@10": recall, "p_vs_sasrec": 0.2}]

    assert verdict(rows(0.05, 0.03))[0].startswith("PLR beats SASRec here on test NDCG@10 and")
    mixed = verdict(rows(0.05, -0.01))[0]
    assert "does NOT beat SASRec here on both metrics: ahead on test NDCG@10, level or behind " \
           "on Recall@10 (+5.0 %, -1.0 %" in mixed
    assert "ahead on test Recall@10, level or behind on NDCG@10" in verdict(rows(-0.02, 0.01))[0]
    assert "3 PLR seeds)." in mixed and "first look" not in mixed
    assert "1 PLR and 1 SASRec seed(s): a first look until both have 3" in verdict(
        rows(0.1, 0.1, seeds=(1,)), 3)[0]


def test_verdict_also_says_where_plr_stands_against_the_best_rearec():
    from model.experiments.results import verdict

    rows = [{"model": "sasrec", "seeds": [1, 2, 3]},
            {"model": "rearec-erl", "seeds": [1, 2], "ndcg@10": (0.0675, 0.0),
             "recall@10": (0.1382, 0.0)},
            {"model": "plr", "seeds": [1, 2, 3], "rel_ndcg@10": 0.045, "rel_recall@10": 0.032,
             "p_vs_sasrec": 0.33, "ndcg@10": (0.0635, 0.0), "recall@10": (0.1382 * 1.01, 0.0),
             "best_rearec": "rearec-erl", "p_vs_rearec": 0.234}]
    lines = verdict(rows, 3)
    assert lines[0].startswith("PLR beats SASRec here")
    assert lines[2] == (
        "PLR is NOT ahead of rearec-erl (the best ReaRec here) on both metrics: ahead on test "
        "Recall@10, level or behind on NDCG@10 (-5.9 %, +1.0 %; paired p 0.234, not significant "
        "at 0.05; goal: ahead of both ReaRec variants; 3 PLR and 2 rearec-erl seed(s): a first "
        "look until both have 3).")
    rows[1]["ndcg@10"], rows[1]["recall@10"] = (0.06, 0.0), (0.13, 0.0)
    assert verdict(rows, 3)[2].startswith("PLR is ahead of rearec-erl (the best ReaRec here)")
    rows[2].pop("best_rearec")
    assert len(verdict(rows, 3)) == 2  # no ReaRec run yet: the SASRec sentence alone


def test_records_from_different_splits_are_refused(tmp_path):
    ranks = np.arange(1, 11)
    write_records(tmp_path / "runs", [run("sasrec", 2020, ranks, "d1"),
                                      run("plr", 2020, ranks, "d2")], 10)
    with pytest.raises(ValueError, match="different splits"):
        build_report(tmp_path / "results.md", tmp_path / "runs")


def test_quartile_buckets_cover_every_user_once_with_ties():
    values = np.array([1, 1, 1, 1, 1, 2, 3, 50, 60, 70])
    index, labels = quartile_buckets(values)
    assert len(index) == len(values) and index.max() < len(labels)
    assert labels[0] == "1-1" and labels[-1].endswith("70")
