"""The near cache: a process-local LRU of the caches and states this server computed, so the next
event for a user it just served needs neither the ~50 KB cache from Redis nor its decoding.

An entry holds, for (user, model version), the decoded cache and state this process computed and
wrote, with the envelope of that cache value (covered history length + token) and its byte
length. Each read offers the envelope as a hint; the scripts answer "yours is current" (and send
no cache or state bytes) only while the stored cache has exactly that envelope. A write by another
server, a replaced or trimmed history or a deletion changes or removes it, so a stale entry is
never used, only ignored and eventually evicted. Bounded by bytes; least recently used first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from model.inference import UserCache, UserState


@dataclass(frozen=True)
class NearEntry:
    envelope: bytes  # the stored cache value's 32-byte envelope this entry describes
    stored_len: int  # that value's length in bytes (the condition of an APPEND to it)
    cache: UserCache
    state: UserState  # covers the same history as `cache`

    @property
    def nbytes(self) -> int:
        return sum(c.numel() * c.element_size() for c in self.cache.chunks) + 4096


class NearCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], NearEntry] = OrderedDict()
        self.nbytes = 0

    def get(self, user_id: str, version: str) -> NearEntry | None:
        entry = self._entries.get((user_id, version))
        if entry is not None:
            self._entries.move_to_end((user_id, version))
        return entry

    def hint(self, user_id: str, version: str) -> bytes:
        entry = self.get(user_id, version)
        return entry.envelope if entry is not None else b""

    def put(self, user_id: str, version: str, entry: NearEntry) -> None:
        if self.max_bytes <= 0:
            return
        self.discard(user_id, version)
        self._entries[(user_id, version)] = entry
        self.nbytes += entry.nbytes
        while self.nbytes > self.max_bytes and self._entries:
            _, old = self._entries.popitem(last=False)
            self.nbytes -= old.nbytes

    def discard(self, user_id: str, *versions: str) -> None:
        for version in versions:
            old = self._entries.pop((user_id, version), None)
            if old is not None:
                self.nbytes -= old.nbytes

    def __len__(self) -> int:
        return len(self._entries)
