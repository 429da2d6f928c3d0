"""Unfinished runs' training states parked in the repository and restored on the next machine
(model/experiments/parked.py); the queue's commit of a record also removes its parked copy.
Files here are hand-made bytes (no training)."""

import subprocess

from model.experiments import parked, queue


def _dirs(tmp_path):
    return tmp_path / "runs" / "state", tmp_path / "results", tmp_path / "results" / "parked"


def _write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_park_carries_unfinished_runs_and_drops_finished_ones(tmp_path):
    state, results, parked_dir = _dirs(tmp_path)
    _write(state / "tuning/plr/a.pt", b"epoch 7 of a")  # unfinished
    _write(state / "runs/ml-100k/plr/seed2020.pt", b"epoch 3")  # unfinished
    _write(state / "tuning/plr/b.pt", b"stale")  # finished: its record exists
    _write(results / "tuning/plr/b.json", b"{}")
    _write(parked_dir / "tuning/plr/c.pt", b"parked earlier")  # finished since it was parked
    _write(results / "tuning/plr/c.json", b"{}")

    changed = parked.park(state, results, parked_dir)

    assert sorted(p.relative_to(parked_dir).as_posix() for p in changed) == [
        "runs/ml-100k/plr/seed2020.pt", "tuning/plr/a.pt", "tuning/plr/c.pt"]
    assert (parked_dir / "tuning/plr/a.pt").read_bytes() == b"epoch 7 of a"
    assert not (parked_dir / "tuning/plr/b.pt").exists()
    assert not (parked_dir / "tuning/plr/c.pt").exists()  # removed: part of what to commit
    assert not list(parked_dir.rglob("*.tmp"))


def test_unpark_restores_only_missing_states_of_unfinished_runs(tmp_path):
    state, results, parked_dir = _dirs(tmp_path)
    _write(parked_dir / "tuning/plr/a.pt", b"parked a")  # fresh machine: restored
    _write(parked_dir / "tuning/plr/b.pt", b"parked b")  # this machine has a newer state
    _write(state / "tuning/plr/b.pt", b"local b")
    _write(parked_dir / "tuning/plr/c.pt", b"parked c")  # finished: nothing to resume
    _write(results / "tuning/plr/c.json", b"{}")

    restored = parked.unpark(state, results, parked_dir)

    assert restored == [state / "tuning/plr/a.pt"]
    assert (state / "tuning/plr/a.pt").read_bytes() == b"parked a"
    assert (state / "tuning/plr/b.pt").read_bytes() == b"local b"
    assert not (state / "tuning/plr/c.pt").exists()
    assert parked.unpark(state, results, parked_dir) == []  # idempotent


def test_drop_removes_the_parked_copy_of_a_finished_run(tmp_path):
    _, results, parked_dir = _dirs(tmp_path)
    _write(parked_dir / "tuning/plr/a.pt", b"parked a")
    record = results / "tuning/plr/a.json"
    _write(record, b"{}")
    assert parked.drop(record, results, parked_dir) == [parked_dir / "tuning/plr/a.pt"]
    assert not (parked_dir / "tuning/plr/a.pt").exists()
    assert parked.drop(record, results, parked_dir) == []


def test_commit_records_a_new_file_and_the_removal_of_a_tracked_one(tmp_path, monkeypatch):
    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True,
                              text=True).stdout

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    _write(tmp_path / "parked/a.pt", b"parked a")
    _write(tmp_path / "other.txt", b"left alone")
    git("add", "parked/a.pt")
    git("commit", "-q", "-m", "park")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "parked/a.pt").unlink()
    _write(tmp_path / "record.json", b"{}")

    queue.commit([tmp_path / "record.json", tmp_path / "parked/a.pt",
                  tmp_path / "never-tracked.pt"], "record")

    assert git("ls-files").split() == ["record.json"]  # the copy's removal rode along
    assert git("status", "--porcelain").split() == ["??", "other.txt"]
