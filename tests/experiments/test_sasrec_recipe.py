"""The SASRec reference script's read-back rule: stored runs stay valid when a config field is added."""

from model.experiments.sasrec_baseline import parse_args, recipe, same_recipe


def test_a_field_added_at_its_default_keeps_stored_runs_valid_but_a_changed_one_does_not():
    current = recipe(parse_args(["--dropout", "0.5", "--stride", "10"]))
    older = {**current, "train": {k: v for k, v in current["train"].items() if k != "lr_schedule"}}
    assert same_recipe(older, current)  # predates lr_schedule: it ran with the default, constant
    cosine = recipe(parse_args(["--dropout", "0.5", "--stride", "10", "--lr-schedule", "cosine"]))
    assert not same_recipe(older, cosine)
    assert not same_recipe(current, recipe(parse_args(["--dropout", "0.35", "--stride", "10"])))
