"""Cached == full recompute, for every model kind, every history length 1..max_len + 5 (synthetic).

The reference is `model.predict` on the serving window (encoder.encode + user_vectors), a path that
shares no code with the engine's ragged in-place encoder step.
"""

import torch
from inference_helpers import MAX_LEN, N_ITEMS, make_model, random_history

from model.inference import Engine, RecRequest, window_start

LENGTHS = range(1, MAX_LEN + 6)
# One tolerance for every score comparison: 1e-5 relative (float32 sums of O(1) terms, |score| up
# to ~3 here, differ by a few 1e-7 between the ragged batched path and the reference), with an
# absolute floor of 2e-6 for scores near zero, whose error is that of their larger terms and is
# not proportional to the score itself (measured: at most 7e-7 beyond 1e-5 relative).
RTOL, ATOL = 1e-5, 2e-6
# (history length, cached prefix length; 0 = no cache) of one mixed batch: users with 0, 1, 2, 3,
# 5, 9 and 12 new items side by side, staying inside the window, crossing its restart once
# (8 -> 9, 6 -> 11, 12 -> 13) or twice (7 -> 16), cached past the window's first restart.
MIXED = [(1, 0), (5, 0), (5, 5), (6, 5), (8, 5), (8, 7), (9, 8), (11, 6), (12, 10), (13, 12),
         (13, 13), (16, 7), (13, 1), (12, 0)]


def reference_scores(model, history):
    start = window_start(len(history), MAX_LEN)
    window = torch.tensor([history[start:]])
    return model.predict(window, torch.tensor([window.shape[1]]))[0]  # (N_ITEMS + 1,)


def all_scores(rec):
    """A full-catalogue Recommendation as a dense (N_ITEMS + 1,) row (column 0 = -inf)."""
    row = torch.full((N_ITEMS + 1,), float("-inf"))
    row[rec.item_indices] = torch.tensor(rec.scores)
    return row


def full(history, cache=None):
    return RecRequest(history, cache, k=N_ITEMS, exclude_seen=False)


def assert_scores_close(actual, expected):
    torch.testing.assert_close(actual[1:], expected[1:], rtol=RTOL, atol=ATOL)


def test_the_mixed_batch_mixes_what_it_claims():
    stride = MAX_LEN - MAX_LEN // 2
    new_items = {n - p for n, p in MIXED}
    restarts = {(window_start(n, MAX_LEN) - window_start(p, MAX_LEN)) // stride
                for n, p in MIXED if 0 < p < n}
    assert {0, 1, 2, 3} <= new_items and max(new_items) > MAX_LEN
    assert {0, 1, 2} <= restarts  # inside the window, crossing it once, crossing it twice
    assert any(window_start(p, MAX_LEN) > 0 for _, p in MIXED)  # a cache past the first restart


def test_cached_and_uncached_equal_full_recompute_at_every_length_in_one_mixed_batch(kind, engine):
    cases = [(n, n - 1) for n in LENGTHS] + MIXED  # every length with one new item, then MIXED
    histories = [random_history(n, seed=n + 17 * p) for n, p in cases]
    prefixes = [engine.prefill(h[:p]) if p else None for h, (_, p) in zip(histories, cases)]
    cached = engine.recommend([full(h, c) for h, c in zip(histories, prefixes)])
    uncached = engine.recommend([full(h) for h in histories])
    for h, c, u in zip(histories, cached, uncached):
        expected = reference_scores(engine.model, h)
        assert_scores_close(all_scores(c), expected)
        assert_scores_close(all_scores(u), expected)
        assert c.cache.history_length == len(h) and c.cache.window_start == window_start(len(h), MAX_LEN)


def test_a_user_scores_the_same_alone_and_padded_among_longer_users(kind, engine):
    histories = [random_history(n, seed=100 + n) for n in (2, MAX_LEN + 3, 5, 1)]
    caches = [engine.prefill(h[:-1]) if len(h) > 1 else None for h in histories]
    together = engine.recommend([full(h, c) for h, c in zip(histories, caches)])
    for h, c, t in zip(histories, caches, together):
        alone = engine.recommend([full(h, c)])[0]
        assert_scores_close(all_scores(t), all_scores(alone))


def test_appending_one_or_several_items_equals_prefill_of_the_longer_history(kind, engine):
    history = random_history(MAX_LEN + 5, seed=7)
    ends = range(1, len(history) + 1)
    direct = dict(zip(ends, engine.extend([history[:e] for e in ends], [None] * len(ends))))
    appended = {}
    for cut in range(1, len(history)):
        for end in {cut + 1, min(cut + 3, len(history)), len(history)}:
            appended[cut, end] = engine.append(direct[cut], history[cut:end])
            got, want = appended[cut, end], direct[end]
            assert (got.window_start, got.items) == (want.window_start, want.items)
            torch.testing.assert_close(got.rows, want.rows, rtol=RTOL, atol=ATOL)
    # No new items: each appended cache is used as is.
    recs = engine.recommend([full(history[:end], cache) for (_, end), cache in appended.items()])
    for ((_, end), _), rec in zip(appended.items(), recs):
        assert_scores_close(all_scores(rec), reference_scores(engine.model, history[:end]))


def test_crossing_the_window_edge_restarts_the_window_exactly(kind, engine):
    history = random_history(2 * MAX_LEN + 1, seed=11)
    cache = engine.prefill(history[:MAX_LEN])
    assert cache.window_start == 0
    bigger = engine.append(cache, history[MAX_LEN : MAX_LEN + 1])  # n = max_len + 1: restart
    assert bigger.window_start == window_start(MAX_LEN + 1, MAX_LEN) > 0
    assert bigger.n_ctx == MAX_LEN // 2 + 1
    rec = engine.recommend([full(history, bigger)])[0]  # several more items, crosses again
    assert rec.cache.window_start == window_start(len(history), MAX_LEN)
    assert_scores_close(all_scores(rec), reference_scores(engine.model, history))


def test_batched_extend_matches_single_appends(kind, engine):
    histories = [random_history(n, seed=200 + n) for n in (3, 9, 13)]
    starts = [engine.prefill(h[:2]) for h in histories]
    batched = engine.extend(histories, starts)
    for h, s, b in zip(histories, starts, batched):
        single = engine.append(s, h[2:])
        torch.testing.assert_close(b.rows, single.rows, rtol=RTOL, atol=ATOL)
        assert b.items == single.items


def test_plr_streams_are_isolated_through_the_engine():
    model = make_model("plr", n_streams=3)
    engine = Engine(model, "v")
    history = random_history(6, seed=3)
    request = RecRequest(history, engine.prefill(history[:4]), k=N_ITEMS, exclude_seen=False, explain=True)
    before = engine.recommend([request])[0].explain
    with torch.no_grad():
        model.triggers[2].add_(torch.randn(16))  # another stream's trigger (not a constant: LN)
    after = engine.recommend([request])[0].explain
    assert after["streams"][:2] == before["streams"][:2] and after["streams"][2] != before["streams"][2]
    assert after["gate"] == before["gate"]  # the gate reads h0 only
    with torch.no_grad():  # permuting the streams permutes their outputs
        model.triggers.copy_(model.triggers[[1, 0, 2]])
        model.gate.weight.copy_(model.gate.weight[[1, 0, 2]])
        model.gate.bias.copy_(model.gate.bias[[1, 0, 2]])
    swapped = engine.recommend([request])[0].explain
    assert swapped["streams"][:2] == after["streams"][1::-1]
    assert len(before["gate"]) == 3 and abs(sum(before["gate"]) - 1) < 1e-5
