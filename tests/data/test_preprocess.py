"""build_dataset: stable time order, repeat policies, iterative k-core, and the item vocabulary."""

import numpy as np
import pytest

from model.data import InteractionLog, ItemVocab, build_dataset


def make_log(rows, titles=None):
    user_ids, item_ids, timestamps = zip(*rows)
    return InteractionLog(
        np.array(user_ids), np.array(item_ids), np.array(timestamps), titles or {}
    )


def sequences_as_ids(dataset):
    to_ids = dataset.vocab.to_external
    return {u: to_ids(seq) for u, seq in zip(dataset.user_ids, dataset.sequences)}


def test_sequences_are_time_ordered_with_file_order_breaking_ties():
    log = make_log([
        ("u", "c", 5), ("v", "a", 1), ("u", "b", 5), ("u", "a", 9), ("u", "d", 1), ("u", "e", 5),
    ])
    dataset = build_dataset(log)
    assert sequences_as_ids(dataset) == {"u": ["d", "c", "b", "e", "a"], "v": ["a"]}
    assert all(seq.dtype == np.int64 for seq in dataset.sequences)


def test_repeat_policies_keep_all_first_last():
    log = make_log([("u", "a", 1), ("u", "b", 2), ("u", "a", 3), ("u", "c", 3), ("u", "a", 3)])
    assert sequences_as_ids(build_dataset(log))["u"] == ["a", "b", "a", "c", "a"]
    assert sequences_as_ids(build_dataset(log, dedupe="first"))["u"] == ["a", "b", "c"]
    # "last" keeps the latest 'a', which ties with 'c' at t=3 but comes later in the file.
    assert sequences_as_ids(build_dataset(log, dedupe="last"))["u"] == ["b", "c", "a"]
    with pytest.raises(ValueError, match="dedupe"):
        build_dataset(log, dedupe="most")


def test_k_core_repeats_until_stable():
    # 2-core. Item z has one event, so dropping it leaves user w with one event; dropping w leaves
    # item y with one event; dropping y leaves user v with one. Only users t, u and items
    # a, b survive.
    log = make_log([
        ("t", "a", 1), ("t", "b", 2), ("u", "a", 3), ("u", "b", 4),
        ("v", "b", 5), ("v", "y", 6), ("w", "y", 7), ("w", "z", 8),
    ])
    dataset = build_dataset(log, k_core=2)
    assert sequences_as_ids(dataset) == {"t": ["a", "b"], "u": ["a", "b"]}
    assert dataset.vocab.external_ids == ["a", "b"]
    assert len(build_dataset(log, k_core=0).vocab) == 4


def test_k_core_that_empties_the_data_says_so():
    log = make_log([("u", "a", 1), ("v", "b", 2)])
    with pytest.raises(ValueError, match="k_core=2 removed every interaction"):
        build_dataset(log, k_core=2)


def test_popularity_and_titles_are_indexed_by_item_index():
    log = make_log([("u", "b", 1), ("u", "a", 2), ("v", "b", 3)], titles={"b": "Bee", "zz": "gone"})
    dataset = build_dataset(log)
    b = dataset.vocab.to_index(["b"])[0]
    assert dataset.popularity.tolist() == [0, 1, 2]
    assert dataset.popularity[b] == 2
    assert dataset.titles == {b: "Bee"}


def test_vocab_round_trip_and_errors():
    vocab = ItemVocab(["10", "20", "x"])
    assert len(vocab) == 3
    assert vocab.to_index(["x", "10"]).tolist() == [3, 1]
    assert vocab.to_external([1, 3]) == ["10", "x"]
    assert ItemVocab.from_json(vocab.to_json()) == vocab
    with pytest.raises(ValueError, match=r"unknown item ids.*'nope'"):
        vocab.to_index(["10", "nope"])
    with pytest.raises(ValueError, match="out of range"):
        vocab.to_external([0])


def test_stats_on_a_hand_made_log():
    log = make_log([("u", "a", 1), ("u", "b", 2), ("u", "c", 3), ("v", "a", 4)])
    stats = build_dataset(log).stats()
    assert stats == {
        "users": 2, "items": 3, "interactions": 4,
        "seq_len_min": 1, "seq_len_median": 2.0, "seq_len_mean": 2.0, "seq_len_max": 3,
        "density": 4 / 6,
    }


def test_log_rejects_unequal_lengths_and_empty_build():
    with pytest.raises(ValueError, match="differ in length"):
        InteractionLog(np.array(["u"]), np.array(["a", "b"]), np.array([1.0]))
    empty = InteractionLog(np.array([], dtype=str), np.array([], dtype=str), np.array([]))
    with pytest.raises(ValueError, match="empty"):
        build_dataset(empty)
