"""`UserState`: everything scoring one user needs, computed once when the history changes.

A state holds the model's final user vector (PLR: h0 + sum_m g_m z_m; SASRec: h0), the explain
details the model reports (PLR: gate and per-stream vectors; ReaRec: per-step vectors), the
sorted set of item indices the history holds (for `exclude_seen`) and the answer most requests
want, ranked once: the best `top_items` (with `top_scores`) after excluding the seen items.
Ranking a state (`model/inference/ranking.py`) needs no transformer pass and no K/V; a request
the stored list covers needs no scoring at all. States are immutable values;
`to_bytes`/`from_bytes` are exact (fp32) and checked (magic, layout, model version, crc32), and bad
bytes raise `StateFormatError` (a ValueError), never a silently wrong state.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .cache import version_hash

MAGIC = b"PLRS"
LAYOUT_VERSION = 2
# magic, layout, detail kind, pad, model version hash, d_model, detail rows, gate size, n_seen,
# n_top, history_length (known items the state covers), crc32 of the payload.
_HEAD = struct.Struct("<4sHBx16sIIIIIII")
HEADER_SIZE = _HEAD.size
# Detail kinds: the name of the (X, D) per-vector detail a model reports; a gate goes with streams.
DETAIL_KINDS = {0: None, 1: "stream_vectors", 2: "step_vectors"}
_KIND_CODES = {name: code for code, name in DETAIL_KINDS.items()}


class StateFormatError(ValueError):
    """Stored state bytes that are truncated, corrupted, or written for another model/layout."""


@dataclass(frozen=True, eq=False)
class UserState:
    model_version: str
    vector: Tensor  # (D,) fp32 CPU: the scoring vector
    seen: np.ndarray  # (n,) uint32, sorted, unique: item indices of the whole history
    history_length: int  # known items of the history the state was computed from
    details: dict[str, Tensor] = field(default_factory=dict)  # see module docstring
    # The best items (uint32) and their scores (float32), seen items excluded, best first: the
    # first min(k, len) of them are the exact answer for k (ranking.py says when they suffice).
    top_items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    top_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def __post_init__(self):
        if self.vector.dim() != 1:
            raise ValueError(f"state vector must be 1-D, got shape {tuple(self.vector.shape)}")
        unknown = set(self.details) - {"gate", *filter(None, DETAIL_KINDS.values())}
        if unknown:
            raise ValueError(f"unknown state details {sorted(unknown)}")

    def to_bytes(self) -> bytes:
        d = self.vector.shape[0]
        names = [k for k in self.details if k != "gate"]
        rows = self.details[names[0]] if names else self.vector.new_zeros(0, d)
        gate = self.details.get("gate", self.vector.new_zeros(0))
        payload = b"".join([
            _f32(self.vector), _f32(gate), _f32(rows),
            self.top_scores.astype("<f4", copy=False).tobytes(),
            self.seen.astype("<u4", copy=False).tobytes(),
            self.top_items.astype("<u4", copy=False).tobytes(),
        ])
        head = _HEAD.pack(MAGIC, LAYOUT_VERSION, _KIND_CODES[names[0] if names else None],
                          version_hash(self.model_version), d, rows.shape[0], gate.shape[0],
                          self.seen.shape[0], self.top_items.shape[0], self.history_length,
                          zlib.crc32(payload))
        return head + payload

    @classmethod
    def from_bytes(cls, data: bytes, model_version: str) -> "UserState":
        kind, d, x, g, n_seen, n_top, length = _checked_header(data, model_version)
        floats = d + g + x * d + n_top
        values = torch.from_numpy(np.frombuffer(data, "<f4", floats - n_top, HEADER_SIZE).copy())
        top_scores = np.frombuffer(data, "<f4", n_top, HEADER_SIZE + 4 * (floats - n_top))
        seen = np.frombuffer(data, "<u4", n_seen, HEADER_SIZE + 4 * floats)
        top_items = np.frombuffer(data, "<u4", n_top, HEADER_SIZE + 4 * (floats + n_seen))
        details = {}
        if g:
            details["gate"] = values[d : d + g]
        if DETAIL_KINDS[kind] is not None:
            details[DETAIL_KINDS[kind]] = values[d + g :].view(x, d)
        return cls(model_version, values[:d], seen, length, details, top_items, top_scores)


def _checked_header(data: bytes, model_version: str) -> tuple[int, ...]:
    """(detail kind, d, detail rows, gate size, n_seen, n_top, history_length) of state bytes
    whose magic, layout, model version, length and crc32 all check out; else StateFormatError."""
    view = memoryview(data)
    if len(view) < HEADER_SIZE:
        raise StateFormatError(f"state bytes truncated: {len(view)} < header {HEADER_SIZE}")
    magic, layout, kind, vhash, d, x, g, n_seen, n_top, length, crc = _HEAD.unpack(
        view[:HEADER_SIZE])
    if magic != MAGIC or layout != LAYOUT_VERSION or kind not in DETAIL_KINDS:
        raise StateFormatError(f"not a user state of layout {LAYOUT_VERSION}")
    if vhash != version_hash(model_version):
        raise StateFormatError(f"state was written by another model version, not {model_version!r}")
    if len(view) != HEADER_SIZE + 4 * (d + g + x * d + 2 * n_top + n_seen):
        raise StateFormatError(f"state bytes of length {len(view)} do not match their header")
    if zlib.crc32(view[HEADER_SIZE:]) != crc:
        raise StateFormatError("state bytes corrupted (crc32 mismatch)")
    return kind, d, x, g, n_seen, n_top, length


def top_covers(n_top: int, n_seen: int, n_items: int, k: int) -> bool:
    """Whether a stored top list of n_top items answers an exclude_seen request for k: k fits in
    it, or it already holds every unseen item."""
    return k <= n_top or n_top == n_items - n_seen


def stored_answer(data: bytes, model_version: str, n_items: int,
                  k: int) -> tuple[list[int], list[float]] | None:
    """The exclude_seen top-k straight from state bytes, decoding nothing but the stored list
    (a stored user's most common request: no tensors built); None when the list does not cover k.
    The bytes are checked exactly as `UserState.from_bytes` checks them (StateFormatError)."""
    kind, d, x, g, n_seen, n_top, _ = _checked_header(data, model_version)
    if not top_covers(n_top, n_seen, n_items, k):
        return None
    k = min(k, n_top)
    floats = d + g + x * d
    scores = np.frombuffer(data, "<f4", k, HEADER_SIZE + 4 * floats)
    items = np.frombuffer(data, "<u4", k, HEADER_SIZE + 4 * (floats + n_top + n_seen))
    return items.tolist(), scores.tolist()


def _f32(t: Tensor) -> bytes:
    if t.dtype is torch.float32 and t.device.type == "cpu" and not t.requires_grad:
        return t.numpy().tobytes()  # what the engine hands over (tobytes copies in C order)
    return t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()


def seen_union(before: np.ndarray | None, items) -> np.ndarray:
    """Sorted unique uint32 item indices of `before` (sorted unique, or None) plus `items`."""
    if before is None or before.size == 0:
        return np.unique(np.asarray(items, dtype=np.uint32))
    if len(items) == 0:
        return before
    if len(items) == 1:  # one event, one item: a binary search instead of a sort
        at = int(np.searchsorted(before, items[0]))
        if at < before.size and before[at] == items[0]:
            return before
        # concatenate, not np.insert: same result, without insert's ~10 us of argument handling
        return np.concatenate((before[:at], np.array([items[0]], np.uint32), before[at:]))
    return np.union1d(before, np.asarray(items, dtype=np.uint32)).astype(np.uint32, copy=False)
