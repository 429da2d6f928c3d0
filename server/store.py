"""Per-user state in Redis: history (source of truth), KV caches per model version, event ids.

Keys (the `{user_id}` hash tag keeps a user's keys on one Cluster slot; every Lua script touches
one user's keys only): `plr:{u}:hist` list of item ids, `plr:{u}:kv:<model_version>` cache bytes
(TTL), `plr:{u}:events` hash event_id -> history length when applied. Every write is one atomic
script; KV writes are compare-and-set on the cache header seen at read time. Batch calls pipeline.
Connectivity failures raise `StoreUnavailable` (and open a short circuit breaker); nothing retries
a write that may have been applied except the idempotent ones. Pipelines are not MULTI/EXEC
transactions: each script is atomic on its own, and nothing needs two users' keys to change
together (a Cluster could not do that anyway).
"""

from __future__ import annotations

import abc
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis import exceptions as rex
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from .cache_envelope import HEADER_LEN
from .errors import StoreUnavailable
from .store_scripts import (
    APPEND_EVENTS,
    DELETE_USER,
    READ_HISTORY,
    READ_STATE,
    SYNC_HISTORY,
    WRITE_KV,
)

log = logging.getLogger(__name__)


def hist_key(user_id: str) -> str:
    return f"plr:{{{user_id}}}:hist"


def kv_key(user_id: str, model_version: str) -> str:
    return f"plr:{{{user_id}}}:kv:{model_version}"


def events_key(user_id: str) -> str:
    return f"plr:{{{user_id}}}:events"


@dataclass
class StateRead:
    """Read one user's history and one model version's cache; with `history`, store it first."""

    user_id: str
    model_version: str | None  # None: the history alone (no cache read, no TTL touched)
    history: list[str] | None = None  # authoritative history (request's user_id + history)


@dataclass
class UserState:
    history: list[str]
    kv: bytes | None  # the stored value, header included; None when absent
    history_action: str  # read | unchanged | extended | replaced


@dataclass
class KVWrite:
    """Conditional cache write: applies only if the stored header still equals `expected_head`."""

    user_id: str
    model_version: str
    expected_head: bytes  # first HEADER_LEN bytes seen at read time; b"" = key was absent
    new_head: bytes
    payload: bytes  # full cache bytes, or the tail when `append`
    append: bool = False
    expected_strlen: int = 0  # with `append`: the value's length seen at read time


class Store(abc.ABC):
    """What the services need from per-user storage; RedisStore is the one implementation."""

    @abc.abstractmethod
    async def read_states(self, reads: list[StateRead]) -> list[UserState]: ...

    @abc.abstractmethod
    async def write_caches(self, writes: list[KVWrite]) -> list[bool]: ...

    @abc.abstractmethod
    async def append_events(
        self, user_id: str, item_ids: list[str], event_id: str
    ) -> tuple[bool, int]:
        """(applied, history length); a repeated event_id is not applied again."""

    @abc.abstractmethod
    async def append_events_and_read(
        self, user_id: str, item_ids: list[str], event_id: str, model_versions: list[str]
    ) -> tuple[bool, int, list[UserState]]:
        """append_events, then in the same atomic step the state a StateRead(user_id, version)
        would read, for each of `model_versions`."""

    @abc.abstractmethod
    async def get_history(self, user_id: str) -> list[str]: ...

    @abc.abstractmethod
    async def delete_user(self, user_id: str, model_versions: list[str]) -> bool: ...

    @abc.abstractmethod
    async def ping(self) -> bool: ...

    @abc.abstractmethod
    async def close(self) -> None: ...


class CircuitBreaker:
    """After a connectivity failure, fail fast for a growing window (0.1 s .. 2 s), then probe."""

    def __init__(self, base_s: float = 0.1, cap_s: float = 2.0):
        self.base_s, self.cap_s = base_s, cap_s
        self.failures = 0
        self.open_until = 0.0

    def retry_after(self) -> float:
        return max(0.0, self.open_until - time.monotonic())

    def failure(self) -> None:
        self.failures += 1
        self.open_until = time.monotonic() + min(self.cap_s, self.base_s * 2 ** (self.failures - 1))

    def success(self) -> None:
        self.failures = 0
        self.open_until = 0.0


# Errors that mean "the store is not there right now", as opposed to a bug in a script or a call.
_UNAVAILABLE = (
    rex.ConnectionError,
    rex.TimeoutError,
    rex.ClusterError,
    rex.RedisClusterException,
    rex.OutOfMemoryError,
    rex.ReadOnlyError,
    OSError,
)


