"""The serving window rule (plr-method.md s.5): which suffix of a history the model sees.

`window_start(n, max_len)` is a pure function of the history length, used by every path (prefill,
append, full recompute), so a cached answer always equals an uncached one. Past `max_len` the
window restarts every `stride` appends, so a full prefill happens once per `stride` events.
"""

from __future__ import annotations


def window_stride(max_len: int) -> int:
    """Appends between two window restarts; a restarted window keeps max_len // 2 + 1 items."""
    return max_len - max_len // 2


def window_start(history_length: int, max_len: int) -> int:
    """Index of the oldest history item inside the window (its position 0).

    0 while history_length <= max_len; past it, stride s = max_len - max_len // 2 and
    start = s * ceil((history_length - max_len) / s), so the window holds between
    max_len // 2 + 1 and max_len items.
    """
    if history_length < 0 or max_len < 1:
        raise ValueError(f"need history_length >= 0 and max_len >= 1, got {history_length}, {max_len}")
    if history_length <= max_len:
        return 0
    s = window_stride(max_len)
    return s * (-(-(history_length - max_len) // s))
