"""End-to-end training on a tiny synthetic dataset: library call, CLI, errors, 2-process DDP."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model import load
from model.config import ModelConfig
from model.data import InteractionLog, build_dataset, leave_one_out
from model.registry import build_model
from model.train import LossModule, TrainConfig, main, train

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--d-ff", "32", "--max-len", "10",
        "--epochs", "2", "--batch-size", "16", "--no-progress", "--num-threads", "1"]


def synthetic_log(n_users=40, n_items=30, seed=0) -> InteractionLog:
    """Synthetic users walking item ids upward (i -> i+1 mod n_items) from random starts."""
    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    for u in range(n_users):
        start, length = rng.integers(n_items), rng.integers(4, 25)
        for t in range(length):
            users.append(f"u{u}")
            items.append(f"i{(start + t) % n_items}")
            times.append(float(t))
    return InteractionLog(np.array(users), np.array(items), np.array(times), name="synthetic")


@pytest.fixture
def synthetic_csv(tmp_path):
    log = synthetic_log()
    path = tmp_path / "synthetic.csv"
    rows = ["user,item,ts"] + [f"{u},{i},{t}" for u, i, t in zip(*[log.user_ids, log.item_ids,
                                                                      log.timestamps])]
    path.write_text("\n".join(rows) + "\n")
    return f"csv:{path}?user=user&item=item&time=ts"


def test_library_training_learns_the_synthetic_pattern():
    dataset = build_dataset(synthetic_log())
    split = leave_one_out(dataset)
    cfg = ModelConfig(kind="sasrec", d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=10,
                      dropout=0.0)
    tc = TrainConfig(epochs=40, patience=40, batch_size=16, lr=1e-2, progress=False, num_threads=1)
    model, metrics = train(cfg, tc, dataset, split)
    assert metrics["test"]["recall@10"] > 0.8  # chance is 10/30
    assert 1 <= metrics["best_epoch"] <= metrics["epochs_run"] == len(metrics["history"])
    assert len(metrics["test_ranks"]) == len(split.test)
    assert metrics["time_to_best_s"] <= metrics["train_s"]


def test_training_hands_freed_memory_back_after_every_epoch(monkeypatch):
    import model.train as training

    calls = []
    monkeypatch.setattr(training, "release_freed_memory", lambda: calls.append(1) or True)
    dataset = build_dataset(synthetic_log())
    cfg = ModelConfig(kind="sasrec", d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=10)
    tc = TrainConfig(epochs=3, patience=3, batch_size=16, progress=False, num_threads=1)
    _, metrics = train(cfg, tc, dataset, leave_one_out(dataset))
    assert len(calls) == metrics["epochs_run"] == 3


def test_cli_writes_a_checkpoint_that_loads(tmp_path, synthetic_csv):
    metrics = main(["--dataset", synthetic_csv, "--model", "sasrec", "--out",
                    str(tmp_path / "run"), *TINY])
    ckpt = load(tmp_path / "run")
    assert ckpt.config.d_model == 16 and ckpt.config.n_items == 30
    assert ckpt.metrics["test"] == metrics["test"]
    assert ckpt.train_config["dataset"] == synthetic_csv
    assert set(ckpt.metrics["valid"]) >= {"ndcg@10", "masked_ndcg@10", "recall@20"}


def test_unknown_model_or_dataset_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--dataset", "ml-100k", "--model", "gpt5", "--out", str(tmp_path / "x")])
    assert "invalid choice: 'gpt5'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--dataset", "no-such-data", "--model", "sasrec", "--out", str(tmp_path / "x")])
    assert "unknown dataset 'no-such-data'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown train config fields"):
        TrainConfig.from_dict({"learning_rate": 1.0})


def test_two_process_ddp_run_writes_one_checkpoint(tmp_path, synthetic_csv):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "model.train", "--dataset", synthetic_csv, "--model", "sasrec", "--out", str(out),
           "--device", "cpu", *TINY]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = load(out)
    assert ckpt.metrics["world_size"] == 2 and ckpt.train_config["world_size"] == 2
    # one checkpoint, written by rank 0 alone, and no temp directories left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "synthetic.csv"]


def test_min_epochs_holds_off_early_stopping():
    dataset = build_dataset(synthetic_log())
    split = leave_one_out(dataset)
    cfg = ModelConfig(kind="sasrec", d_model=8, n_layers=1, n_heads=1, d_ff=16, max_len=10)
    # lr 1e-9: validation never improves after epoch 1, so patience 1 alone would stop at 2
    tc = TrainConfig(epochs=6, patience=1, min_epochs=5, batch_size=16, lr=1e-9, progress=False,
                     num_threads=1)
    _, metrics = train(cfg, tc, dataset, split)
    assert metrics["epochs_run"] == 5
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0).validate()


def test_weight_average_is_what_gets_scored_and_kept():
    dataset = build_dataset(synthetic_log())
    split = leave_one_out(dataset)
    cfg = ModelConfig(kind="sasrec", d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=10,
                      dropout=0.0)
    tc = TrainConfig(epochs=30, patience=30, batch_size=16, lr=1e-2, ema_decay=0.9,
                     progress=False, num_threads=1)
    model, metrics = train(cfg, tc, dataset, split)
    assert metrics["test"]["recall@10"] > 0.8  # the averaged weights still learn the pattern
    from model.evaluate import evaluate
    # the returned model holds the averaged best state: re-scoring it reproduces the metrics
    assert evaluate(model, split.test).metrics == pytest.approx(metrics["test"])


def test_weight_average_warms_up_then_tracks_the_decay():
    import torch

    from model.train import WeightAverage
    net = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(net.weight)
    avg = WeightAverage(net, decay=0.5)
    with torch.no_grad():
        net.weight.fill_(1.0)
    avg.update()  # step 0: decay min(0.5, 1/10) = 0.1 -> 0.9 of the way to the live weights
    assert avg.model.weight[0, 0].item() == pytest.approx(0.9)
    for _ in range(20):
        avg.update()
    assert avg.model.weight[0, 0].item() == pytest.approx(1.0, abs=1e-5)
    assert not avg.model.weight.requires_grad


def test_cosine_schedule_decays_to_zero_over_the_horizon():
    from model.train import lr_factor
    assert lr_factor("constant", 0.7) == 1.0
    assert lr_factor("cosine", 0.0) == pytest.approx(1.0)
    assert lr_factor("cosine", 0.5) == pytest.approx(0.5)
    assert lr_factor("cosine", 1.0) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step").validate()


def test_cosine_schedule_drives_the_optimizer_lr():
    import torch

    from model.batches import TrainBatches
    from model.train import train_epoch
    dataset = build_dataset(synthetic_log())
    split = leave_one_out(dataset)
    net = build_model(ModelConfig(kind="sasrec", n_items=dataset.n_items, d_model=8, n_layers=1,
                                  n_heads=1, d_ff=16, max_len=10))
    seen = []

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(self.param_groups[0]["lr"])
            return super().step(closure)

    opt = Recording(net.parameters(), lr=0.5)
    batches = TrainBatches(split.train, 10, 16, seed=0)
    train_epoch(LossModule(net), opt, batches, 1, "cpu", False, lr_at=lambda f: 0.5 * (1 - f))
    assert seen[0] == 0.5 and all(a > b for a, b in zip(seen, seen[1:])) and len(seen) > 2


def test_a_resumed_run_ends_exactly_as_an_uninterrupted_one(tmp_path, monkeypatch):
    """Synthetic data. Dropout, a weight average and PLR's sampled regulariser prefixes all draw
    random numbers: the saved state must restore every stream for the runs to match bit for bit."""
    import torch

    import model.train as training
    dataset = build_dataset(synthetic_log())
    split = leave_one_out(dataset)
    cfg = ModelConfig(kind="plr", d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=10,
                      dropout=0.2, n_streams=2, n_steps=2, rcl_weight=0.1, reg_prefixes=2)
    tc = TrainConfig(epochs=4, patience=10, batch_size=16, lr=1e-2, ema_decay=0.9,
                     progress=False, num_threads=1)
    whole_model, whole = train(cfg, tc, dataset, split, state_path=tmp_path / "whole.pt")

    real_epoch, calls = training.train_epoch, []

    def dies_in_epoch_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the machine went away during epoch 3
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(training, "train_epoch", dies_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tc, dataset, split, state_path=tmp_path / "cut.pt")
    monkeypatch.setattr(training, "train_epoch", real_epoch)
    resumed_model, resumed = train(cfg, tc, dataset, split, state_path=tmp_path / "cut.pt")

    assert resumed["resumed_from"] == 2 and whole["resumed_from"] == 0
    assert resumed["test_ranks"] == whole["test_ranks"]
    assert resumed["test"] == whole["test"] and resumed["best_epoch"] == whole["best_epoch"]
    strip = lambda h: [{k: v for k, v in e.items() if k not in ("elapsed_s", "cpu_s")}  # noqa: E731
                       for e in h]
    assert strip(resumed["history"]) == strip(whole["history"])
    for name, tensor in whole_model.state_dict().items():
        assert torch.equal(tensor, resumed_model.state_dict()[name]), name
    # a finished run's state resumes to the same answer without training again
    again_model, again = train(cfg, tc, dataset, split, state_path=tmp_path / "cut.pt")
    assert again["test_ranks"] == whole["test_ranks"] and again["resumed_from"] == 4
    # a state saved by another configuration is refused, never mixed in
    with pytest.raises(ValueError, match="another configuration"):
        train(cfg, TrainConfig(**{**tc.__dict__, "lr": 5e-3}), dataset, split,
              state_path=tmp_path / "cut.pt")
