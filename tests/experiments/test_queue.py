"""Tuning rounds, the selection rule and the queue's order, on hand-made records (no training)."""

import json

import pytest

from model.experiments import queue, recipes
from model.experiments.runs import write_json


def record(valid_ndcg, curve=None, **valid):
    """A hand-made candidate record: valid metrics at the best epoch and a validation curve."""
    metrics = {"ndcg@10": valid_ndcg, "recall@10": 0.1, "ndcg@20": 0.08, "recall@20": 0.2,
               **valid}
    curve = curve or [valid_ndcg]
    return {"valid": metrics, "history": [{"epoch": i + 1, "valid": v} for i, v in
                                          enumerate(curve)],
            "best_epoch": 1, "epochs_run": len(curve), "train_s": 60.0, "cpu_s": 60.0,
            "s_per_epoch": 1.0}


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(recipes, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(queue, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(queue, "LOCK_DIR", tmp_path / "locks")
    return tmp_path


def test_the_rule_takes_the_candidate_best_on_most_criteria_then_the_top5_mean():
    scores = {"a": dict(zip(recipes.CRITERIA, (0.07, 0.15, 0.09, 0.25, 0.065))),
              "b": dict(zip(recipes.CRITERIA, (0.069, 0.16, 0.095, 0.26, 0.066))),
              "c": dict(zip(recipes.CRITERIA, (0.06, 0.10, 0.08, 0.20, 0.06)))}
    winner, wins = recipes.choose(scores)
    assert winner == "b" and wins == {"a": 1, "b": 4, "c": 0}
    tie = {"a": dict(scores["a"], top5=0.070), "b": dict(scores["a"], top5=0.071)}
    assert recipes.choose(tie)[0] == "b"


def test_every_tuned_family_gets_sasrecs_number_of_candidates():
    assert len(recipes.SASREC_CANDIDATES) == recipes.N_CANDIDATES == 13
    for family in recipes.TUNED:
        assert len(recipes.ROUND_1[family]) + len(recipes.ROUND_2[family]) == 13
        names = [c.name for c in recipes.ROUND_1[family] + recipes.ROUND_2[family]]
        assert len(set(names)) == 13


def test_round_two_starts_from_round_ones_winner_and_the_recipe_from_all_thirteen(results_dir):
    first, complete = recipes.candidates("plr")
    assert len(first) == 7 and not complete and recipes.recipe("plr") is None
    for c in first:  # trig1-d0.35 is best on every criterion
        write_json(c.path, record(0.07 if c.id == "r1-trig1-d0.35" else 0.06))
    cands, complete = recipes.candidates("plr")
    assert complete and len(cands) == 13
    second = [c for c in cands if c.round_no == 2]
    assert all(c.based_on == "r1-trig1-d0.35" for c in second)
    assert all(c.model["dropout"] == 0.35 and c.model["trigger_std"] == 1.0 for c in second)
    m4t2 = next(c for c in second if c.id == "r2-M4T2")
    assert (m4t2.model["n_streams"], m4t2.model["n_steps"]) == (4, 2)
    assert m4t2.train["min_epochs"] == 40 and m4t2.train["patience"] == 10
    assert recipes.recipe("plr") is None  # round 2 has not run
    for c in second:
        best = c.id == "r2-M4T2"  # best on N@10, R@10 and the top-5 mean
        write_json(c.path, record(0.08 if best else 0.05, curve=[0.08 if best else 0.05],
                                  **{"recall@10": 0.12 if best else 0.1}))
    model, train = recipes.recipe("plr")
    assert model == m4t2.model and train == m4t2.train
    assert recipes.recipe("sasrec") == recipes.SASREC_RECIPE


def test_queue_order_waits_for_recipes_and_reuses_the_chosen_candidate(results_dir):
    states = {row["job"]: row["state"] for row in queue.describe()}
    ids = list(states)
    assert ids[:4] == ["ml-100k/sasrec/seed2020", "ml-100k/sasrec/seed2021",
                       "ml-100k/sasrec/seed2022", "tuning/plr/r1-base"]
    assert states["ml-100k/plr/seed2021"] == "waiting for a recipe"
    assert ids.index("tuning/plr/r1-base") < ids.index("tuning/rearec-erl/r1-base")
    assert ids.index("ml-100k/plr/seed2022") < ids.index("instacart/sasrec/seed2020")
    # every dataset's SASRec and PLR seeds come before the ReaRec baselines' tuning, seed 2020
    # on every dataset first
    for other in ("ml-latest-small", "instacart"):
        for model in ("sasrec", "plr"):
            for seed in (2020, 2021, 2022):
                assert (ids.index(f"{other}/{model}/seed{seed}")
                        < ids.index("tuning/rearec-erl/r1-base"))
            assert ids.index(f"{other}/{model}/seed2020") < ids.index("instacart/plr/seed2021")
    assert ids.index("tuning/rearec-erl/r1-base") < ids.index("instacart/rearec-erl/seed2020")
    assert len(ids) == len(set(ids))  # each job listed once
    job, lock, pending = queue.next_job()
    assert job.id == "ml-100k/sasrec/seed2020" and pending == len(ids)
    again, lock_2, _ = queue.next_job()  # the first is held (flock): the next worker moves on
    assert again.id == "ml-100k/sasrec/seed2021"
    lock.close(), lock_2.close()
    cands, _ = recipes.candidates("plr")
    for c in cands:
        write_json(c.path, record(0.07 if c.id == "r1-base" else 0.06))
    for c in recipes.candidates("plr")[0][7:]:
        write_json(c.path, record(0.05))
    states = {row["job"]: row["state"] for row in queue.describe()}
    assert states["ml-100k/plr/seed2020"] == "ready (copy of the chosen candidate)"
    assert states["ml-100k/plr/seed2021"] == "ready"
    assert states["ml-100k/plr-M1-T1/seed2020"] == "ready"  # the analyses now have a base


def test_pids_file_gets_one_line_per_worker_and_loses_it_when_the_worker_ends(tmp_path):
    import subprocess

    def group():  # a live process group of its own, as each queue worker is
        return subprocess.Popen(["sleep", "60"], start_new_session=True)

    other, first, second = group(), group(), group()
    gone = subprocess.Popen(["true"], start_new_session=True)
    gone.wait()  # a group that no longer exists: a supervisor killed without cleanup left it
    try:
        path = tmp_path / "train.pids"
        path.write_text(f"{other.pid}\n{gone.pid}\n")  # another engineer's job, a stale line
        queue._pids(str(path), add=first.pid)
        queue._pids(str(path), add=second.pid)
        queue._pids(str(path), remove=first.pid)
        assert path.read_text() == f"{other.pid}\n{second.pid}\n"
    finally:
        for proc in (other, first, second):
            proc.kill()
            proc.wait()


def test_a_failing_job_is_skipped_and_a_job_killed_for_memory_restarted(results_dir,
                                                                         monkeypatch, capsys):
    import argparse
    import os
    import resource
    import signal

    def fake_run(job, cache, threads, device="cpu"):  # runs in the job's own process
        if job.id.endswith("seed2020"):
            raise RuntimeError("boom")
        marker = job.path.with_suffix(".tried")
        if job.id.endswith("seed2022") and not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("")
            os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would, the first time only
        record = {"best_epoch": 1, "valid": {"ndcg@10": 0.05}, "train_s": 1.0, "pid": os.getpid(),
                  "rlimit_data": resource.getrlimit(resource.RLIMIT_DATA)[0]}
        write_json(job.path, record)
        return record

    monkeypatch.setattr(queue, "run_job", fake_run)
    monkeypatch.setattr(queue, "rebuild_reports", lambda: [])
    # only the three SASRec jobs exist in this queue
    monkeypatch.setattr(queue, "all_jobs",
                        lambda: [queue.grid_job("ml-100k", "sasrec", s) for s in queue.SEEDS])
    queue.work(argparse.Namespace(nice=0, threads=1, poll=0.0, commit=False))
    done = json.loads(queue.grid_job("ml-100k", "sasrec", 2021).path.read_text())
    # trained in a process of its own, which gave its memory back when it ended, under a cap
    assert done["pid"] != os.getpid()
    assert done["rlimit_data"] == queue.job_memory_limit()
    out = capsys.readouterr().out
    assert "FAILED ml-100k/sasrec/seed2020" in out and "RuntimeError: boom" in out
    assert "done ml-100k/sasrec/seed2021" in out
    # killed for memory: restarted (it resumes at its last epoch), not skipped
    assert "ml-100k/sasrec/seed2022 ran out of memory" in out and "restarting it" in out
    assert "done ml-100k/sasrec/seed2022" in out
    assert "except failed ones ['ml-100k/sasrec/seed2020']" in out


def test_only_memory_failures_count_as_out_of_memory():
    assert queue.out_of_memory(RuntimeError("job x failed in its process (exit code -9): killed, "
                                            "e.g. out of memory"))
    assert queue.out_of_memory(RuntimeError("...\nRuntimeError: [enforce fail at alloc_cpu.cpp] "
                                            "DefaultCPUAllocator: can't allocate memory"))
    assert queue.out_of_memory(RuntimeError("...\nMemoryError\n"))
    assert not queue.out_of_memory(RuntimeError("...\nValueError: bad recipe"))


def test_tuning_report_shows_validation_numbers_only_and_counts_candidates(results_dir):
    from model.experiments import tuning

    first, _ = recipes.candidates("rearec-prl")
    rec = record(0.0712, curve=[0.05, 0.0712, 0.07])
    rec["test"] = {"ndcg@10": 0.0999}  # present in the record, never shown
    write_json(first[0].path, rec)
    out = results_dir / "tuning.md"
    tuning.build_report(out)
    text = out.read_text()
    assert "| rearec-prl | 1 of 13 | not yet |" in text and "| plr | 0 of 13 | not yet |" in text
    assert "| r1-base | (none) | 0.0712 |" in text and "0.0999" not in text
    assert "| r2-T3 | round 1's winner + n_steps=3 |" in text


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/autogroup"),
                    reason="Linux autogroups only")
def test_a_worker_in_its_own_session_nices_its_autogroup_and_a_process_in_another_does_not():
    # Autogroups share the CPU before nice counts: a worker's nice must reach its autogroup.
    import subprocess
    import sys

    # A process in the kernel's default autogroup (no setsid anywhere in its lineage, as in some
    # CI containers) reads an empty file: compare the whole text, never index into it.
    code = ("from model.experiments.queue import lower_priority; lower_priority(7); "
            "print(open('/proc/self/autogroup').read().strip())")
    leader = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            start_new_session=True, check=True)
    assert leader.stdout.strip().endswith("nice 7")
    with open("/proc/self/autogroup") as f:
        ours = f.read().strip()
    member = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert member.stdout.strip() == ours  # the caller's session is left as it was
