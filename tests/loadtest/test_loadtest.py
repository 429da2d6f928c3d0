"""loadtest/: workload, traffic mix, stats, Prometheus diffs and report on hand-made inputs, plus
one real locust run (a few seconds) against the empty app under uvicorn on a free port."""

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from loadtest import cpu_cost, procs, prom, report
from loadtest.stats import (
    goodput,
    is_error,
    parse_locust_stats,
    passes_slo,
    percentile,
    rate_matches,
    ratio,
    read_request_rows,
    summarize_step,
)
from loadtest.traffic import EVENTS, RECOMMEND, SEED, SESSION, Traffic, arrival_offsets
from loadtest.workload import (
    PoolSpec,
    ZipfChooser,
    build_workload,
    dataset_sequences,
    load_workload,
    save_workload,
)
from model.data import InteractionLog, build_dataset
from server.schemas import USER_ID_PATTERN


def synthetic_dataset(n_users=12, seed=0):
    """SYNTHETIC: random users of 6..40 items over 50 items; never reported as real data."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for t in range(int(rng.integers(6, 40))):
            rows.append((f"u{u}", f"i{int(rng.integers(1, 51))}", float(t)))
    users, items, times = zip(*rows)
    return build_dataset(
        InteractionLog(np.array(users), np.array(items), np.array(times), name="synthetic")
    )


@pytest.fixture
def sequences():
    return dataset_sequences(synthetic_dataset())


@pytest.fixture
def workload(sequences):
    specs = [
        PoolSpec("main", None, n_future=4),
        PoolSpec("len5", 5, n_users=30, n_future=3, zipf_s=0.0),
    ]
    return build_workload(sequences, specs, "synthetic", synthetic=True, seed=1)


# --- workload -------------------------------------------------------------------------------------


def test_session_pool_keeps_each_real_sequence_split_in_order(workload, sequences):
    users = workload["pools"]["main"]["users"]
    assert workload["synthetic"] is True
    assert sorted(u["id"] for u in users) == sorted(sequences)
    for user in users:
        assert user["history"] + user["future"] == sequences[user["id"]]
        assert len(user["history"]) >= len(user["future"])


def test_fixed_length_pool_replicates_real_users(workload, sequences):
    users = workload["pools"]["len5"]["users"]
    assert len(users) == 30 and len({u["id"] for u in users}) == 30  # 12 real users + replicas
    for user in users:
        assert re.fullmatch(USER_ID_PATTERN, user["id"])  # the server would answer 422 otherwise
        real = sequences[user["id"].split(".replica")[0]]
        assert user["history"] == real[:5] and user["future"] == real[5:8]


def test_unknown_items_are_dropped_and_workload_roundtrips(tmp_path):
    dataset = synthetic_dataset()
    allowed = {f"i{i}" for i in range(1, 26)}
    sequences = dataset_sequences(dataset, allowed)
    assert all(set(items) <= allowed for items in sequences.values())
    path = tmp_path / "w.json"
    built = build_workload(sequences, [PoolSpec("main", None)], "synthetic", True)
    save_workload(built, path)
    assert load_workload(path) == built


def test_zipf_choice_follows_rank_popularity():
    chooser, n, draws = ZipfChooser(20, 1.0, seed=3), 20, 40_000
    counts = np.bincount([chooser.choose() for _ in range(draws)], minlength=n)
    expected = (1 / np.arange(1, n + 1)) / (1 / np.arange(1, n + 1)).sum()
    assert np.allclose(counts / draws, expected, atol=0.01)
    flat = ZipfChooser(4, 0.0, seed=3)
    uniform = np.bincount([flat.choose() for _ in range(8000)], minlength=4)
    assert uniform.min() > 1800


# --- traffic --------------------------------------------------------------------------------------


def test_first_touch_is_a_session_then_events_follow_the_real_future(workload):
    pool = {"zipf_s": 0.0, "users": workload["pools"]["main"]["users"][:1]}
    user = pool["users"][0]
    traffic = Traffic(pool, events_share=1.0, model="plr", namespace="t1")
    session = traffic.next_request()
    assert (session.name, session.setup) == (SESSION, True)
    assert session.body == {
        "user_id": f"t1:{user['id']}",
        "k": 10,
        "model": "plr",
        "history": user["history"],
    }
    events = [traffic.next_request() for _ in range(len(user["future"]))]
    assert all(e.name == EVENTS and not e.setup for e in events)
    assert [e.body["item_ids"][0] for e in events] == user["future"]


def test_cache_off_recommend_carries_history_and_events_seed_first(workload):
    pool = {"zipf_s": 0.0, "users": workload["pools"]["main"]["users"][:1]}
    user = pool["users"][0]
    traffic = Traffic(pool, events_share=0.0, use_cache=False)
    request = traffic.next_request()
    assert request.name == RECOMMEND and request.body["use_cache"] is False
    assert request.body["history"] == user["history"] and "model" not in request.body
    traffic.events_share = 1.0
    seed = traffic.next_request()
    assert seed.name == SEED and seed.body["item_ids"] == user["history"]
    event = traffic.next_request()
    traffic.events_share = 0.0
    assert traffic.next_request().body["history"] == user["history"] + event.body["item_ids"]


def test_prime_starts_every_user_in_order_and_mix_is_about_half(workload):
    pool = workload["pools"]["len5"]
    traffic = Traffic(pool, events_share=0.5, n_users=10, prime=True, seed=2)
    first = [traffic.next_request() for _ in range(10)]
    assert [r.user_key for r in first] == list(range(10)) and all(r.setup for r in first)
    rest = [traffic.next_request() for _ in range(4000)]
    assert {r.user_key for r in rest} <= set(range(10))
    share = sum(r.name == EVENTS for r in rest) / len(rest)
    assert 0.45 < share < 0.55


def test_arrivals_are_on_schedule():
    constant = list(arrival_offsets(100, 2.0))
    assert len(constant) == 200 and constant[1] - constant[0] == pytest.approx(0.01)
    poisson = list(arrival_offsets(200, 20.0, "poisson", seed=1))
    assert abs(len(poisson) - 4000) < 4 * 4000**0.5
    with pytest.raises(ValueError):
        next(arrival_offsets(0, 1.0))


# --- stats ----------------------------------------------------------------------------------------


def test_nearest_rank_percentiles():
    values = list(range(100, 0, -1))  # 1..100 shuffled by reversal
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 99.9)) == (
        50,
        99,
        100,
    )
    assert percentile([7.0], 99) == 7.0 and percentile([], 50) is None


def _row(phase, name, latency, status=200, t=1.0, cache="", lateness=0.1):
    return {
        "phase": phase,
        "name": name,
        "t_sched_s": t,
        "latency_ms": latency,
        "lateness_ms": lateness,
        "status": status,
        "cache": cache,
    }


def test_step_summary_excludes_warmup_and_setup_from_steady():
    rows = [_row("warmup", RECOMMEND, 500.0, t=0.5)] + [_row("measure", SESSION, 90.0)]
    rows += [_row("measure", RECOMMEND, float(i), cache="hit") for i in range(1, 11)]
    rows += [_row("measure", EVENTS, 2.0), _row("measure", EVENTS, 3.0, status=503)]
    rows += [_row("measure", "unfinished", None, -2, lateness=None)]
    summary = summarize_step(rows, offered_rate=7.0, window_s=2.0, warmup_s=1.0)
    steady = summary["by_name"]["steady"]
    assert (
        steady["n"] == 11 and steady["p50"] == 5.0 and steady["p99"] == 10.0
    )  # 90 ms session left out
    assert summary["by_name"][RECOMMEND]["cache"] == {"hit": 10}
    assert (summary["errors"], summary["status_5xx"]) == (2, 1)
    assert summary["achieved_rate"] == 13 / 2.0  # sends inside [1 s, 3 s); warm-up's one is not


def test_a_lagging_generator_shows_as_a_missed_rate():
    on_time = [_row("measure", EVENTS, 1.0, t=i / 10) for i in range(10)]
    late = [_row("measure", EVENTS, 1.0, t=i / 10, lateness=i * 100.0) for i in range(10)]
    assert summarize_step(on_time, 10, 1.0)["achieved_rate"] == 10
    assert (
        summarize_step(late, 10, 1.0)["achieved_rate"] == 5
    )  # sends at 0.2*i s: half after the end


def _step(rate, p99, errors=0, achieved=None):
    achieved = rate if achieved is None else achieved
    return {
        "offered_rate": rate,
        "achieved_rate": achieved,
        "completed_rate": achieved,
        "errors": errors,
        "by_name": {"steady": {"p99": p99}},
    }


def test_goodput_is_the_top_of_the_unbroken_passing_run():
    ladder = [_step(10, 5), _step(20, 8), _step(40, 30), _step(80, 9)]
    assert goodput(ladder, slo_ms=25) == 20  # the lucky pass at 80 after a failure does not count
    assert goodput([_step(10, 30)], 25) == 0.0 and goodput([], 25) is None
    assert not passes_slo(_step(10, 5, errors=1), 25)
    assert not passes_slo(_step(100, 5, achieved=90), 25) and rate_matches(100, 96)
    assert ratio(3.0, 2.0) == 1.5 and ratio(None, 2.0) is None and ratio(1.0, 0) is None


LOCUST_CSV = """Type,Name,Request Count,Failure Count,Median Response Time,\
Average Response Time,Min Response Time,Max Response Time,Average Content Size,Requests/s,\
Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%
POST,/events,225,1,1,2.3,0.57,9.37,55.9,79.0,0.0,1,3,4,4,5,7,8,9,9,9,9
,Aggregated,571,1,1,2.2,0.57,9.52,254.4,200.5,0.0,1,2,4,4,5,6,8,9,10,10,10
POST,/empty,0,0,0,0,0,0,0,0,0,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A
"""


def test_parse_locust_stats_csv(tmp_path):
    path = tmp_path / "x_stats.csv"
    path.write_text(LOCUST_CSV)
    stats = parse_locust_stats(path)
    assert stats["/events"]["requests"] == 225 and stats["/events"]["failures"] == 1
    assert stats["/events"]["p95"] == 7 and stats["Aggregated"]["p99.9"] == 10
    assert stats["/empty"]["p50"] is None


# --- prometheus -----------------------------------------------------------------------------------


def _scrape(b1, b2, b_inf, total, hits):
    return f"""# HELP plr_stage_seconds Time per request stage
