"""Leave-one-out split per user: last item = test target, second-to-last = validation target.

Contract: train[u] is user u's sequence minus its last 2 items (aligned with dataset.user_ids);
valid/test hold (prefix, target) for each user in eval_users. Users with < 3 items cannot give a
non-empty train prefix plus two targets, so they keep their whole sequence in train and are not
evaluated. Arrays are copies: changing a split never changes the dataset.
"""

from dataclasses import dataclass

import numpy as np

from model.data.preprocess import SequenceDataset

MIN_EVAL_LEN = 3


@dataclass
class Split:
    train: list[np.ndarray]  # per user, aligned with dataset.user_ids
    valid: list[tuple[np.ndarray, int]]  # (all but last 2, second-to-last)
    test: list[tuple[np.ndarray, int]]  # (all but last, last)
    eval_users: np.ndarray  # (len(valid),) user index of each valid/test pair


def leave_one_out(dataset: SequenceDataset) -> Split:
    train, valid, test, eval_users = [], [], [], []
    for user, seq in enumerate(dataset.sequences):
        if len(seq) < MIN_EVAL_LEN:
            train.append(seq.copy())
            continue
        train.append(seq[:-2].copy())
        valid.append((seq[:-2].copy(), int(seq[-2])))
        test.append((seq[:-1].copy(), int(seq[-1])))
        eval_users.append(user)
    return Split(train, valid, test, np.array(eval_users, dtype=np.int64))
