"""Training windows and evaluation prefixes (synthetic sequences)."""

import numpy as np
import pytest

from model.batches import TrainBatches, collate_windows, eval_batch, train_windows


def synthetic_sequences(seed=0, n_users=30, longest=130):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 50, size=n) for n in rng.integers(0, longest, size=n_users)]


def covered_targets(windows):
    """(user-local) multiset of (input item, target) pairs the windows train on."""
    pairs = []
    for inputs, targets in windows:
        pairs += [(int(a), int(t)) for a, t in zip(inputs, targets) if t > 0]
    return sorted(pairs)


@pytest.mark.parametrize("offsets", [False, True])
@pytest.mark.parametrize("stride", [None, 8, 3, 1])
def test_every_training_target_is_covered_exactly_once(offsets, stride):
    rng = np.random.default_rng(1) if offsets else None
    for n in range(0, 130):
        seq = np.arange(1, n + 1)  # item i+1 follows item i, so (input, target) = (i, i+1)
        windows = train_windows([seq], max_len=8, rng=rng, stride=stride)
        assert covered_targets(windows) == [(i, i + 1) for i in range(1, n)]
        assert all(len(inputs) <= 8 and len(inputs) == len(t) for inputs, t in windows)


def test_a_smaller_stride_gives_every_target_a_longer_context():
    windows = train_windows([np.arange(1, 101)], max_len=8, stride=2)
    for inputs, targets in windows:
        if inputs[0] != 1:  # the window at the sequence start has no more past to give
            assert np.flatnonzero(targets).min() == 6  # owned targets see >= 7 = 8 - 2 + 1 items
    with pytest.raises(ValueError, match="stride"):
        train_windows([np.arange(1, 10)], max_len=8, stride=9)


def test_targets_follow_their_prefix_and_keep_full_context_at_the_end():
    seq = np.array([5, 9, 2, 7, 3, 8, 6])
    windows = train_windows([seq], max_len=4)
    inputs, targets = windows[0]  # the newest window
    assert inputs.tolist() == [2, 7, 3, 8] and targets.tolist() == [7, 3, 8, 6]
    # the older window owns the rest (9 follows 5, 2 follows 9); 7 is not trained twice
    assert windows[1][0].tolist() == [5, 9] and windows[1][1].tolist() == [9, 2]


def test_collate_right_pads_and_aligns_targets():
    item_ids, seq_lens, targets = collate_windows(
        [(np.array([4, 5, 6]), np.array([5, 6, 7])), (np.array([9]), np.array([3]))])
    assert item_ids.tolist() == [[4, 5, 6], [9, 0, 0]]
    assert seq_lens.tolist() == [3, 1]
    assert targets.tolist() == [[5, 6, 7], [3, 0, 0]]


def test_eval_batch_keeps_the_last_max_len_items():
    item_ids, seq_lens = eval_batch([np.arange(1, 11), np.array([4, 2])], max_len=4)
    assert item_ids.tolist() == [[7, 8, 9, 10], [4, 2, 0, 0]]
    assert seq_lens.tolist() == [4, 2]
    with pytest.raises(ValueError):
        eval_batch([np.array([], dtype=np.int64)], max_len=4)


def test_ddp_shards_cover_every_window_with_equal_step_counts():
    seqs = synthetic_sequences()
    single = TrainBatches(seqs, max_len=10, batch_size=8, seed=3).epoch(2)
    shards = [TrainBatches(seqs, max_len=10, batch_size=8, seed=3, rank=r, world_size=2).epoch(2)
              for r in range(2)]
    assert len(shards[0]) == len(shards[1])  # DDP needs the same number of steps on each rank
    total = lambda batches: sum(int((t > 0).sum()) for _, _, t in batches)  # noqa: E731
    n_targets = sum(len(s) - 1 for s in seqs if len(s) >= 2)
    assert total(single) == n_targets
    assert n_targets <= total(shards[0]) + total(shards[1]) <= n_targets + 10  # padding repeats


def test_epochs_reshuffle_but_are_reproducible():
    seqs = synthetic_sequences()
    a = TrainBatches(seqs, max_len=10, batch_size=8, seed=3)
    first, again, second = a.epoch(1), a.epoch(1), a.epoch(2)
    assert all((x[0] == y[0]).all() for x, y in zip(first, again))
    assert any(x[0].shape != y[0].shape or (x[0] != y[0]).any() for x, y in zip(first, second))
