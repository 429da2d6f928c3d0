"""The analyses script on synthetic data: history corruption, stream distances, one tiny training
run written and resumed, and the report with missing cells (no real data, no real training)."""

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from model.config import ModelConfig
from experiment_helpers import synthetic_data
from model.evaluate import user_vectors
from model.experiments import analyses
from model.experiments.analyses import (
    ablation_cells,
    analysis_cells,
    corrupt_pairs,
    drop_history,
    load_cells,
    reasoning_states,
    run_key,
    stream_divergence,
    stream_summary,
    variant_name,
    width_depth_cells,
)
from model.experiments.runs import write_json
from model.experiments.analyses_report import render
from model.registry import build_model
from model.train import TrainConfig

TINY_PLR = dict(kind="plr", d_model=16, n_layers=2, n_heads=2, d_ff=32, max_len=10, dropout=0.0,
                n_streams=3, n_steps=2, grr_weight=0.1, rcl_weight=0.1, use_gate=True)
TINY_TRAIN = dict(epochs=1, patience=1, batch_size=16, num_threads=1, device="cpu")


# -- 1. corrupted histories ----------------------------------------------------------------------
def test_dropping_keeps_order_drops_the_fraction_and_never_empties():
    prefix = np.arange(1, 21)
    kept = drop_history(prefix, 0.3, np.random.default_rng(0))
    assert len(kept) == 14 and np.all(np.diff(kept) > 0)  # 6 of 20 dropped, order kept
    assert set(kept) <= set(prefix)
    for n in range(1, 12):
        kept = drop_history(np.arange(n), 0.3, np.random.default_rng(n))
        assert len(kept) == max(1, n - int(0.3 * n + 0.5))
    assert len(drop_history(np.array([7]), 0.9, np.random.default_rng(0))) == 1
    with pytest.raises(ValueError):
        drop_history(prefix, 1.0, np.random.default_rng(0))


def test_corruption_is_seeded_per_user_whatever_the_order_of_the_pairs():
    _, split = synthetic_data(n_items=50, max_events=25)
    once = corrupt_pairs(split.test, split.eval_users, 0.3, seed=5)
    again = corrupt_pairs(split.test, split.eval_users, 0.3, seed=5)
    backwards = corrupt_pairs(split.test[::-1], split.eval_users[::-1], 0.3, seed=5)[::-1]
    other = corrupt_pairs(split.test, split.eval_users, 0.3, seed=6)
    for (p, t), (p2, t2), (p3, t3), (orig, target) in zip(once, again, backwards, split.test):
        assert np.array_equal(p, p2) and np.array_equal(p, p3) and t == t2 == t3 == target
        assert len(p) == len(orig) - int(0.3 * len(orig) + 0.5)
    assert any(not np.array_equal(a, b) for (a, _), (b, _) in zip(once, other))


# -- 2. stream distances -------------------------------------------------------------------------
def tiny_plr(n_items):
    torch.manual_seed(0)
    return build_model(ModelConfig(**TINY_PLR, n_items=n_items)).eval()


def test_stream_distances_are_zero_for_identical_streams_and_positive_otherwise():
    dataset, split = synthetic_data(n_items=50, max_events=25)
    model = tiny_plr(dataset.n_items)
    with torch.no_grad():
        model.triggers.copy_(model.triggers[0].expand_as(model.triggers))  # identical streams
    same = stream_summary(model, split.test)
    for point in (same["start"], *same["steps"], same["scored"]):
        assert point["cosine"] == pytest.approx(0, abs=1e-5)
        assert point["l2"] == pytest.approx(0, abs=1e-4)
        assert point["kl"] == pytest.approx(0, abs=1e-5)
        assert point["topk_identical"] == point["topk_overlap"] == 1.0
    with torch.no_grad():
        model.triggers.normal_(0.0, 3.0)  # clearly different starting points
    apart = stream_summary(model, split.test)
    assert len(apart["steps"]) == 2 and len(apart["gate_mean"]) == 3
    for point in (apart["start"], *apart["steps"]):
        assert point["cosine"] > 1e-3 and point["l2"] > 1e-2 and point["kl"] > 1e-4
        assert point["topk_overlap"] < 1.0
    assert sum(apart["gate_mean"]) == pytest.approx(1.0)


def test_stream_divergence_on_hand_made_vectors():
    v = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # one user, two orthogonal streams
    out = stream_divergence(v, lambda x: x, k=1)  # two "items": the coordinates
    assert out["cosine"].item() == pytest.approx(1.0)
    assert out["l2"].item() == pytest.approx(5 ** 0.5)
    assert out["topk_identical"].item() == 0.0 and out["kl"].item() > 0
    with pytest.raises(ValueError):
        stream_divergence(v[:, :1], lambda x: x)


