"""The server's 32-byte header in front of every stored KV cache: which history the cache covers.

Layout: magic b"PKV1", dtype code (1 byte), 3 pad bytes, covered history length (u64, counted in
stored history entries), then a 16-byte BLAKE2b fingerprint of those entries. A cache is served only
when its header matches a prefix of the current stored history, so a replaced history, a trimmed
history or a torn write can never be served; the store's conditional writes compare this header.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

MAGIC = b"PKV1"
HEADER_LEN = 32
_FORMAT = "<4sB3xQ16s"
DTYPE_CODES = {"fp32": 1, "fp16": 2}
assert struct.calcsize(_FORMAT) == HEADER_LEN


def fingerprint(history: list[str], length: int) -> bytes:
    """Digest of the first `length` stored history entries (item ids never contain NUL)."""
    return hashlib.blake2b("\x00".join(history[:length]).encode(), digest_size=16).digest()


@dataclass(frozen=True)
class Envelope:
    dtype: str
    history_length: int
    digest: bytes

    @classmethod
    def for_history(cls, dtype: str, history: list[str], length: int) -> "Envelope":
        return cls(dtype, length, fingerprint(history, length))

    def pack(self) -> bytes:
        return struct.pack(_FORMAT, MAGIC, DTYPE_CODES[self.dtype], self.history_length, self.digest)

    @classmethod
    def unpack(cls, blob: bytes) -> "Envelope | None":
        """The header of a stored value, or None when it is not one of ours (corrupt, old layout)."""
        if len(blob) < HEADER_LEN:
            return None
        magic, code, length, digest = struct.unpack(_FORMAT, blob[:HEADER_LEN])
        dtype = next((name for name, c in DTYPE_CODES.items() if c == code), None)
        if magic != MAGIC or dtype is None:
            return None
        return cls(dtype, length, digest)

    def matches(self, history: list[str]) -> bool:
        """True when this cache covers a prefix of `history` (the only caches ever served)."""
        return self.history_length <= len(history) and self.digest == fingerprint(
            history, self.history_length
        )
