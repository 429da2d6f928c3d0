"""leave_one_out: last item tests, second-to-last validates, the rest trains."""

import numpy as np

from model.data import InteractionLog, build_dataset, leave_one_out


def dataset_of(sequences):
    rows = [(user, item, t) for user, items in sequences.items() for t, item in enumerate(items)]
    user_ids, item_ids, timestamps = zip(*rows)
    log = InteractionLog(np.array(user_ids), np.array(item_ids), np.array(timestamps))
    return build_dataset(log)


def test_leave_one_out_is_exact():
    dataset = dataset_of({"u": ["a", "b", "c", "d"], "v": ["c", "a", "b"]})
    split = leave_one_out(dataset)
    ids = dataset.vocab.to_external
    assert [ids(seq) for seq in split.train] == [["a", "b"], ["c"]]
    assert [(ids(prefix), ids([target])) for prefix, target in split.valid] == [
        (["a", "b"], ["c"]), (["c"], ["a"])
    ]
    assert [(ids(prefix), ids([target])) for prefix, target in split.test] == [
        (["a", "b", "c"], ["d"]), (["c", "a"], ["b"])
    ]
    assert split.eval_users.tolist() == [0, 1]


def test_short_users_train_only():
    dataset = dataset_of({"a_user": ["x"], "b_user": ["x", "y"], "c_user": ["x", "y", "z"]})
    split = leave_one_out(dataset)
    assert [len(seq) for seq in split.train] == [1, 2, 1]
    assert split.eval_users.tolist() == [2]
    assert len(split.valid) == len(split.test) == 1


def test_split_does_not_alias_the_dataset():
    dataset = dataset_of({"u": ["a", "b", "c", "d"]})
    split = leave_one_out(dataset)
    split.train[0][0] = 99
    split.test[0][0][0] = 99
    assert dataset.sequences[0][0] != 99