def test_reasoning_states_are_the_inference_path_of_the_model():
    dataset, split = synthetic_data(n_items=50, max_events=25)
    model = tiny_plr(dataset.n_items)
    prefixes = [p for p, _ in split.test]
    (h0, states, gate), = list(reasoning_states(model, prefixes, batch_size=len(prefixes)))
    z = (gate.unsqueeze(-1) * states.mean(dim=2)).sum(1)
    from model.batches import eval_batch

    item_ids, seq_lens = eval_batch(prefixes, model.cfg.max_len)
    with torch.no_grad():
        expected = user_vectors(model, item_ids, seq_lens)
    assert torch.allclose(h0 + z, expected, atol=1e-5)


# -- 3 and 4. training runs ----------------------------------------------------------------------
BASE_MODEL = {k: v for k, v in TINY_PLR.items()}


def test_cells_share_runs_and_name_each_variant():
    grid, ablations = width_depth_cells(BASE_MODEL), ablation_cells(BASE_MODEL)
    assert len(grid) == 9 and run_key(grid["M=4, T=3"]) == "M4-T3"
    keys = {name: run_key(f) for name, f in ablations.items()}
    # the base has M=3, T=2 here: "full PLR" is the base itself, and so is grid cell M=3, T=2
    assert keys == {"full PLR": "M3-T2", "no gate (mean of streams)": "M3-T2-nogate",
                    "no GRR": "M3-T2-nogrr", "no RCL": "M3-T2-norcl",
                    "no dual-process (score z alone)": "M3-T2-nodual"}
    assert variant_name(ablations["no GRR"]) == "plr-M3-T2-nogrr"
    cells = analysis_cells(BASE_MODEL)
    assert cells["full PLR"] == BASE_MODEL and len(cells) == 14  # 9 cells + 5 ablations


def test_cells_read_the_grid_record_for_the_recipe_and_variant_records_otherwise(tmp_path):
    ranks = np.random.default_rng(0).integers(1, 40, size=50)
    write_json(tmp_path / "ml-100k" / "plr" / "seed1.json", fake_run("M3-T2", 1, ranks))
    no_grr = ablation_cells(BASE_MODEL)["no GRR"]
    write_json(tmp_path / "ml-100k" / variant_name(no_grr) / "seed2.json",
               fake_run("M3-T2-nogrr", 2, ranks, model_fields=no_grr))
    found = load_cells(ablation_cells(BASE_MODEL), BASE_MODEL, tmp_path, "ml-100k", [1, 2])
    assert [r["seed"] for r in found["full PLR"]["runs"]] == [1]
    assert [r["seed"] for r in found["no GRR"]["runs"]] == [2]
    assert found["no gate (mean of streams)"]["runs"] == []


# -- the report ------------------------------------------------------------------------------------
def fake_run(key, seed, ranks, streams=None, model_fields=None):
    """A hand-made run JSON (synthetic ranks, no training)."""
    ranks = np.asarray(ranks)
    ndcg = float(np.where(ranks <= 10, 1 / np.log2(ranks + 1), 0).mean())
    metrics = {"ndcg@10": ndcg, "recall@10": float((ranks <= 10).mean()),
               "recall@20": float((ranks <= 20).mean())}
    return {"key": key, "seed": seed, "test": metrics, "valid": metrics,
            "test_ranks": ranks.tolist(), "best_epoch": 3, "epochs_run": 5, "s_per_epoch": 2.0,
            "train_config": asdict(TrainConfig(**{**TINY_TRAIN, "epochs": 5})),
            "model_config": ModelConfig(**{**TINY_PLR, **(model_fields or {}), "n_items": 50})
            .to_dict(), "streams": streams}