# TYPE plr_stage_seconds histogram
plr_stage_seconds_bucket{{le="0.001",model="plr",stage="compute"}} {b1}
plr_stage_seconds_bucket{{le="0.002",model="plr",stage="compute"}} {b2}
plr_stage_seconds_bucket{{le="+Inf",model="plr",stage="compute"}} {b_inf}
plr_stage_seconds_count{{model="plr",stage="compute"}} {b_inf}
plr_stage_seconds_sum{{model="plr",stage="compute"}} {total}
plr_cache_outcomes_total{{model="plr",outcome="hit"}} {hits}
"""


def test_histogram_diff_and_quantiles():
    before, after = _scrape(10, 10, 10, 0.005, 3), _scrape(10, 110, 110, 0.155, 50)
    (row,) = prom.stage_table(before, after)  # the step: 100 observations, all in (1 ms, 2 ms]
    assert row["metric"] == "plr_stage_seconds" and row["labels"] == "model=plr,stage=compute"
    assert row["count"] == 100 and row["unit"] == "ms" and row["mean"] == pytest.approx(1.5)
    assert row["p50"] == pytest.approx(1.5) and row["p99"] == pytest.approx(1.99)
    assert prom.counter_deltas(before, after) == [
        {"metric": "plr_cache_outcomes_total", "labels": "model=plr,outcome=hit", "delta": 47.0}
    ]
    assert prom.stage_table(after, after) == []  # nothing observed: nothing reported


def test_histograms_and_counters_sum_over_the_windows_of_a_step_run_in_parts():
    first = (_scrape(10, 10, 10, 0.005, 3), _scrape(10, 110, 110, 0.155, 50))  # 100 in (1, 2] ms
    # the other model's step ran in between (not counted), then 100 more, all under 1 ms
    second = (_scrape(10, 150, 150, 0.3, 60), _scrape(110, 250, 250, 0.35, 61))
    (row,) = prom.stage_table_of([first, second])
    assert row["count"] == 200 and row["mean"] == pytest.approx(1.0)
    assert row["p50"] == pytest.approx(1.0) and row["p99"] == pytest.approx(1.98)
    assert prom.counter_deltas_of([first, second]) == [
        {"metric": "plr_cache_outcomes_total", "labels": "model=plr,outcome=hit", "delta": 48.0}
    ]


# --- report ---------------------------------------------------------------------------------------


def _result(
    group, model, rate, p50, p99, pool="main", cache="on", events_p50=None, target="server"
):
    by_name = {
        "steady": {"n": 100, "p50": p50, "p95": p99, "p99": p99, "p99.9": p99, "mean": p50},
        RECOMMEND: {"n": 50, "p50": p50, "p99": p99},
        EVENTS: {"n": 50, "p50": events_p50 or p50, "p99": p99},
    }
    for stats in by_name.values():
        stats.update(errors=0, status_5xx=0, requests=stats["n"], cache={})
    summary = {
        "offered_rate": rate,
        "achieved_rate": rate,
        "completed_rate": rate,
        "errors": 0,
        "status_5xx": 0,
        "lateness_p99_ms": 0.1,
        "by_name": by_name,
    }
    step = {
        "name": f"{group}-{model}-{rate}-{pool}-{cache}",
        "group": group,
        "target": target,
        "model": model,
        "rate": rate,
        "pool": pool,
        "cache": cache,
        "users": 10,
        "events_share": 0.5,
    }
    return {
        "step": step,
        "summary": summary,
        "passes_slo": passes_slo(summary, 25),
        "stages": [],
        "counters": [],
    }


def hand_made_results():
    return [
        _result("ladder", "plr", 10, 5.3, 12),
        _result("ladder", "sasrec", 10, 5.0, 10),
        _result("ladder", "plr", 20, 6.0, 30),
        _result("ladder", "sasrec", 20, 5.5, 20),
        _result("floor", None, 20, 1, 3, target="empty"),
        _result("floor", None, 40, 1, 4, target="empty"),
        _result("floor", None, 80, 9, 30, target="empty"),  # the floor's first failure
        _result("cache", "plr", 20, 4, 8, pool="near_max"),
        _result("cache", "plr", 20, 12, 20, "near_max", "off"),
        _result("length", "plr", 40, 2, 4, pool="len10", events_p50=2.0),
        _result("length", "plr", 40, 2, 4, pool="len190", events_p50=2.2),
    ]


def test_headline_numbers_from_hand_made_results():
    head = report.headline(hand_made_results(), ["plr", "sasrec"], slo_ms=25)
    assert head["ratios"][0]["/recommend_p50_ratio"] == pytest.approx(5.3 / 5.0)
    assert head["goodput"] == {"plr": 10, "sasrec": 20, "empty": 40}
    assert head["goodput_fraction"] == pytest.approx(0.25)
    assert head["goodput_capped"] == ["sasrec"]  # passed the top rate it ran: a lower bound
    assert head["events_length"]["p50_ratio"] == pytest.approx(1.1)
    assert head["cache"][0]["off_on_p50_ratio"] == pytest.approx(3.0)
    assert head["status_5xx"] == 0 and head["rate_misses"] == []


def test_a_goodput_that_never_failed_is_reported_as_a_bound():
    from loadtest.markdown import _headline

    results = [r for r in hand_made_results() if r["step"]["rate"] != 20 or r["step"]["model"]
               != "plr"]  # plr passes its top rate (10) too
    head = report.headline(results, ["plr", "sasrec"], slo_ms=25)
    assert head["goodput_capped"] == ["plr", "sasrec"]
    text = "\n".join(_headline(head, ["plr", "sasrec"], report.GOALS))
    assert "goodput plr / empty floor (>= 10 / 40 req/s) | 0.250 | >= 0.4 | no (a lower bound: " \
        "plr never failed) |" in text
    floor_capped = [r for r in hand_made_results() if r["step"]["rate"] != 80]
    head = report.headline(floor_capped, ["plr", "sasrec"], slo_ms=25)
    text = "\n".join(_headline(head, ["plr", "sasrec"], report.GOALS))
    assert "(10 / >= 40 req/s) | 0.250 | >= 0.4 | no (an upper bound: the floor never failed)" in text


def test_the_worst_ratio_carries_its_rate_and_interval_and_says_when_it_straddles_the_goal():
    from loadtest.markdown import _headline, _ratios

    results = hand_made_results()  # plr/sasrec p50: 1.06 at 10 req/s, 1.09 at 20
    results[2] = _result("ladder", "plr", 20, 6.0, 12)  # passes here too: the worst rate is 20
    results[2]["ratio_ci"] = {"sasrec": {"/recommend_p50": [1.05, 1.12]}}
    head = report.headline(results, ["plr", "sasrec"], slo_ms=25)
    assert head["worst_p50_rate"] == 20 and head["worst_p50_ci"] == [1.05, 1.12]
    text = "\n".join(_headline(head, ["plr", "sasrec"], report.GOALS))
    assert ("worst rate where both met the SLO (20 req/s) | 1.091 (95 % CI "
            "1.050-1.120) | <= 1.06 | no (the interval includes the goal) |") in text
    results[2]["ratio_ci"]["sasrec"]["/recommend_p50"] = [1.07, 1.12]
    head = report.headline(results, ["plr", "sasrec"], slo_ms=25)
    text = "\n".join(_headline(head, ["plr", "sasrec"], report.GOALS))
    assert "| no (the whole interval is above the goal) |" in text
    table = "\n".join(_ratios(head, ["plr", "sasrec"]))
    assert "| 10 | 1.060 | - |" in table and "| 20 | 1.091 | 1.070-1.120 |" in table


def test_write_report_makes_markdown_csv_and_plots(tmp_path):
    context = {
        "date": "d",
        "command": "python -m loadtest.runner --mode short",
        "mode": "short",
        "warmup_s": 3,
        "measure_s": 6,
        "cpu": "cpu",
        "cores": 2,
        "platform": "p",
        "versions": {"x": "1"},
        "models": ["plr", "sasrec"],
        "max_len": 200,
        "server_cpus": "0",
        "locust_cpus": "1",
        "dataset": "synthetic",
        "synthetic": True,
        "pools": {"main": 1},
        "server_models": {},
        "wall_s": 1.0,
        # the runner's `cpu` section (loadtest/cpu_cost.py), hand-made: one round
        "cpu_cost": cpu_cost.summarize(
            {(name, route): [{"n": 10, "errors": 0, "server_us": us, "redis_us": 0.0,
                              "total_us": us, "p50_ms": 1.0}]
             for name, route, us in [("floor", "/recommend", 100.0), ("plr", "/recommend", 150.0),
                                     ("plr", "/events", 660.0), ("sasrec", "/recommend", 150.0),
                                     ("sasrec", "/events", 600.0)]},
            ["plr", "sasrec"], 1, 1.0, 4) | {"loadavg_1m": [0.5, 0.7]},
    }
    results = hand_made_results()
    for r in results[:2]:  # rate 10: both models in turns; rate 20: again one at a time
        r["step"]["interleaved"] = "ladder-plr+sasrec-r10"
    for r in results[2:4]:
        r["step"]["name"] += "-alone"
    path = report.write_report(results, context, tmp_path, slo_ms=25)
    text = path.read_text()
    assert "| goodput plr / empty floor (10 / 40 req/s) | 0.250 | >= 0.4 | no |" in text
    assert "| goodput sasrec | >= 20 req/s | - | - |" in text  # never failed: a lower bound
    ladder = [line for line in text.splitlines()  # rows of the ladder and floor tables
              if line.startswith(("| 10 | ", "| 20 | ")) and line.endswith(("pass |", "fail |"))]
    how = [line.split(" | ")[-2] for line in ladder]  # the ladder tables' "measured" column
    assert how == ["in turns", "in turns", "alone, after a failure in turns",
                   "alone, after a failure in turns", "alone"]  # the last: the floor at 20
    assert "(SYNTHETIC)" in text
    assert "- Machine speed: not recorded." in text  # a context without stamps
    assert "## CPU per request on the serving core" in text
    assert "- plr/sasrec CPU per `/events`: **1.100**" in text
    assert "Load average before / after: 0.5 / 0.7." in text  # the section's own machine load
    for name in ("steps.csv", "stages.csv", "latency_vs_rate.png", "cache_on_off.png"):
        assert (tmp_path / "latency" / name).stat().st_size > 0


# --- one real run ---------------------------------------------------------------------------------


@pytest.fixture
def empty_server(tmp_path):
    port = procs.free_port()
    log = tmp_path / "empty.log"
    proc = procs.spawn(
        procs.uvicorn_cmd("loadtest.empty_app:app", port), log, procs.single_thread_env()
    )
    try:
        procs.wait_ready(f"http://127.0.0.1:{port}/readyz", proc, log, timeout_s=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        procs.stop(proc)


def test_locust_smoke_against_the_empty_app(empty_server, workload, tmp_path):
    path = tmp_path / "workload.json"
    save_workload(workload, path)
    lt_args = {
        "workload": path,
        "rate": 40,
        "warmup": 0.5,
        "measure": 2.5,
        "drain": 3,
        "out": tmp_path / "requests.csv",
        "namespace": "smoke",
    }
    cmd = procs.locust_cmd(empty_server, tmp_path / "run", 20, lt_args)
    done = subprocess.run(
        cmd, cwd=procs.REPO, env=procs.single_thread_env(), capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    rows = read_request_rows(tmp_path / "requests.csv")
    # The open-loop plan, checked exactly: one row per scheduled arrival at its scheduled time, in
    # its phase, none dropped, failed or left unfinished. Whether the sends kept to the schedule
    # (achieved rate) depends on the machine: benchmarks report it (docs/latency.md), a shared CI
    # core cannot pass/fail on it.
    planned = [round(t, 6) for t in arrival_offsets(40, 0.5 + 2.5)]
    assert len(planned) == 120
    assert sorted(r["t_sched_s"] for r in rows) == planned
    assert all(r["phase"] == ("warmup" if r["t_sched_s"] < 0.5 else "measure") for r in rows)
    assert [r for r in rows if is_error(r)] == []
    summary = summarize_step(rows, 40, 2.5)
    assert summary["errors"] == 0 and summary["by_name"]["steady"]["n"] > 0
    locust = parse_locust_stats(tmp_path / "run_stats.csv")
    assert locust["Aggregated"]["requests"] > 0 and locust["Aggregated"]["failures"] == 0
    assert json.loads((tmp_path / "workload.json").read_text())["synthetic"] is True


def test_locust_interleaves_two_models_in_turns_with_their_own_users(empty_server, workload,
                                                                    tmp_path):
    from loadtest.traffic import Interleaving

    path = tmp_path / "workload.json"
    save_workload(workload, path)
    lt_args = {"workload": path, "rate": 40, "warmup": 0.5, "measure": 2.5, "drain": 3,
               "out": tmp_path / "requests.csv", "namespace": "il", "model": "plr",
               "alternate": "sasrec", "slice": 0.5}
    cmd = procs.locust_cmd(empty_server, tmp_path / "run", 20, lt_args)
    done = subprocess.run(
        cmd, cwd=procs.REPO, env=procs.single_thread_env(), capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    rows = read_request_rows(tmp_path / "requests.csv")
    assert sorted(r["t_sched_s"] for r in rows) == [round(t, 6) for t in arrival_offsets(40, 3)]
    owner = Interleaving(2, 0.5, seed=0)
    assert all(r["model"] == ("plr", "sasrec")[owner(r["t_sched_s"])] for r in rows)
    # each model starts sessions for its own users (namespaces il-plr, il-sasrec)
    sessions = [r["model"] for r in rows if r["name"] == SESSION]
    assert sessions.count("plr") >= 1 and sessions.count("sasrec") >= 1
    assert [r for r in rows if is_error(r)] == []


# --- plan -----------------------------------------------------------------------------------------


def test_ladder_alternates_models_and_drops_one_after_two_failures_in_a_row():
    from loadtest.plan import MODES
    from loadtest.runner import run_ladder

    capacity = {"plr": 20, "sasrec": 40}
    order = []

    def run(step):
        order.append(f"{step.model}@{step.rate:g}")
        return {"passes_slo": step.rate <= capacity[step.model]}

    run_ladder(run, MODES["short"], ["plr", "sasrec"], "server", (10, 20, 30, 40, 50, 60, 70))
    assert order == [
        "plr@10", "sasrec@10", "plr@20", "sasrec@20", "plr@30", "sasrec@30",
        "plr@40", "sasrec@40", "sasrec@50", "sasrec@60",
    ]


def test_ladder_interleaves_the_models_while_two_are_on_it_then_runs_the_survivor_alone():
    from loadtest.plan import MODES
    from loadtest.runner import run_ladder

    capacity = {"plr": 20, "sasrec": 40}
    order = []

    def run(step):
        assert step.model == "sasrec"  # alone on the ladder: whole steps again
        order.append(step.name)
        return {"passes_slo": step.rate <= capacity[step.model]}

    def interleave(steps):
        order.append("+".join(s.name for s in steps))
        return [{"passes_slo": s.rate <= capacity[s.model]} for s in steps]

    run_ladder(run, MODES["short"], ["plr", "sasrec"], "server", (10, 30, 50, 60),
               interleave=interleave)
    assert order == [
        "ladder-plr-r10+ladder-sasrec-r10", "ladder-plr-r30+ladder-sasrec-r30",
        "ladder-plr-r50+ladder-sasrec-r50", "ladder-sasrec-r60",
    ]


def test_interleaving_gives_each_stream_one_slice_per_block_in_varying_order():
    from loadtest.traffic import Interleaving

    owner = Interleaving(2, slice_s=0.5, seed=3)
    slots = [owner(t / 10) for t in range(0, 400)]  # 40 s in 0.1 s steps
    per_slice = [slots[i:i + 5] for i in range(0, 400, 5)]
    assert all(len(set(chunk)) == 1 for chunk in per_slice)  # a slice belongs to one stream
    turns = [chunk[0] for chunk in per_slice]
    blocks = [tuple(turns[i:i + 2]) for i in range(0, len(turns), 2)]
    assert set(blocks) == {(0, 1), (1, 0)}  # both orders occur: no fixed pattern to alias
    assert turns == [Interleaving(2, 0.5, seed=3)(i * 0.5) for i in range(80)]  # seeded
    assert turns != [Interleaving(2, 0.5, seed=4)(i * 0.5) for i in range(80)]
    assert {Interleaving(1)(t) for t in (0.0, 7.5, 99.0)} == {0}
    with pytest.raises(ValueError, match="slice_s"):
        Interleaving(2, 0.0)


def test_interleaved_step_keeps_each_models_seconds_and_refuses_mismatched_steps():
    from dataclasses import replace

    from loadtest.plan import MODES, interleaved, ladder_step

    full = MODES["full"]
    plr, sasrec = ladder_step(full, "plr", 20), ladder_step(full, "sasrec", 20)
    joint = interleaved([plr, sasrec])
    assert joint.name == "ladder-plr+sasrec-r20" and joint.alternate == ("sasrec",)
    assert (joint.model, joint.rate) == ("plr", 20)
    assert joint.warmup_s == 2 * plr.warmup_s and joint.measure_s == 2 * plr.measure_s
    with pytest.raises(ValueError, match="one rate"):
        interleaved([plr, ladder_step(full, "sasrec", 40)])
    with pytest.raises(ValueError, match="distinct"):
        interleaved([plr, replace(plr)])
    with pytest.raises(ValueError):
        interleaved([plr])


def test_low_ladder_rates_measure_longer_so_every_step_has_enough_requests():
    from loadtest.plan import MODES, ladder_step

    full = MODES["full"]
    windows = {rate: ladder_step(full, "plr", rate).measure_s for rate in (10, 20, 40, 640)}
    assert windows == {10: 90.0, 20: 45.0, 40: 30.0, 640: 30.0}  # >= 900 requests, >= 30 s
    assert ladder_step(MODES["short"], "plr", 10).measure_s == 6.0  # the smoke stays short


def test_interleaved_step_splits_into_one_result_per_model(tmp_path):
    import csv

    from loadtest.plan import MODES, interleaved, ladder_step
    from loadtest.runner import split_interleaved

    steps = [ladder_step(MODES["short"], m, 10) for m in ("plr", "sasrec")]  # 3 s + 6 s each
    joint = interleaved(steps)  # 6 s warm-up, 12 s measured, models in turns
    (tmp_path / "raw").mkdir()
    with open(tmp_path / "raw" / f"{joint.name}_requests.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["phase", "name", "t_sched_s", "latency_ms", "lateness_ms", "status", "cache",
                    "model"])
        w.writerow(["warmup", EVENTS, 1.0, 500.0, 0.1, 200, "", "plr"])
        for i in range(120):  # 10/s over the 12 s window, 1 s turns
            t = 6 + i / 10
            model = ("plr", "sasrec")[int(t) % 2]
            w.writerow(["measure", RECOMMEND, t, 1.0 if model == "plr" else 30.0, 0.1, 200,
                        "hit", model])
    stage = {"metric": "m", "count": 1, "mean": 1, "p50": 1, "p99": 1, "unit": "ms"}
    joint_result = {
        "wall_s": 20.0, "loadavg_1m": [0.5, 0.6], "locust": {},
        "stages": [stage | {"labels": "model=plr,stage=compute"},
                   stage | {"labels": "model=sasrec,stage=compute"},
                   stage | {"labels": "model=all,stage=store_read"}],
        "counters": [{"metric": "c_total", "labels": "model=sasrec,op=events", "delta": 3}],
    }
    plr, sasrec = split_interleaved(joint, steps, joint_result, tmp_path, slo_ms=25.0)
    for result, step, latency in ((plr, steps[0], 1.0), (sasrec, steps[1], 30.0)):
        summary = result["summary"]
        assert result["step"]["name"] == step.name and result["step"]["interleaved"] == joint.name
        # 60 requests in 6 s of its own turns: the offered rate, not half of it
        assert summary["achieved_rate"] == 10.0 and summary["completed_rate"] == 10.0
        assert summary["by_name"]["steady"]["n"] == 60  # its measured rows only, no warm-up
        assert summary["by_name"]["steady"]["p50"] == latency
        assert result["wall_s"] == 10.0
    assert plr["passes_slo"] and not sasrec["passes_slo"]
    assert [s["labels"] for s in plr["stages"]] == ["model=plr,stage=compute",
                                                    "model=all,stage=store_read"]
    assert [s["labels"] for s in sasrec["stages"]] == ["model=sasrec,stage=compute",
                                                       "model=all,stage=store_read"]
    assert plr["counters"] == [] and sasrec["counters"][0]["delta"] == 3
    # every block of turns holds 1.0 ms for plr and 30.0 for sasrec: the interval is that ratio
    assert plr["ratio_ci"]["sasrec"]["/recommend_p50"] == pytest.approx((1 / 30, 1 / 30))
    assert sasrec["ratio_ci"]["plr"]["/recommend_p50"] == pytest.approx((30, 30))


def _blocks(n_blocks, ratio, drift, seed=0):
    """SYNTHETIC: n_blocks of turns, 50 latencies per model each; plr = ratio x sasrec plus
    noise, both scaled by a per-block drift factor the two share (the machine's slow moves)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n_blocks):
        level = 1 + drift * rng.random()
        out.append({m: [level * (ratio if m == "plr" else 1.0) * rng.uniform(0.5, 1.5)
                        for _ in range(50)] for m in ("plr", "sasrec")})
    return out


def test_the_ratio_interval_covers_the_true_ratio_and_keeps_shared_drift_paired():
    from loadtest.stats import ratio_ci

    lo, hi = ratio_ci(_blocks(30, 1.1, drift=0.0), "plr", "sasrec")
    assert lo < 1.1 < hi and hi - lo < 0.15
    # a drift shared by both models' turns in a block moves both p50s: resampling whole blocks
    # keeps them paired, so the interval stays about as narrow (unpaired, it would not)
    lo2, hi2 = ratio_ci(_blocks(30, 1.1, drift=2.0), "plr", "sasrec")
    assert lo2 < 1.1 < hi2 and hi2 - lo2 < 2 * (hi - lo)
    assert ratio_ci(_blocks(30, 1.1, 0.5), "plr", "sasrec") == \
        ratio_ci(_blocks(30, 1.1, 0.5), "plr", "sasrec")  # seeded
    assert ratio_ci(_blocks(1, 1.1, 0.0), "plr", "sasrec") is None


def test_interleaved_blocks_group_turns_and_drop_blocks_a_model_missed():
    from loadtest.stats import interleaved_blocks

    rows = [{"phase": "measure", "name": RECOMMEND, "t_sched_s": t, "latency_ms": lat,
             "status": status, "model": model}
            for t, lat, status, model in [(0.2, 1, 200, "plr"), (1.5, 2, 200, "sasrec"),
                                          (2.1, 3, 200, "sasrec"), (3.9, 4, 200, "plr"),
                                          (3.95, 9, 503, "plr"), (4.5, 5, 200, "plr")]]
    rows.append({"phase": "warmup", "name": RECOMMEND, "t_sched_s": 0.1, "latency_ms": 7,
                 "status": 200, "model": "sasrec"})
    blocks = interleaved_blocks(rows, ["plr", "sasrec"], RECOMMEND, slice_s=1.0)
    # blocks of 2 s; the 503 and the warm-up row are left out; block 2 has no sasrec turn
    assert blocks == [{"plr": [1], "sasrec": [2]}, {"plr": [4], "sasrec": [3]}]


def test_a_failed_interleaved_rate_counts_each_model_measured_alone(tmp_path):
    from types import SimpleNamespace

    from loadtest.plan import MODES, alone, ladder_step
    from loadtest.runner import StepRunner

    steps = [ladder_step(MODES["short"], m, 10) for m in ("plr", "sasrec")]
    (tmp_path / "steps").mkdir()

    def save(name, passes):  # saved results: the runner loads them and runs nothing
        (tmp_path / "steps" / f"{name}.json").write_text(json.dumps({
            "step": {"name": name}, "passes_slo": passes, "summary": {
                "offered_rate": 10, "achieved_rate": 10, "errors": 0, "by_name": {}}}))

    run = StepRunner(None, None, tmp_path, SimpleNamespace(slo_ms=25.0), "t")
    save(steps[0].name, True)
    save(steps[1].name, False)  # e.g. behind an overloaded model's backlog
    for step in steps:
        save(alone(step).name, True)
    results = run.interleave(steps)
    assert [r["step"]["name"] for r in results] == ["ladder-plr-r10-alone",
                                                    "ladder-sasrec-r10-alone"]
    assert run.results == results and run.reused == 2
    save(steps[1].name, True)  # both passed in turns: the interleaved results count
    run = StepRunner(None, None, tmp_path, SimpleNamespace(slo_ms=25.0), "t")
    assert [r["step"]["name"] for r in run.interleave(steps)] == [s.name for s in steps]


def test_length_steps_start_every_user_in_warmup_and_cap_events_per_user():
    from loadtest.plan import MAX_EVENTS_PER_USER, MODES, length_steps

    for mode in MODES.values():
        steps = length_steps(mode, "plr", "len10", "len190")
        assert [s.pool for s in steps][:2] == ["len10", "len190"]
        for step in steps:
            assert step.users <= step.rate * step.warmup_s  # the priming sessions fit the warm-up
            assert step.rate * step.measure_s / step.users <= MAX_EVENTS_PER_USER
            assert step.events_share == 1.0 and step.prime


def test_sequential_headline_reports_the_two_model_server_and_the_one_model_server():
    from loadtest.markdown import _sequential, _sequential_headline
    from loadtest.report import GOALS

    def row(route, target, ratio):
        return {"route": route, "target": target, "concurrency": 1, "n": 10, "errors": 0,
                "rps": 1.0, "p50_ms": ratio, "p90_ms": ratio, "p99_ms": ratio,
                "vs_floor_p50": ratio}

    seq = {"rows": [row("/recommend", "floor", 1.0), row("/recommend", "plr", 2.0),
                    row("/recommend", "sasrec", 2.0), row("/recommend", "plr-alone", 1.9),
                    row("/events", "floor", 1.0), row("/events", "server", 6.0),
                    row("/events", "plr-alone", 4.5)],
           "users": 4, "rounds": 1, "round_s": 1.0, "concurrencies": [1], "solo": "plr-alone"}
    rows = _sequential_headline(seq, ["plr", "sasrec"], GOALS)
    events = [r for r in rows if r[0].startswith("/events")]
    assert [r[1] for r in events] == ["6.00", "4.50"] and [r[3] for r in events] == ["no", "yes"]
    assert "plr + sasrec" in events[0][0] and "plr alone" in events[1][0]
    assert "Target `plr-alone`" in "\n".join(_sequential(seq))


def test_cpu_probe_report_states_the_spread_of_its_series():
    from loadtest.cpu_probe import report

    text = report([30.0, 60.0, 31.0, 29.0], cpu=0, load_before=(0.1, 0.2, 0.3),
                  load_after=(0.4, 0.5, 0.6))
    assert "| 29.0 | 31.0 | 60.0 | 60.0 | 2.07 |" in text
    assert "Per second, in order (ms): 30 60 31 29" in text


def test_machine_speed_stamps_are_measured_on_the_server_cpu_and_shown_in_the_setup():
    import argparse

    from loadtest.cpu_probe import speed_stamp
    from loadtest.markdown import _machine_speed
    from loadtest.runner import SPEED_UNITS, machine_speed

    stamp = speed_stamp(3)
    assert stamp["n"] == 3 and 0 < stamp["min_ms"] <= stamp["median_ms"] <= stamp["max_ms"]
    with pytest.raises(ValueError, match="at least 1"):
        speed_stamp(0)
    # the runner's stamp: a pinned subprocess (`python -m loadtest.cpu_probe --stamp N`)
    measured = machine_speed(argparse.Namespace(server_cpus="0"))
    assert measured["n"] == SPEED_UNITS and measured["median_ms"] > 0
    line = _machine_speed({"before": {"n": 15, "median_ms": 13.04, "min_ms": 12.5,
                                      "max_ms": 20.0}, "after": None})
    assert "13.0 ms before the run (min 12.5, max 20.0, 15 units)" in line
    assert "after the run" not in line
    assert _machine_speed(None) == "- Machine speed: not recorded."


QUIET_SH = procs.REPO / "loadtest" / "quiet.sh"


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.fixture
def background(tmp_path):
    """A process in its own group, pinned to the first CPU and listed in a pids file, as the
    training queue's workers are: (process, the env quiet.sh needs, this test's CPUs)."""
    import os
    import signal

    cpus = sorted(os.sched_getaffinity(0))
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        os.sched_setaffinity(proc.pid, {cpus[0]})
        pids = tmp_path / "queue.pids"
        pids.write_text(f"{os.getpgid(proc.pid)}\n")
        env = {**os.environ, "QUIET_PIDS_FILE": str(pids), "QUIET_LOCK": str(tmp_path / "lock")}
        yield proc, env, cpus
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_quiet_sh_pauses_background_groups_and_restores_them_and_their_affinity(background):
    import os

    proc, env, cpus = background
    probe = (f"cut -d' ' -f3 /proc/{proc.pid}/stat; "
             f"taskset -c -p {proc.pid} | awk '{{print $NF}}'")
    run = subprocess.run([str(QUIET_SH), "bash", "-c", probe + "; exit 3"], capture_output=True,
                         text=True, env=env, timeout=60)
    state_during, cpus_during = run.stdout.split()
    assert run.returncode == 3  # the command's own exit status
    assert state_during == "T"  # stopped while the command ran
    if len(cpus) > 1:
        assert cpus_during == str(cpus[-1])  # moved off the benchmark's CPUs
    assert _state(proc.pid) in ("S", "R")  # running again
    assert os.sched_getaffinity(proc.pid) == {cpus[0]}  # its own pinning is back


def test_quiet_sh_killed_mid_benchmark_still_resumes_the_background_and_its_affinity(
        background, tmp_path):
    import os
    import signal
    import time

    proc, env, cpus = background
    started = tmp_path / "started"
    quiet = subprocess.Popen([str(QUIET_SH), "bash", "-c", f"touch {started}; sleep 30"],
                             env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not started.exists():
        assert time.monotonic() < deadline, "the benchmark command never started"
        time.sleep(0.05)
    assert _state(proc.pid) == "T"  # paused meanwhile
    quiet.send_signal(signal.SIGTERM)  # e.g. `timeout`, or a session that ends
    assert quiet.wait(timeout=20) == 143  # at once: not after the command's 30 s
    assert _state(proc.pid) in ("S", "R")  # running again
    assert os.sched_getaffinity(proc.pid) == {cpus[0]}  # its own pinning is back


def test_the_runner_leaves_through_its_cleanup_on_sigterm(tmp_path):
    # A stopped run must stop its server, Redis and floor app (its `finally`), not orphan them.
    marker = tmp_path / "cleaned"
    # A second SIGTERM during the cleanup (pkill reaching quiet.sh and the runner) must not cut
    # it short.
    code = ("import os, signal, time\n"
            "from loadtest.runner import stop_on_term\n"
            "stop_on_term()\n"
            "try:\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    time.sleep(30)\n"
            "finally:\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    time.sleep(0.2)\n"
            f"    open({str(marker)!r}, 'w').close()\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=procs.REPO, timeout=60)
    assert done.returncode == 143
    assert marker.exists()


def test_a_runner_stopped_mid_step_stops_its_load_generator(tmp_path):
    # The 2026-12-02 run stopped with SIGTERM left its locust firing at a dead server: the step's
    # wait must stop the child on the way out, not only on its own timeout.
    pid_file = tmp_path / "child.pid"
    code = ("import os, signal, subprocess\n"
            "from loadtest import procs\n"
            "from loadtest.runner import stop_on_term\n"
            "stop_on_term()\n"
            "child = subprocess.Popen(['sleep', '60'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
            "signal.setitimer(signal.ITIMER_REAL, 0.3)\n"
            "signal.signal(signal.SIGALRM, lambda *a: os.kill(os.getpid(), signal.SIGTERM))\n"
            "procs.wait_or_stop(child, 60)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=procs.REPO, timeout=30)
    assert done.returncode == 143
    stat = Path(f"/proc/{int(pid_file.read_text())}/stat")
    if stat.exists():  # reaped: gone; still running (the bug): sleeping, reparented
        assert stat.read_text().split()[2] == "Z"


def test_the_runner_stops_before_the_ladder_when_the_floor_is_slow():
    from loadtest.runner import SlowMachine, check_floor

    rows = [{"target": t, "route": route, "concurrency": c, "p50_ms": p50}
            for t, route, c, p50 in [("plr", "/recommend", 1, 0.40), ("floor", "/events", 1, 0.5),
                                     ("floor", "/recommend", 4, 0.60),
                                     ("floor", "/recommend", 1, 0.29)]]
    assert check_floor({"rows": rows}, None) == 0.29  # no bound: only read
    assert check_floor({"rows": rows}, 0.30) == 0.29
    with pytest.raises(SlowMachine, match="p50 is 0.290 ms, above --max-floor-ms 0.2"):
        check_floor({"rows": rows}, 0.2)


def test_a_section_is_measured_once_and_reused_by_a_rerun(tmp_path):
    from loadtest.runner import saved_section

    calls = []

    def measure():
        calls.append(1)
        return {"rows": [len(calls)]}

    assert saved_section(tmp_path, "cpu_cost", measure) == {"rows": [1]}
    assert saved_section(tmp_path, "cpu_cost", measure) == {"rows": [1]}  # from steps/, no rerun
    assert len(calls) == 1 and (tmp_path / "steps" / "cpu_cost.json").exists()
