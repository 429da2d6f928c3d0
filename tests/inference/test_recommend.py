"""recommend(): exactly k, exclusions and deny lists, explain output, bad input, immutability (synthetic)."""

import pytest
import torch
from inference_helpers import MAX_LEN, N_ITEMS, make_model, random_history

from model.inference import Engine, RecRequest


def test_exactly_k_excluding_seen_and_denied_items_never_padding(engine):
    history = random_history(MAX_LEN + 4, seed=1)
    deny = [5, 6, 7]
    rec = engine.recommend([RecRequest(history, None, k=20, exclude=deny)])[0]
    assert len(rec.item_indices) == 20 == len(rec.scores)
    assert not set(rec.item_indices) & (set(history) | set(deny) | {0})
    assert rec.scores == sorted(rec.scores, reverse=True)
    keep_seen = engine.recommend([RecRequest(history, None, k=N_ITEMS, exclude_seen=False)])[0]
    assert sorted(keep_seen.item_indices) == list(range(1, N_ITEMS + 1))


def test_a_user_who_has_seen_almost_everything_gets_what_is_left(engine):
    history = list(range(1, N_ITEMS - 1))  # 48 of 50 items, far past the window
    many = engine.recommend([
        RecRequest(history, None, k=10),
        RecRequest(history, None, k=10, exclude=[N_ITEMS]),
        RecRequest(history, None, k=10, exclude=[N_ITEMS - 1, N_ITEMS]),
        RecRequest(random_history(3, 0), None, k=1000),
    ])
    assert sorted(many[0].item_indices) == [N_ITEMS - 1, N_ITEMS]
    assert many[1].item_indices == [N_ITEMS - 1]
    assert many[2].item_indices == [] and many[2].scores == []
    assert len(many[3].item_indices) == len(set(random_history(3, 0)) ^ set(range(1, N_ITEMS + 1)))


def test_recommend_leaves_its_input_cache_untouched(engine):
    history = random_history(MAX_LEN + 2, seed=4)
    cache = engine.prefill(history[:5])
    rows, items, length = cache.rows.clone(), cache.items, cache.history_length
    engine.append(cache, history[5:7])
    engine.recommend([RecRequest(history, cache), RecRequest(history[:6], cache)])
    assert torch.equal(cache.rows, rows) and cache.items == items and cache.history_length == length


def test_a_cached_request_with_no_new_items_reuses_the_cache(engine):
    history = random_history(5, seed=8)
    cache = engine.prefill(history)
    rec = engine.recommend([RecRequest(history, cache)])[0]
    assert rec.cache is cache
    assert rec.item_indices == engine.recommend([RecRequest(history)])[0].item_indices


def test_plr_explain_reports_the_gate_and_each_streams_top_items():
    engine = Engine(make_model("plr"), "v")
    history = random_history(6, seed=2)
    rec, plain = engine.recommend([RecRequest(history, k=5, explain=True), RecRequest(history, k=5)])
    assert plain.explain is None and rec.item_indices == plain.item_indices
    assert len(rec.explain["gate"]) == 2 and abs(sum(rec.explain["gate"]) - 1) < 1e-5
    assert len(rec.explain["streams"]) == 2
    for stream in rec.explain["streams"]:
        assert len(stream) == 5 and not set(stream) & set(history)


@pytest.mark.parametrize(
    "request_kwargs, message",
    [
        (dict(history=[]), "empty"),
        (dict(history=[1, 0, 3]), "out of range"),
        (dict(history=[1, N_ITEMS + 1]), "out of range"),
        (dict(history=[-2]), "out of range"),
        (dict(history=[1.5, 2]), "integer"),
        (dict(history=[1, 2], exclude=[N_ITEMS + 1]), "out of range"),
        (dict(history=[1, 2], k=0), "k must be"),
        (dict(history=[1, 2], k="3"), "k must be"),
    ],
)
def test_bad_requests_raise_value_error(engine, request_kwargs, message):
    with pytest.raises(ValueError, match=message):
        engine.recommend([RecRequest(**request_kwargs)])


def test_bad_caches_raise_value_error(engine):
    history = random_history(6, seed=3)
    cache = engine.prefill(history[:4])
    with pytest.raises(ValueError, match="covers"):
        engine.recommend([RecRequest(history[:3], cache)])
    with pytest.raises(ValueError, match="prefix"):
        engine.recommend([RecRequest([history[0] % N_ITEMS + 1] + history[1:], cache)])
    with pytest.raises(ValueError):
        engine.recommend([RecRequest(history, "not a cache")])
    with pytest.raises(ValueError, match="out of range"):
        engine.append(cache, [N_ITEMS + 1])
    with pytest.raises(ValueError, match="empty"):
        engine.prefill([])


def test_prefill_and_extend_check_items_outside_the_window_too(engine):
    history = [N_ITEMS + 1] + random_history(MAX_LEN + 4, seed=1)  # the bad item is not in the window
    with pytest.raises(ValueError, match="out of range"):
        engine.prefill(history)
    with pytest.raises(ValueError, match="out of range"):
        engine.extend([history], [None])
