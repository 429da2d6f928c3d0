"""The malloc benchmark's arithmetic and report, on hand-made per-epoch numbers (not measured)."""

from model.experiments import malloc_bench


def _run(cpu, faults, rss, digest):
    epochs = [{"epoch": i + 1, "cpu_s": c, "minor_faults": f, "rss_mb": r, "peak_rss_mb": max(rss)}
              for i, (c, f, r) in enumerate(zip(cpu, faults, rss))]
    return {"epochs": epochs, "weights_sha256": digest, "jemalloc": False, "valid_history": []}


RUNS = {
    "system": _run([50.0, 30.0, 34.0], [1.5e6, 1.0e6, 1.2e6], [3000, 3500, 4000], "aa"),
    "jemalloc": _run([40.0, 24.0, 27.2], [0.7e6, 0.0, 0.0], [2900, 2900, 2900], "aa"),
}


def test_the_first_epoch_is_left_out_of_the_steady_means_and_the_ratio():
    s = malloc_bench.summarize(RUNS)
    assert s["system"]["cpu_s_per_epoch"] == 32.0
    assert s["jemalloc"]["cpu_s_per_epoch"] == 25.6
    assert s["cpu_ratio"] == 0.8
    assert s["system"]["faults_per_epoch"] == 1.1e6
    assert (s["system"]["rss_first_mb"], s["system"]["rss_last_mb"]) == (3000, 4000)
    assert s["same_weights"] is True


def test_the_report_says_whether_the_weights_matched():
    report = {"command": "python -m model.experiments.malloc_bench", "date": "2026-12-02 00:00 UTC",
              "hardware": {"cpu": "cpu", "cores": 2, "torch": "t", "python": "p"}, "epochs": 3,
              "seed": 2020, "jemalloc": "/lib/libjemalloc.so.2", "malloc_conf": "x",
              "loadavg_before": [0, 0, 0], "loadavg_after": [0, 0, 0], "runs": RUNS,
              "summary": malloc_bench.summarize(RUNS)}
    text = malloc_bench.render(report)
    assert "**0.80**" in text and "**identical**" in text
    assert "| 3 | 34.0 | 27.2 |" in text
    differing = {**RUNS, "jemalloc": {**RUNS["jemalloc"], "weights_sha256": "bb"}}
    report["summary"] = malloc_bench.summarize(differing)
    assert "**differ**" in malloc_bench.render(report)


def test_the_serving_report_pairs_each_route_and_concurrency_across_the_two_mallocs():
    timing = {"plr": {"advance_us": 80.0, "graph_us": 60.0}}
    rows = [{"round": 1, "malloc": "system", **timing},
            {"round": 1, "malloc": "jemalloc", "plr": {"advance_us": 60.0, "graph_us": 54.0}}]
    http = [{"route": "/events", "malloc": m, "concurrency": 1, "n": 100, "errors": e,
             "p50_ms": p50, "p90_ms": 1.0, "p99_ms": 2.0}
            for m, p50, e in (("system", 2.0, 0), ("jemalloc", 1.5, 1))]
    report = {"command": "c", "date": "d", "hardware": {"cpu": "cpu", "cores": 2, "torch": "t",
                                                        "python": "p"},
              "loadavg_before": [0, 0, 0], "loadavg_after": [0, 0, 0], "versions": {"plr": "v"},
              "rounds": 1, "models": ["plr"], "jemalloc": "lib", "rows": rows, "http": http,
              "http_rounds": 1, "http_users": 64,
              "summary": malloc_bench.summarize_serving(rows, ["plr"])}
    assert report["summary"]["plr/advance_us"] == {"system": 80.0, "jemalloc": 60.0, "ratio": 0.75}
    text = malloc_bench.render_serving(report)
    assert "| plr | Engine.advance, one event | 80.0 | 60.0 | **0.75** |" in text
    assert "| /events | 1 | 2.000 | 1.500 | **0.75** | 2.000 | 2.000 | 100, 100 | 1 |" in text
