"""Exact incremental inference (pure torch, no I/O): per-user K/V caches as immutable values.

`Engine(model, model_version, device)` prefills, appends and recommends over batches of users;
`UserCache` serialises to bytes whose appends are byte-string extensions (Redis APPEND);
`UserState` is a user's precomputed scoring vector (+ explain, seen items), ranked without a
forward pass; `window_start` is the serving window rule every path shares. See docs/inference.md.
"""

from .cache import CacheFormatError, CacheHeader, UserCache, cache_nbytes, read_header
from .engine import Advance, Engine, RecRequest, Recommendation
from .state import StateFormatError, UserState
from .window import window_start, window_stride

__all__ = [
    "Advance", "CacheFormatError", "CacheHeader", "Engine", "RecRequest", "Recommendation",
    "StateFormatError", "UserCache", "UserState", "cache_nbytes", "read_header", "window_start",
    "window_stride",
]
