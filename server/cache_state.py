"""Decide what a stored KV cache is worth for the current history, and how to write the new one.

`resolve(...)` never trusts stored bytes: a cache is used only when its envelope fingerprints a
prefix of the current stored history and it decodes for this model version (else "rebuilt").
`plan_write(...)` turns the new cache into a conditional APPEND of the tail (same window start)
or a conditional SET of the whole value.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from model.inference import CacheFormatError, UserCache

from .cache_envelope import HEADER_LEN, Envelope
from .store import KVWrite

log = logging.getLogger(__name__)


@dataclass
class ResolvedCache:
    cache: UserCache | None  # usable cached prefix, or None
    outcome: str  # hit | extended | rebuilt | miss
    stored: bytes | None  # the value as read (for the conditional write)


def resolve(
    stored: bytes | None,
    history: list[str],
    indices: list[int],
    n_model_items: Callable[[int], int],
    load_cache: Callable[[bytes], UserCache],
) -> ResolvedCache:
    """`indices`: the model's item indices of `history`; `n_model_items(n)`: how many of
    history[:n] the model knows (its cache counts only those); `load_cache`: Engine.load_cache."""
    if stored is None:
        return ResolvedCache(None, "miss", None)
    envelope = Envelope.unpack(stored)
    if envelope is None or not envelope.matches(history):
        return ResolvedCache(None, "rebuilt", stored)
    try:
        cache = load_cache(stored[HEADER_LEN:])  # checks model version, dims, every row's crc
    except CacheFormatError as exc:
        log.info("stored cache unusable, rebuilding: %s", exc)
        return ResolvedCache(None, "rebuilt", stored)
    covered = cache.history_length
    if covered != n_model_items(envelope.history_length) or (
        tuple(indices[cache.window_start : covered]) != cache.items
    ):
        return ResolvedCache(None, "rebuilt", stored)
    outcome = "hit" if envelope.history_length == len(history) else "extended"
    return ResolvedCache(cache, outcome, stored)


def plan_write(
    user_id: str,
    model_version: str,
    resolved: ResolvedCache,
    new_cache: UserCache,
    history: list[str],
    dtype: str,
) -> KVWrite | None:
    """The conditional write that stores `new_cache` for `history`, or None when nothing changed."""
    if resolved.outcome == "hit" and resolved.cache is not None:
        return None
    head = Envelope.for_history(dtype, history, len(history)).pack()
    stored = resolved.stored or b""
    previous = resolved.cache
    if previous is not None and Envelope.unpack(stored).dtype != dtype:
        previous = None  # another server wrote it in another dtype: rewrite whole
    mode, payload = new_cache.write_plan(previous, dtype)
    return KVWrite(
        user_id=user_id,
        model_version=model_version,
        expected_head=stored[:HEADER_LEN],
        new_head=head,
        payload=payload,
        append=mode == "append",
        expected_strlen=len(stored),
    )
