"""The default serving checkpoints: trained with the validated recipes, as the grid's seed-2020 run
(the recipe records are the committed ones; the training test runs on SYNTHETIC data)."""

import json

import pytest

from model.checkpoint import load
from model.experiments import default_models, queue
from model.experiments.recipes import TUNING_DATASET, TUNING_SEED
from experiment_helpers import synthetic_data


@pytest.mark.parametrize("name", ["sasrec", "plr"])
def test_a_serving_run_is_the_grids_seed_2020_run_of_the_validated_recipe(name):
    grid = queue.grid_job(TUNING_DATASET, name, TUNING_SEED).spec()
    assert grid is not None, f"{name}'s recipe is chosen (its tuning records are committed)"
    assert default_models.serving_spec(name).identity() == grid.identity()


def test_without_a_validated_recipe_it_refuses_before_training(monkeypatch):
    monkeypatch.setattr(default_models, "recipe", lambda name: None)
    monkeypatch.setattr(default_models, "load_data",
                        lambda spec: pytest.fail("loaded data before checking the recipe"))
    with pytest.raises(ValueError, match="no validated recipe for 'plr'"):
        default_models.main(["--out", "unused", "--models", "plr"])


def test_it_writes_a_loadable_checkpoint_with_its_recipe_and_keeps_it_unless_forced(
        tmp_path, monkeypatch, capsys):
    tiny = ({"kind": "plr", "d_model": 16, "n_heads": 2, "d_ff": 32, "max_len": 8,
             "n_streams": 2, "n_steps": 2, "rcl_weight": 0.1},
            {"stride": 0, "epochs": 2, "patience": 1, "min_epochs": 0, "batch_size": 16})
    monkeypatch.setattr(default_models, "recipe", lambda name: tiny)
    monkeypatch.setattr(default_models, "load_data", lambda spec: synthetic_data())
    monkeypatch.setattr(default_models, "STATE_DIR", tmp_path / "state")
    default_models.main(["--out", str(tmp_path / "models"), "--models", "plr"])
    out = tmp_path / "models" / "plr"
    checkpoint = load(out)
    assert checkpoint.version == (out / "version.txt").read_text().strip()
    train_config = json.loads((out / "train_config.json").read_text())
    assert train_config["recipe"] == {"model": tiny[0], "train": {**tiny[1], "seed": 2020}}
    assert train_config["seed"] == 2020 and not train_config["progress"]
    assert not list((tmp_path / "state").rglob("*.pt")), "the resumable state is removed when done"
    before = (out / "weights.pt").read_bytes()
    default_models.main(["--out", str(tmp_path / "models"), "--models", "plr"])
    assert "exists, kept" in capsys.readouterr().out
    assert (out / "weights.pt").read_bytes() == before
