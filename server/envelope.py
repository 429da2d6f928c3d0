"""The 32-byte envelope in front of every stored cache and state: which history it was made for.

Layout: 4-byte magic (`PKV2` KV cache, `PST1` user state), the covered history length as 12
decimal digits, the history's 16-character token (server/store_scripts.py explains tokens). The
Lua scripts compare these bytes directly; nothing else is needed to tell a current value, a
usable prefix and a stale one apart.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

ENVELOPE_LEN = 32
KV_MAGIC, STATE_MAGIC = b"PKV2", b"PST1"
TOKEN_LEN = 16


def new_token() -> str:
    """A fresh history token (random, so a deleted-and-recreated history never reuses one)."""
    return secrets.token_hex(TOKEN_LEN // 2)


@dataclass(frozen=True)
class Envelope:
    magic: bytes
    length: int  # stored history entries the value covers
    token: str

    def pack(self) -> bytes:
        if len(self.token) != TOKEN_LEN or not 0 <= self.length < 10**12:
            raise ValueError(f"bad envelope: length {self.length}, token {self.token!r}")
        return self.magic + b"%012d" % self.length + self.token.encode()

    @classmethod
    def unpack(cls, value: bytes) -> "Envelope | None":
        """The envelope of a stored value, or None when it is not one of ours."""
        head = value[:ENVELOPE_LEN]
        if len(head) < ENVELOPE_LEN or head[:4] not in (KV_MAGIC, STATE_MAGIC):
            return None
        digits = head[4:16]
        if not digits.isdigit():
            return None
        return cls(head[:4], int(digits), head[16:].decode("ascii", "replace"))
