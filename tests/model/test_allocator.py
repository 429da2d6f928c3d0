"""Which malloc training runs on (model/allocator.py): the search and its override, the
environment a started process gets, and (where the machine has jemalloc) that a run on it is
really on it and computes bit-for-bit the same weights as on the system malloc."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from model.allocator import (JEMALLOC_CONF, STARTED, find_jemalloc, jemalloc_active,
                             with_jemalloc, without_jemalloc)

ROOT = Path(__file__).resolve().parents[2]

# A short PLR training on synthetic data (dropout on: the random draws are part of what must
# match), then the digest of every weight's bytes and what the process ran on.
TRAIN = """
import hashlib, sys
sys.path.insert(0, sys.argv[1])
from model.allocator import jemalloc_active
from model.config import ModelConfig
from model.data import build_dataset, leave_one_out
from model.data import InteractionLog
from model.train import TrainConfig, keep_freed_memory, train
import numpy as np
rng = np.random.default_rng(0)  # synthetic users walking item ids upward from random starts
rows = [(f"u{u}", f"i{(start + t) % 200}", float(t)) for u in range(60)
        for start, n in [rng.integers(200, size=2) % [200, 21] + [0, 4]] for t in range(n)]
dataset = build_dataset(InteractionLog(*map(np.array, zip(*rows)), name="synthetic"))
cfg = ModelConfig(kind="plr", d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=20,
                  dropout=0.2, n_streams=2, n_steps=2)
tc = TrainConfig(epochs=2, patience=2, batch_size=16, progress=False, num_threads=1, seed=7)
model, _ = train(cfg, tc, dataset, leave_one_out(dataset))
digest = hashlib.sha256()
for name, tensor in sorted(model.state_dict().items()):
    digest.update(name.encode() + tensor.detach().contiguous().numpy().tobytes())
print(digest.hexdigest(), jemalloc_active(), keep_freed_memory())
"""


def _env(**overrides) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "MALLOC_CONF", "PLR_JEMALLOC")}
    return {**env, **overrides}


def test_an_empty_override_means_the_system_malloc_and_a_missing_file_is_an_error(tmp_path):
    assert find_jemalloc({"PLR_JEMALLOC": ""}) is None
    assert with_jemalloc({"PLR_JEMALLOC": "", "A": "b"}) == {"PLR_JEMALLOC": "", "A": "b"}
    with pytest.raises(ValueError, match="PLR_JEMALLOC=.*is not a file"):
        find_jemalloc({"PLR_JEMALLOC": str(tmp_path / "nope.so")})


def test_a_started_process_gets_the_library_preloaded_before_any_it_had(tmp_path):
    library = tmp_path / "libjemalloc.so.2"
    library.write_bytes(b"")
    env = with_jemalloc({"PLR_JEMALLOC": str(library), "LD_PRELOAD": "/opt/other.so"})
    assert env["LD_PRELOAD"] == f"{library} /opt/other.so"
    assert env["MALLOC_CONF"] == JEMALLOC_CONF
    mine = with_jemalloc({"PLR_JEMALLOC": str(library), "MALLOC_CONF": "narenas:1"})
    assert mine["MALLOC_CONF"] == "narenas:1"  # a user's own tuning is kept


def test_this_test_process_runs_on_the_system_malloc():
    assert jemalloc_active() is ("jemalloc" in os.environ.get("LD_PRELOAD", ""))


@pytest.mark.skipif(find_jemalloc(_env()) is None,
                    reason="no jemalloc on this machine (apt-get install libjemalloc2)")
def test_training_on_jemalloc_computes_the_same_weights_bit_for_bit():
    def run(env):
        done = subprocess.run([sys.executable, "-c", TRAIN, str(ROOT)], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.split()

    system = run(_env(PLR_JEMALLOC=""))
    jemalloc = run(with_jemalloc(_env()))
    assert system[1:] == ["False", "True"]  # glibc: its malloc tuning applies
    assert jemalloc[1:] == ["True", "False"]  # really preloaded; glibc's tuning then skipped
    assert jemalloc[0] == system[0]


def test_a_child_that_keeps_its_own_malloc_loses_only_the_jemalloc_preload():
    env = {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2 /opt/other.so", "MALLOC_CONF": "x",
           STARTED: "1", "PATH": "/bin"}
    assert without_jemalloc(env) == {"LD_PRELOAD": "/opt/other.so", "PATH": "/bin"}
    assert without_jemalloc({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}) == {}
    assert without_jemalloc({"PATH": "/bin", "MALLOC_CONF": "mine"}) == {
        "PATH": "/bin", "MALLOC_CONF": "mine"}  # not ours: left alone


PROBE = """
import sys
from model.allocator import exec_on_jemalloc, jemalloc_active
exec_on_jemalloc("probe", sys.argv[1:])
print(jemalloc_active(), sys.argv[1:])
"""


@pytest.mark.parametrize("choice", ["found", "none"])
def test_a_command_restarts_itself_on_jemalloc_once_with_its_arguments(tmp_path, choice):
    found = find_jemalloc(_env())
    if choice == "found" and found is None:
        pytest.skip("no jemalloc on this machine (apt-get install libjemalloc2)")
    (tmp_path / "probe.py").write_text(PROBE)
    env = _env(PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    if choice == "none":
        env["PLR_JEMALLOC"] = ""
    done = subprocess.run([sys.executable, "-m", "probe", "--a", "b c"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{choice == 'found'} ['--a', 'b c']"]