class RedisStore(Store):
    def __init__(
        self,
        url: str,
        cluster: bool = False,
        timeout_s: float = 1.0,
        kv_ttl_seconds: int | None = None,
        history_ttl_seconds: int | None = None,
        max_stored_history: int = 10_000,
    ):
        self.kv_ttl = kv_ttl_seconds or 0
        self.hist_ttl = history_ttl_seconds or 0
        self.max_stored_history = max_stored_history
        self.breaker = CircuitBreaker()
        # One retry rebuilds a pooled connection that died with a restarted Redis; every script
        # here is idempotent under a retry (events carry an event_id, KV writes are CAS).
        retry = Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1)
        common: dict[str, Any] = dict(
            socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=retry
        )
        if cluster:
            self.redis = RedisCluster.from_url(url, **common)
        else:
            self.redis = aioredis.Redis.from_url(url, health_check_interval=30, **common)

    # -- plumbing -------------------------------------------------------------------------------
    async def _guard(self, op):
        wait = self.breaker.retry_after()
        if wait > 0:
            raise StoreUnavailable(wait)
        try:
            result = await op()
        except _UNAVAILABLE as exc:
            self.breaker.failure()
            log.warning("store unavailable: %s: %s", type(exc).__name__, exc)
            raise StoreUnavailable(self.breaker.retry_after()) from exc
        self.breaker.success()
        return result

    async def _pipeline(self, calls: list[tuple[str, list, list]]) -> list:
        """Run (script, keys, args) calls in one round trip: one EVAL, or one pipeline."""

        async def run():
            if len(calls) == 1:  # no pipeline object, no extra bookkeeping
                script, keys, args = calls[0]
                return [await self.redis.eval(script, len(keys), *keys, *args)]
            pipe = self.redis.pipeline(transaction=False)
            for script, keys, args in calls:
                pipe.eval(script, len(keys), *keys, *args)
            return await pipe.execute(raise_on_error=True)

        return await self._guard(run)

    # -- reads ----------------------------------------------------------------------------------
    async def read_states(self, reads: list[StateRead]) -> list[UserState]:
        calls = []
        for r in reads:
            if r.model_version is None:
                calls.append((READ_HISTORY, [hist_key(r.user_id)], []))
                continue
            keys = [hist_key(r.user_id), kv_key(r.user_id, r.model_version)]
            if r.history is None:
                calls.append((READ_STATE, keys, [self.kv_ttl, self.hist_ttl]))
            else:
                calls.append((SYNC_HISTORY, keys, [self.kv_ttl, self.hist_ttl, *r.history]))
        replies = await self._pipeline(calls)
        states = []
        for r, reply in zip(reads, replies):
            if r.model_version is None:
                states.append(UserState(orjson.loads(reply), None, "read"))
                continue
            first, kv = reply
            if r.history is None:
                states.append(UserState(orjson.loads(first), kv, "read"))
            else:
                states.append(UserState(list(r.history), kv, first.decode()))
        return states

    async def get_history(self, user_id: str) -> list[str]:
        (reply,) = await self._pipeline([(READ_HISTORY, [hist_key(user_id)], [])])
        return orjson.loads(reply)

    async def ping(self) -> bool:
        return bool(await self._guard(self.redis.ping))

    # -- writes ---------------------------------------------------------------------------------
    async def write_caches(self, writes: list[KVWrite]) -> list[bool]:
        calls = []
        for w in writes:
            mode = "append" if w.append else "set"
            args = [mode, w.expected_head, w.new_head, w.payload, w.expected_strlen, self.kv_ttl]
            calls.append((WRITE_KV, [kv_key(w.user_id, w.model_version)], [*args, HEADER_LEN]))
        if not calls:
            return []
        return [bool(ok) for ok in await self._pipeline(calls)]

    async def append_events(
        self, user_id: str, item_ids: list[str], event_id: str
    ) -> tuple[bool, int]:
        applied, length, _ = await self.append_events_and_read(user_id, item_ids, event_id, [])
        return applied, length

    async def append_events_and_read(
        self, user_id: str, item_ids: list[str], event_id: str, model_versions: list[str]
    ) -> tuple[bool, int, list[UserState]]:
        keys = [hist_key(user_id), events_key(user_id)]
        keys += [kv_key(user_id, v) for v in model_versions]
        args = [event_id, self.hist_ttl, self.max_stored_history, self.kv_ttl, *item_ids]
        (reply,) = await self._pipeline([(APPEND_EVENTS, keys, args)])
        applied, length = bool(reply[0]), int(reply[1])
        if not model_versions:
            return applied, length, []
        history = orjson.loads(reply[2])
        return applied, length, [UserState(history, kv, "read") for kv in reply[3:]]

    async def delete_user(self, user_id: str, model_versions: list[str]) -> bool:
        # Keys of model versions this process does not serve expire with their TTL (no SCAN).
        keys = [hist_key(user_id), events_key(user_id)]
        keys += [kv_key(user_id, v) for v in model_versions]
        (deleted,) = await self._pipeline([(DELETE_USER, keys, [])])
        return int(deleted) > 0

    async def close(self) -> None:
        try:
            await self.redis.aclose()
        except _UNAVAILABLE as exc:  # closing a dead connection is not worth a traceback
            log.info("closing store: %s", exc)
