"""A run record end to end on SYNTHETIC data (tiny PLR, 2 epochs): what it holds, where its
scratch state lives, and that a record of another configuration is refused."""

import json

import pytest

from experiment_helpers import synthetic_data
from model.experiments import runs
from model.experiments.runs import RunSpec, execute, read_record

TINY_PLR = dict(kind="plr", d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=10,
                dropout=0.1, n_streams=2, n_steps=2, rcl_weight=0.1)
TINY_TRAIN = dict(epochs=2, patience=5, batch_size=16, seed=3)


@pytest.fixture
def places(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "RESULTS_DIR", tmp_path / "docs" / "results")
    monkeypatch.setattr(runs, "STATE_DIR", tmp_path / "runs" / "state")
    monkeypatch.setattr(runs, "DATASETS", {"synthetic": 0})
    return tmp_path


def test_a_run_writes_its_record_and_leaves_no_scratch_state(places):
    data = synthetic_data()
    spec = RunSpec("synthetic", TINY_PLR, TINY_TRAIN, label="test plr")
    path = runs.RESULTS_DIR / "runs" / "synthetic" / "plr" / "seed3.json"
    record = execute(spec, data, path)
    assert json.loads(path.read_text()) == record
    assert not runs.state_path(path).exists()  # deleted once the record exists
    assert record["epochs_run"] == 2 and len(record["history"]) == 2
    assert set(record["history"][0]["valid_metrics"]) == {"ndcg@10", "recall@10", "ndcg@20",
                                                          "recall@20"}
    assert len(record["test_ranks"]) == len(record["test_masked_ranks"]) == len(data[1].test)
    assert record["cpu_s"] > 0 and record["produced"]["hardware"]["torch"]
    assert record["split_digest"] == runs.split_digest(data[1].test)
    assert len(record["streams"]["steps"]) == 2  # stream distances of the trained PLR
    assert not {"state", "weights", "model", "optimizer"} & set(record)  # no weights kept
    assert read_record(path, spec) == record
    other = RunSpec("synthetic", {**TINY_PLR, "rcl_weight": 0.3}, TINY_TRAIN)
    with pytest.raises(ValueError, match="another configuration"):
        read_record(path, other)


def test_a_run_resumes_from_its_scratch_state(places, monkeypatch):
    import model.train as training

    data = synthetic_data()
    spec = RunSpec("synthetic", TINY_PLR, TINY_TRAIN)
    whole = execute(spec, data, runs.RESULTS_DIR / "whole.json")
    real_epoch, calls = training.train_epoch, []

    def dies_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    cut = runs.RESULTS_DIR / "cut.json"
    monkeypatch.setattr(training, "train_epoch", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        execute(spec, data, cut)
    assert runs.state_path(cut).exists() and not cut.exists()
    monkeypatch.setattr(training, "train_epoch", real_epoch)
    resumed = execute(spec, data, cut)
    assert resumed["resumed_from"] == 1
    assert resumed["test_ranks"] == whole["test_ranks"] and resumed["valid"] == whole["valid"]
