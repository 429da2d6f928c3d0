"""The serving window rule: deterministic in the history length, bounded context, rare restarts."""

import pytest

from model.inference import window_start, window_stride


@pytest.mark.parametrize("max_len", [1, 2, 3, 8, 9, 50, 256])
def test_window_holds_between_half_and_max_len_items_and_only_moves_forward(max_len):
    previous, restarts = 0, 0
    for n in range(0, 4 * max_len + 3):
        start = window_start(n, max_len)
        size = n - start
        assert size <= max_len
        assert n <= max_len and start == 0 or size >= max_len // 2 + 1
        assert start >= previous
        restarts += start != previous
        previous = start
    # one restart (full prefill) per stride appends past max_len: amortised O(1)
    assert restarts == -(-(4 * max_len + 2 - max_len) // window_stride(max_len))


def test_window_examples_for_max_len_8():
    assert [window_start(n, 8) for n in range(0, 18)] == [0] * 9 + [4] * 4 + [8] * 4 + [12]


def test_window_rejects_negative_lengths():
    with pytest.raises(ValueError):
        window_start(-1, 8)