def test_report_only_names_missing_and_partial_cells(tmp_path, monkeypatch):
    records, out = tmp_path / "runs", tmp_path / "docs" / "analyses.md"
    monkeypatch.setattr(analyses, "plr_recipe", lambda: (BASE_MODEL, TINY_TRAIN))
    ranks = np.random.default_rng(0).integers(1, 40, size=100)
    cell = width_depth_cells(BASE_MODEL)["M=1, T=2"]
    write_json(records / "ml-100k" / variant_name(cell) / "seed2020.json",
               fake_run("M1-T2", 2020, ranks, model_fields=cell))
    out.parent.mkdir(parents=True)
    (out.parent / "analyses").mkdir()
    (out.parent / "analyses" / "ablations.png").write_bytes(b"stale")
    analyses.main(["--report-only", "--records-dir", str(records), "--evaluations-dir",
                   str(tmp_path / "evaluations"), "--out", str(out), "--seeds", "2020,2021"])
    text = out.read_text()
    assert "| 1. robustness | not run |" in text and "| 2. stream distances | not run |" in text
    assert "0 of 9 cells complete, 1 partial, 8 not run" in text
    assert "| M=1, T=2 | 1 of 2 (partial) |" in text
    assert text.count("not run |") >= 8
    assert "## 4. Ablations" in text and "**Not run**: none of the 5 variants" in text
    assert (out.parent / "analyses" / "width_depth.png").exists()
    assert not (out.parent / "analyses" / "ablations.png").exists()  # no data: stale plot removed
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["width_depth"]["M=1, T=2"]["n"] == 1 and summary["robustness"] is None


def test_report_waits_for_the_plr_recipe(tmp_path, monkeypatch):
    monkeypatch.setattr(analyses, "plr_recipe", lambda: None)
    out = tmp_path / "analyses.md"
    analyses.main(["--report-only", "--records-dir", str(tmp_path), "--evaluations-dir",
                   str(tmp_path), "--out", str(out)])
    assert "| 3. width x depth | waiting for PLR's tuned recipe" in out.read_text()


def test_report_arithmetic_for_robustness_and_ablations(tmp_path):
    rng = np.random.default_rng(1)
    clean = rng.integers(1, 30, size=200)
    worse = clean + 4

    def model(kind, clean_ranks, corrupted_ranks):
        runs = [fake_run("", 0, r) for r in (clean_ranks, *corrupted_ranks)]
        return {"kind": kind, "drop_fraction": 0.3, "clean": runs[0]["test"],
                "checkpoint_test": runs[0]["test"], "corrupted": [r["test"] for r in runs[1:]],
                "clean_ranks": clean_ranks.tolist(),
                "corrupted_ranks": [r.tolist() for r in corrupted_ranks]}

    produced = {"date": "2026-01-01", "command": "python -m model.experiments.analyses",
                "torch_threads": 1, "hardware": {"cpu": "test cpu", "cores": 2, "gpu": None,
                                                 "torch": "x", "python": "3"}}
    robustness = {"produced": produced, "histories": {
        "max_len": 50, "mean_len": 10.0, "mean_len_corrupted": 7.0, "mean_window": 10.0,
        "mean_window_corrupted": 7.0, "share_full_window_corrupted": 0.0},
        "models": {"plr": model("plr", clean, [clean, clean]),
                   "sasrec": model("sasrec", clean, [worse, worse])}}
    full = {"key": "M2-T2", "runs": [fake_run("M2-T2", 1, clean)]}
    no_grr = {"key": "M2-T2-nogrr", "runs": [fake_run("M2-T2-nogrr", 1, worse)]}
    collected = {"robustness": robustness, "streams": None, "width_depth": {},
                 "ablations": {"full PLR": full, "no GRR": no_grr}, "seeds": [1],
                 "base": "base", "produced": produced, "grid": ((), ())}
    summary = render(collected, tmp_path / "analyses.md")
    rows = {r["model"]: r for r in summary["robustness"]["rows"]}
    assert rows["plr"]["rel_ndcg@10"] == 0.0 and rows["plr"]["p_clean_vs_corrupted"] == 1.0
    sasrec = robustness["models"]["sasrec"]
    expected = sasrec["corrupted"][0]["ndcg@10"] / sasrec["clean"]["ndcg@10"] - 1
    assert rows["sasrec"]["rel_ndcg@10"] == pytest.approx(expected) and expected < 0
    assert rows["sasrec"]["p_clean_vs_corrupted"] < 1e-3
    assert summary["robustness"]["plr_vs_sasrec"]["clean_rel_ndcg@10"] == pytest.approx(0.0)
    assert summary["robustness"]["plr_vs_sasrec"]["corrupted_rel_ndcg@10"] > 0
    assert summary["robustness"]["plr_vs_sasrec"]["drop_p"] < 1e-3  # only SASRec loses
    vs_full = summary["ablation_vs_full"]["no GRR"]
    assert vs_full["rel_ndcg@10"] < 0 and vs_full["p"] < 1e-3
    text = (tmp_path / "analyses.md").read_text()
    assert "PLR has no NDCG@10 lead over SASRec on clean histories" in text
    assert "| no GRR | 1 |" in text
    assert "PLR's relative NDCG@10 loss (+0.0 %) is smaller than SASRec's" in text
