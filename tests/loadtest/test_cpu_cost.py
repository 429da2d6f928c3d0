"""loadtest/cpu_cost.py: CPU accounting from /proc, the round-by-round summary on hand-made
samples, and one real measurement (a second or two) against the empty app under uvicorn."""

import json
import math
import subprocess
import sys

import pytest

from loadtest import cpu_cost, procs
from loadtest.workload import PoolSpec, build_workload, dataset_sequences

from test_loadtest import synthetic_dataset  # the same labelled synthetic users

BURN = ("import threading, time\n"
        "def burn():\n"
        "    end = time.process_time() + 0.3\n"
        "    while time.process_time() < end: pass\n"
        "t = threading.Thread(target=burn); t.start(); t.join()\n"
        "import subprocess; child = subprocess.Popen(['sleep', '30'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(30)\n")


def test_cpu_time_counts_every_thread_and_the_child_processes_are_found():
    proc = subprocess.Popen([sys.executable, "-c", BURN], stdout=subprocess.PIPE, text=True)
    try:
        child = int(proc.stdout.readline())
        # 0.3 s burnt on a second thread, which has ended since, is counted
        assert cpu_cost.cpu_ns([proc.pid]) >= 0.25e9
        assert cpu_cost.children(proc.pid) == [child]
        assert cpu_cost.cpu_ns([child]) < 0.1e9
        assert cpu_cost.cpu_ns([2 ** 22 + 17]) == 0  # no such process: nothing, no error
    finally:
        proc.kill()
        proc.wait()


def _samples(per_round: dict) -> dict:
    return {key: [{"n": 100, "errors": 0, "server_us": total - redis, "redis_us": redis,
                   "total_us": total, "p50_ms": 1.0} for total, redis in rounds]
            for key, rounds in per_round.items()}


def test_the_comparison_is_the_median_of_each_rounds_own_ratio():
    # Round 2 is slow for everyone: a ratio of medians would mix rounds, the per-round ratios
    # (1.2, 1.1, 1.0) do not.
    samples = _samples({
        ("floor", "/recommend"): [(100, 0), (300, 0), (100, 0)],
        ("plr", "/recommend"): [(200, 20), (600, 60), (200, 20)],
        ("plr", "/events"): [(600, 100), (2200, 300), (500, 100)],
        ("sasrec", "/recommend"): [(200, 20), (600, 60), (200, 20)],
        ("sasrec", "/events"): [(500, 100), (2000, 300), (500, 100)],
    })
    out = cpu_cost.summarize(samples, ["plr", "sasrec"], 3, 1.0, 4)
    assert out["ratios"]["plr/sasrec"]["/events"][1] == pytest.approx(1.1)
    assert out["ratios"]["plr/sasrec"]["/recommend"][1] == pytest.approx(1.0)
    # one core at 1:1: two requests per (event + recommend) CPU, the median round's
    assert out["capacity_rps"]["sasrec"] == pytest.approx(2e6 / 700)
    assert out["capacity_rps"]["plr"] == pytest.approx(2e6 / 800)
    assert out["capacity_rps"]["floor"] == pytest.approx(1e6 / 100)
    zero = cpu_cost.summarize(_samples({(m, route): [(0, 0), (0, 0)] for m in ("a", "b")
                                        for route in ("/events", "/recommend")}),
                              ["a", "b"], 2, 0.1, 1)  # rounds too short for a tick: no ratio
    assert math.isnan(zero["ratios"]["a/b"]["/events"][1]) and math.isnan(zero["capacity_rps"]["a"])
    row = next(r for r in out["rows"] if r["target"] == "plr" and r["route"] == "/events")
    assert (row["total_us"], row["redis_us"], row["server_us"]) == (600, 100, 500)
    assert row["total_us_rounds"] == [600, 2200, 500] and row["n"] == 300


def test_compared_models_run_back_to_back_and_take_turns_going_first():
    assert cpu_cost.round_order(["plr", "sasrec"], 0) == [
        ("floor", "/recommend"), ("plr", "/recommend"), ("sasrec", "/recommend"),
        ("plr", "/events"), ("sasrec", "/events")]
    assert cpu_cost.round_order(["plr", "sasrec"], 1)[1:] == [
        ("sasrec", "/recommend"), ("plr", "/recommend"), ("sasrec", "/events"),
        ("plr", "/events")]


@pytest.fixture
def empty_app(tmp_path):
    port = procs.free_port()
    log = tmp_path / "empty.log"
    proc = procs.spawn(procs.uvicorn_cmd("loadtest.empty_app:app", port), log,
                       procs.single_thread_env())
    try:
        procs.wait_ready(f"http://127.0.0.1:{port}/readyz", proc, log, timeout_s=30)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        procs.stop(proc)


def test_a_real_measurement_reports_every_target_and_renders(empty_app):
    url, pid = empty_app
    workload = build_workload(dataset_sequences(synthetic_dataset()),
                              [PoolSpec("near_max", 5, n_users=8, n_future=3)], "synthetic",
                              synthetic=True, seed=1)
    # The empty app stands in for the server too (no Redis child: its Redis CPU is 0).
    out = cpu_cost.measure(url, pid, url, pid, workload, ["a", "b"], rounds=2, round_s=0.3,
                           concurrency=2, warmup_s=0.05)
    assert {(r["target"], r["route"]) for r in out["rows"]} == {
        ("floor", "/recommend"), ("a", "/recommend"), ("a", "/events"), ("b", "/recommend"),
        ("b", "/events")}
    for row in out["rows"]:
        assert row["errors"] == 0 and row["n"] > 10
        # 10 ms ticks over 0.3 s rounds: a row may read 0 on a busy machine, never a wild value
        assert 0 <= row["server_us"] < 50_000 and row["redis_us"] == 0
        assert len(row["total_us_rounds"]) == 2
    assert sum(row["server_us"] for row in out["rows"]) > 0
    assert set(out["capacity_rps"]) == {"a", "b", "floor"}
    ctx = {"models": ["a", "b"], "command": "python -m loadtest.cpu_cost", "date": "today",
           "cpu": "cpu", "cores": 2, "python": "3", "torch": "2", "malloc": "system",
           "engines": "", "versions": ["a 1", "b 2"], "server_cpus": "0", "client_cpus": "1",
           "loadavg": [0.1, 0.2]}
    page = cpu_cost.render(out, ctx)
    assert "| a | /events |" in page and "a/b CPU per `/events`" in page


def test_the_published_page_is_what_its_measurement_renders():
    docs = procs.REPO / "docs"
    saved = json.loads((docs / "cpu-cost.json").read_text())
    ctx = saved.pop("context")
    assert (docs / "cpu-cost.md").read_text() == cpu_cost.render(saved, ctx)


def test_a_plan_with_nothing_to_measure_is_refused_by_name(capsys):
    with pytest.raises(ValueError, match="round_s must be positive, got 0"):
        cpu_cost.check_plan(5, 0, 4)
    with pytest.raises(SystemExit):  # the command line says which flag, before starting anything
        cpu_cost.main(["--rounds", "0"])
    assert "--rounds must be positive, got 0" in capsys.readouterr().err
