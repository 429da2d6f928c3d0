"""Domain errors raised by services and the store; `server.app` maps each to one HTTP status.

Services never build HTTP responses themselves, so the mapping (422/404/401/413/503) lives in one
place and a bad input can never surface as a 500.
"""

from __future__ import annotations

import math

import orjson


class ServiceError(Exception):
    """Base of every error the HTTP layer knows how to answer."""


class InputError(ServiceError):
    """422: a request field breaks a limit; `field` is its location, e.g. ("body", "history")."""

    def __init__(self, field: tuple[str, ...], message: str, kind: str = "value_error", value=None):
        super().__init__(message)
        self.field, self.message, self.kind, self.value = field, message, kind, value


class UnknownItems(InputError):
    def __init__(self, field: tuple[str, ...], item_ids: list[str], model: str | None = None):
        where = f" for model {model!r}" if model else ""
        shown = item_ids[:20] + (["..."] if len(item_ids) > 20 else [])
        super().__init__(field, f"unknown item ids{where}: {shown}", "unknown_items", item_ids)


class UnknownModel(ServiceError):
    def __init__(self, name: str, available: list[str]):
        super().__init__(f"unknown model {name!r}; available: {available}")


class UnknownUser(ServiceError):
    def __init__(self, user_id: str):
        super().__init__(f"no stored history for user {user_id!r}")


class Unavailable(ServiceError):
    """503 + Retry-After: the request is fine but cannot be served right now; `kind` names why
    (the metric label of plr_errors_total)."""

    kind = "unavailable"

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after_s))


class StoreUnavailable(Unavailable):
    """The store is unreachable (`reason` "unreachable" / "breaker_open") or answered an error
    (OOM, BUSY, READONLY, an error reply) and the request needs it."""

    kind = "store_unavailable"

    def __init__(self, retry_after_s: float = 1.0, reason: str = "unreachable"):
        super().__init__(f"the user store is unavailable ({reason}); retry later", retry_after_s)
        self.reason = reason


class Overloaded(Unavailable):
    """Shed: the compute queue is full, or the request waited past its deadline."""

    kind = "overloaded"

    def __init__(self, why: str):
        super().__init__(f"server overloaded ({why}); retry later")
        self.why = why


class ShuttingDown(Unavailable):
    kind = "shutting_down"

    def __init__(self):
        super().__init__("server is shutting down; retry on another instance")


def error_reply(exc: BaseException, count) -> tuple[int, bytes, dict[str, str]] | None:
    """The HTTP answer to a domain error, as (status, JSON body, extra headers), after counting it
    with `count(kind)` (plr_errors_total); None for anything that is not one (a bug: the caller
    lets it become a logged 500). The app's exception handlers and the hot routes both use this,
    so one error reads the same whichever path served the request."""
    if isinstance(exc, InputError):
        count("invalid_request")
        detail = {"loc": list(exc.field), "msg": exc.message, "type": exc.kind}
        if isinstance(exc.value, list):
            detail["input"] = exc.value[:100]
        return 422, orjson.dumps({"detail": [detail]}), {}
    if isinstance(exc, (UnknownModel, UnknownUser)):
        count("not_found")
        return 404, orjson.dumps({"detail": str(exc)}), {}
    if isinstance(exc, Unavailable):
        count(exc.kind)
        if isinstance(exc, StoreUnavailable):
            count(f"store_{exc.reason}")
        return 503, orjson.dumps({"detail": str(exc)}), {"Retry-After": str(exc.retry_after)}
    return None
