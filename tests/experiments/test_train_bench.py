"""train_bench's arithmetic and report on hand-made timings (no training runs here)."""

from model.experiments import train_bench as tb


def timings(new_s: dict[str, float], old_factor: float = 2.0) -> dict:
    out = {}
    for name, seconds in new_s.items():
        out[name] = {}
        for version, s in (("old", seconds * old_factor), ("new", seconds)):
            out[name][version] = {"steps_per_epoch": 12, "s_per_epoch_wall": s,
                                  "s_per_epoch_cpu": s}
    return out


def report(t: dict) -> dict:
    return {"command": "python -m model.experiments.train_bench", "date": "2026-12-02 04:00 UTC",
            "ref": "e50f76d", "threads": 1, "n_steps": 3,
            "hardware": {"cpu": "test CPU", "cores": 2, "torch": "2.13.0", "python": "3.11"},
            "loadavg_before": [0.1, 0.1, 0.1], "loadavg_after": [0.2, 0.2, 0.2], "timings": t,
            "summary": tb.summarize(t, [30, 40, 50])}


def test_the_regularisers_shares_of_plr_epoch_and_the_goal_lines():
    t = timings({tb.SASREC_RECIPE: 10.0, tb.PLR_RECIPE: 30.0, tb.PLR_NO_RCL: 15.0,
                 tb.PLR_NO_GRR: 27.0})
    s = tb.summarize(t, [30, 40, 50])
    assert s["plr_over_sasrec_recipes"] == 3.0
    assert abs(s["plr_rcl_share"] - 0.5) < 1e-12
    assert abs(s["plr_grr_share"] - 0.1) < 1e-12
    assert s["plr_without_rcl_over_sasrec"] == 1.5
    assert s["sasrec_min_to_best"] == 10.0 * 40 / 60
    text = tb.render(report(t))
    assert "(median of the rounds' ratios): **3.00x** (old code 3.00x) -> missed" in text
    assert ("takes 15.0 s: RCL costs **50% of the recipe's epoch** (without it PLR would be "
            "1.50x SASRec's recipe); without GRR, 27.0 s: GRR costs 10%") in text


def test_a_run_without_the_regulariser_configurations_leaves_their_lines_out():
    t = timings({tb.SASREC_RECIPE: 10.0, tb.PLR_RECIPE: 18.0})
    s = tb.summarize(t, [30])
    assert s["plr_rcl_share"] is None and s["plr_grr_share"] is None
    text = tb.render(report(t))
    assert "-> met" in text and "Where PLR's epoch goes" not in text


def test_median_run_keeps_the_middle_round_and_every_round():
    runs = [{"s_per_epoch_wall": w, "tag": i} for i, w in enumerate([30.0, 26.0, 41.0, 27.0])]
    kept = tb.median_run(runs)
    assert kept["tag"] == 3  # 27.0: the lower middle of 26, 27, 30, 41
    assert kept["rounds_wall"] == [30.0, 26.0, 41.0, 27.0]
    assert tb.median_run(runs[:3])["tag"] == 0  # 30.0: the middle of 26, 30, 41


def test_ratios_are_the_median_of_each_rounds_own():
    # Round 2 was a slow spell for both. Each configuration's own median would pair PLR's round
    # 3 (30) with SASRec's round 3 (12): 2.5; the rounds' own ratios are 3.0, 3.0 and 2.5.
    t = {tb.PLR_RECIPE: {"new": {"s_per_epoch_wall": 30.0, "rounds_wall": [24.0, 45.0, 30.0]}},
         tb.SASREC_RECIPE: {"new": {"s_per_epoch_wall": 12.0, "rounds_wall": [8.0, 15.0, 12.0]}}}
    assert tb.round_ratio(t, tb.PLR_RECIPE, tb.SASREC_RECIPE) == 3.0
    assert tb.round_ratio(t, tb.PLR_NO_RCL, tb.SASREC_RECIPE) is None
