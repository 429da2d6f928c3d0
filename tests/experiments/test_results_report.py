"""The results report's arithmetic on hand-made runs (synthetic ranks, no training)."""

import argparse

import numpy as np
import pytest

from model.experiments.results import summarize_dataset, write_report


def run(model, seed, ranks):
    ranks = np.asarray(ranks)
    ndcg10 = float(np.where(ranks <= 10, 1 / np.log2(ranks + 1), 0).mean())
    recall10 = float((ranks <= 10).mean())
    return {"model": model, "seed": seed, "test_ranks": ranks.tolist(),
            "test": {"ndcg@10": ndcg10, "recall@10": recall10, "ndcg@20": ndcg10,
                     "recall@20": recall10},
            "train_s": 60.0, "time_to_best_s": 30.0, "infer_ms_per_user": 1.0, "params": 100,
            "best_epoch": 3}


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


def test_report_says_plainly_when_plr_does_not_beat_sasrec(tmp_path):
    base = np.arange(1, 101)
    worse = base + 3
    summary = {"ml-100k": summarize_dataset({
        "sasrec": [run("sasrec", 1, base)], "plr": [run("plr", 1, worse)]})}
    args = argparse.Namespace(argv=[], patience=10, max_epochs=5, max_len=50,
                              datasets=["ml-100k"], models=["sasrec", "plr"], seeds=[1, 2])
    out = tmp_path / "results.md"
    write_report(summary, args, out)
    text = out.read_text()
    assert "PLR does NOT beat SASRec" in text
    assert "Not finished" in text and "ml-100k/sasrec" in text  # 1 of 2 seeds only


def test_report_states_the_recipes_actually_used(tmp_path):
    from model.experiments.results import MODELS, RECIPES
    summary = {"ml-100k": summarize_dataset({"sasrec": [run("sasrec", 1, np.arange(1, 101))]})}
    args = argparse.Namespace(argv=[], patience=10, max_epochs=5, max_len=50, max_minutes=0.0,
                              datasets=["ml-100k"], models=["sasrec"], seeds=[1])
    out = tmp_path / "results.md"
    write_report(summary, args, out)
    text = out.read_text()
    assert f"sasrec: dropout {RECIPES['sasrec'][0]['dropout']}" in text
    assert f"rcl_weight {MODELS['plr']['rcl_weight']}" in text
    assert "summed: 0.0 h" in text  # 60 s of training in the one hand-made run
