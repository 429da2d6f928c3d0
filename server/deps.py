"""Reusable route dependencies: the app's services, and the optional Bearer API key check.

All are `async def` on purpose: FastAPI runs a plain `def` dependency in a worker thread, which
cost every request two thread hand-offs (and GIL contention with the compute thread) for what
are attribute lookups.
"""

from __future__ import annotations

import secrets

from fastapi import HTTPException, Request

from .lifecycle import AppState
from .services import Services


async def app_state(request: Request) -> AppState:
    return request.app.state.plr


async def services(request: Request) -> Services:
    return request.app.state.plr.services


def api_key_matches(authorization: str, expected: str | None) -> bool:
    """Whether an `Authorization` header value is `Bearer <expected>` (always, with no key set)."""
    if expected is None:
        return True
    scheme, _, token = authorization.partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(),
                                                                 expected.encode())


async def require_api_key(request: Request) -> None:
    """401 unless `Authorization: Bearer <PLR_API_KEY>` (no-op when no key is configured)."""
    if not api_key_matches(request.headers.get("authorization", ""),
                           request.app.state.plr.settings.api_key):
        raise HTTPException(
            status_code=401,
            detail="missing or wrong API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
