"""Checkpoint round trip, content-hash version, and clear errors for broken files (synthetic)."""

import json

import numpy as np
import pytest
import torch

from model import load
from model.checkpoint import save_checkpoint
from model.config import ModelConfig
from model.data import ItemVocab
from model.registry import build_model

N_ITEMS = 50


def tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(kind="sasrec", n_items=N_ITEMS, d_model=16, n_heads=2, d_ff=32, max_len=10)
    return build_model(cfg).eval()


def save(path, model):
    vocab = ItemVocab([f"item{i}" for i in range(N_ITEMS)])
    titles = {1: "Synthetic One", 2: "Synthetic Two"}
    popularity = np.arange(N_ITEMS + 1)
    return save_checkpoint(path, model, vocab, titles, popularity, {"seed": 1}, {"ndcg@10": 0.5})


def test_round_trip_gives_the_same_scores(tmp_path):
    model = tiny_model()
    version = save(tmp_path / "ckpt", model)
    ckpt = load(tmp_path / "ckpt")
    items, lens = torch.tensor([[3, 9, 4, 0]]), torch.tensor([3])
    torch.testing.assert_close(ckpt.model.predict(items, lens), model.predict(items, lens))
    assert not ckpt.model.training
    assert ckpt.version == version and len(version) == 16
    assert ckpt.vocab.to_external([1]) == ["item0"]
    assert ckpt.titles == {1: "Synthetic One", 2: "Synthetic Two"}
    assert ckpt.popularity.tolist() == list(range(N_ITEMS + 1))
    assert ckpt.metrics == {"ndcg@10": 0.5} and ckpt.train_config == {"seed": 1}
    assert ckpt.config == model.cfg


def test_version_is_stable_and_follows_the_weights(tmp_path):
    model = tiny_model()
    first = save(tmp_path / "a", model)
    assert save(tmp_path / "b", model) == first
    assert save(tmp_path / "a", model) == first  # overwriting in place works
    with torch.no_grad():
        model.encoder.item_emb.weight[5, 0] += 1e-3
    assert save(tmp_path / "c", model) != first
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp dirs left


@pytest.mark.parametrize("name", ["weights.pt", "model_config.json", "vocab.json", "version.txt",
                                  "popularity.npy", "metrics.json", "train_config.json"])
def test_missing_file_is_named(tmp_path, name):
    save(tmp_path / "ckpt", tiny_model())
    (tmp_path / "ckpt" / name).unlink()
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        load(tmp_path / "ckpt")


@pytest.mark.parametrize("name", ["weights.pt", "model_config.json", "vocab.json", "metrics.json"])
def test_corrupt_file_is_named(tmp_path, name):
    save(tmp_path / "ckpt", tiny_model())
    (tmp_path / "ckpt" / name).write_bytes(b"\x00not what it should be")
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        load(tmp_path / "ckpt")


def test_weights_swapped_behind_the_version_are_detected(tmp_path):
    save(tmp_path / "a", tiny_model(seed=0))
    save(tmp_path / "b", tiny_model(seed=1))
    (tmp_path / "a" / "weights.pt").write_bytes((tmp_path / "b" / "weights.pt").read_bytes())
    with pytest.raises(ValueError, match="version.txt"):
        load(tmp_path / "a")


def test_config_that_does_not_fit_the_weights_is_an_error(tmp_path):
    save(tmp_path / "ckpt", tiny_model())
    path = tmp_path / "ckpt" / "model_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "d_model": 32, "n_heads": 2}))
    with pytest.raises(ValueError, match="weights.pt"):
        load(tmp_path / "ckpt")


def test_missing_directory_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["plr", "sasrec"])
def test_the_committed_default_checkpoints_still_load_with_their_published_version(name):
    # Adding a config option must not change (and so invalidate) a published checkpoint's version.
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "artifacts" / "models" / name
    assert load(path).version == (path / "version.txt").read_text().strip()


def test_a_new_option_changes_the_version_only_when_set():
    from model.checkpoint import content_version

    vocab = ItemVocab([f"i{i}" for i in range(1, 6)])
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="plr", n_items=5, d_model=8, n_heads=2, d_ff=16))
    state = model.state_dict()
    base = content_version(state, model.cfg, vocab)
    from dataclasses import replace
    assert content_version(state, replace(model.cfg, trigger_std=0.0), vocab) == base
    assert content_version(state, replace(model.cfg, trigger_std=1.0), vocab) != base
