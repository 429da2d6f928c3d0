"""Per-user state in Redis: history (source of truth), its token, event ids, and per model version
a KV cache and a precomputed user state.

Keys (the `{user_id}` hash tag keeps a user's keys on one Cluster slot; every Lua script touches
one user's keys only): `plr:{u}:hist` list of item ids, `plr:{u}:tok` history token,
`plr:{u}:eids` sorted set of applied event ids, `plr:{u}:kv:<version>` cache bytes and
`plr:{u}:st:<version>` state bytes (both TTL'd, both behind a 32-byte envelope naming the history
they cover: server/envelope.py). Every operation is one atomic script (server/store_scripts.py);
a read returns, per model version, either the current state alone or what it takes to compute it.

Errors: connectivity failures raise `StoreUnavailable` and open a short circuit breaker; any other
Redis error (OOM, BUSY, READONLY, WRONGTYPE, a script error) raises `StoreUnavailable` for that call
only (counted by its `reason`), never a bare exception. Nothing retries a write that may have been
applied except the idempotent ones (events carry an event id, cache/state writes are conditional).
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson
import redis.asyncio as aioredis
from redis import exceptions as rex
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from .envelope import new_token
from .redis_wire import Wire
from .errors import StoreUnavailable
from .store_scripts import (APPEND_EVENTS, DELETE_USER, READ, READ_HISTORY, READ_STATE,
                            SYNC_HISTORY, WRITE_STATE)

log = logging.getLogger(__name__)


def hist_key(user_id: str) -> str:
    return f"plr:{{{user_id}}}:hist"


def token_key(user_id: str) -> str:
    return f"plr:{{{user_id}}}:tok"


def events_key(user_id: str) -> str:
    return f"plr:{{{user_id}}}:eids"


def kv_key(user_id: str, model_version: str) -> str:
    return f"plr:{{{user_id}}}:kv:{model_version}"


def state_key(user_id: str, model_version: str) -> str:
    return f"plr:{{{user_id}}}:st:{model_version}"


@dataclass
class ModelView:
    """What one model version needs for the user's current history (one script's answer)."""

    fresh_state: bytes | None = None  # stored state covering exactly the current history
    base_state: bytes | None = None  # with `kv`: a state covering the same prefix as the cache
    kv: bytes | None = None  # a stored cache covering a prefix (`base` entries when base_state)
    base: int = 0  # `items` are the history entries from this index on (0 = the whole history)
    items: list[str] | None = None  # None when fresh_state is set (nothing else was read)
    stale_kv: bool = False  # a cache existed but was made for another history
    near: bool = False  # the stored cache is the one the read's hint named: use the local copy
    written: bool = False  # events: the caller's precomputed write was applied (nothing read)


@dataclass
class UserView:
    length: int  # stored history entries now
    token: str  # the history's token ('' when there is no history)
    models: list[ModelView] = field(default_factory=list)  # one per requested version
    action: str | None = None  # sync: unchanged | extended | replaced
    applied: bool | None = None  # events: False when the event id was seen before


@dataclass
class StateWrite:
    """Store a cache and/or state computed for the history (length, token); conditional."""

    user_id: str
    model_version: str
    length: int
    token: str
    kv_mode: str = "none"  # none | set | append
    kv_head: bytes = b""  # the envelope of the new cache value
    kv_payload: bytes = b""  # set: the cache bytes; append: the rows to append
    expected_head: bytes = b""  # append: the stored value's envelope it extends
    expected_strlen: int = 0  # append: the stored value's length it extends
    state: bytes = b""  # the whole state value (envelope included); b"" = none


@dataclass(frozen=True)
class IdempotencyPolicy:
    """How long and how many applied event ids a user keeps (evicted per id, oldest first)."""

    window_s: int = 24 * 3600
    max_ids: int = 10_000
    auto_keep_s: int = 60  # ids made for id-less events: just long enough for a client retry


class Store(abc.ABC):
    """What the services need from per-user storage; RedisStore is the one implementation."""

    # `hints`, one per version: the 32-byte envelope of the cache the caller holds locally (the
    # near cache) or b""; a view then says `near` instead of sending bytes the caller has.
    @abc.abstractmethod
    async def read(self, user_id: str, versions: list[str], skip_state: bool = False,
                   hints: list[bytes] | None = None) -> UserView:
        """Per version: the current state alone, or what computing it needs (skip_state: ignore
        stored states, e.g. after one failed to decode)."""

    @abc.abstractmethod
    async def read_state(self, user_id: str, version: str) -> tuple[int, bytes | None]:
        """(stored history length, the version's state value if it covers exactly that history,
        else None): one small read, no cache and no history entries."""

    @abc.abstractmethod
    async def sync(self, user_id: str, history: list[str], versions: list[str],
                   hints: list[bytes] | None = None) -> UserView:
        """Make the stored history equal `history` (extend a prefix, else replace), then read."""

    @abc.abstractmethod
    async def append_events(self, user_id: str, item_ids: list[str], event_id: str | None,
                            versions: list[str], hints: list[bytes] | None = None,
                            writes: list[StateWrite | None] | None = None) -> UserView:
        """Append once per event id (None: no id), then read what extending each model's cache
        needs; a model with no cache to extend gets a view without `kv` or `items` (events never
        build caches: the next /recommend does). `applied` says whether it appended.

        `writes` (one per version, or None): a cache and state computed before the call for the
        history (write.length - len(item_ids), write.token) extended by these items. Such a write
        is applied, in the same atomic step, only if the items were appended right after exactly
        that history; its view then says `written` and nothing else is read. Otherwise it is
        dropped and the view is what it would have been without it."""

    # True when every call goes down one connection in call order, so a call made after a write
    # was sent runs after it (WriteBehind then waits for "sent", not for the reply).
    sends_in_order: bool = False

    @abc.abstractmethod
    async def write_states(self, writes: list[StateWrite],
                           on_sent: Callable[[], None] | None = None
                           ) -> list[tuple[bool, bool] | Exception]:
        """(cache written, state written) per write, or that write's error; one round trip.
        `on_sent` is called once the writes are on their way (only where `sends_in_order`)."""

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


# Errors that mean "the store is not there right now" (open the breaker), as opposed to an error
# reply from a Redis that is up (OOM, BUSY, WRONGTYPE...): that fails one call, not the process.
_UNREACHABLE = (
    rex.ConnectionError,
    rex.TimeoutError,
    rex.ClusterError,
    rex.RedisClusterException,
    OSError,
)


def _reason(exc: Exception) -> str:
    """unreachable | oom | readonly | busy | error_reply. Errors raised inside a script arrive as
    a plain ResponseError naming the original error, hence the text checks."""
    if isinstance(exc, _UNREACHABLE):
        return "unreachable"
    text = str(exc)
    if isinstance(exc, rex.OutOfMemoryError) or "OOM command not allowed" in text:
        return "oom"
    if isinstance(exc, rex.ReadOnlyError) or "READONLY" in text:
        return "readonly"
    if isinstance(exc, rex.BusyLoadingError) or text.startswith(("BUSY", "LOADING")):
        return "busy"
    return "error_reply"


class _Script:
    """A Lua script called by EVALSHA; NOSCRIPT (a restarted or new node) falls back to EVAL."""

    def __init__(self, body: str):
        self.body = body
        self.sha = hashlib.sha1(body.encode()).hexdigest()


_SCRIPTS = {name: _Script(body) for name, body in (
    ("read_history", READ_HISTORY), ("read", READ), ("read_state", READ_STATE),
    ("sync", SYNC_HISTORY),
    ("append", APPEND_EVENTS), ("write", WRITE_STATE), ("delete", DELETE_USER))}


def _views(raw: list) -> list[ModelView]:
    out = []
    for view in raw:
        mode = int(view[0])
        if mode == 1:
            out.append(ModelView(fresh_state=view[1]))
        elif mode == 4:
            out.append(ModelView(base=int(view[1]), items=orjson.loads(view[2]), near=True))
        elif mode in (2, 3):
            out.append(ModelView(base_state=view[1], kv=view[2], base=int(view[3]),
                                 items=orjson.loads(view[4]),
                                 stale_kv=mode == 3 and bool(int(view[5]))))
        elif mode == 5:  # events: no cache to extend, nothing read
            out.append(ModelView(stale_kv=bool(int(view[1]))))
        elif mode == 6:  # events: the precomputed write landed
            out.append(ModelView(written=True))
        else:  # no history
            out.append(ModelView(items=[]))
    return out


def _hints(hints: list[bytes] | None, versions: list[str]) -> list[bytes]:
    if hints is None:
        return [b""] * len(versions)
    if len(hints) != len(versions):
        raise ValueError(f"{len(hints)} hints for {len(versions)} model versions")
    return hints


class RedisStore(Store):
    def __init__(
        self,
        url: str,
        cluster: bool = False,
        timeout_s: float = 1.0,
        kv_ttl_seconds: int | None = None,
        history_ttl_seconds: int | None = None,
        max_stored_history: int = 10_000,
        idempotency: IdempotencyPolicy | None = None,
    ):
        self.kv_ttl = kv_ttl_seconds or 0
        self.hist_ttl_ms = 1000 * (history_ttl_seconds or 0)
        self.max_stored_history = max_stored_history
        self.idempotency = idempotency or IdempotencyPolicy()
        self.breaker = CircuitBreaker()
        # One retry rebuilds a pooled connection that died with a restarted Redis; every script
        # here is idempotent under a retry (events carry an event id, writes are conditional).
        retry = Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1)
        common: dict[str, Any] = dict(
            socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=retry
        )
        self.cluster = cluster
        # The lean client for one Redis (redis:// and unix://); redis-py for a Cluster and TLS.
        self.wire = None if cluster else Wire.from_url(url, timeout_s)
        self.sends_in_order = self.wire is not None
        self.redis: Any = None
        if cluster:
            self.redis = RedisCluster.from_url(url, **common)
        elif self.wire is None:
            self.redis = aioredis.Redis.from_url(url, health_check_interval=30, **common)

    # -- plumbing -------------------------------------------------------------------------------
    async def _guard(self, op):
        wait = self.breaker.retry_after()
        if wait > 0:
            raise StoreUnavailable(wait, "breaker_open")
        try:
            result = await op()
        except (rex.RedisError, rex.RedisClusterException, OSError) as exc:
            raise self._failure(exc) from exc
        self.breaker.success()
        return result

    def _failure(self, exc: Exception) -> StoreUnavailable:
        reason = _reason(exc)
        if reason == "unreachable":
            self.breaker.failure()
            log.warning("store unavailable: %s: %s", type(exc).__name__, exc)
            return StoreUnavailable(self.breaker.retry_after(), reason)
        log.error("store error reply (%s): %s: %s", reason, type(exc).__name__, exc)
        return StoreUnavailable(1.0, reason)

    async def _eval(self, script: _Script, keys: list[str], args: list, on_sent=None) -> Any:
        """EVALSHA, or EVAL when Redis does not know the script (restarted, a new node)."""
        if self.wire is not None:
            try:
                return await self.wire.call("EVALSHA", script.sha, len(keys), *keys, *args,
                                            on_sent=on_sent)
            except rex.NoScriptError:  # once per script after a restart: order may not hold,
                # and need not (every write is conditional; a read that overtakes it recomputes)
                return await self.wire.call("EVAL", script.body, len(keys), *keys, *args)
        try:
            return await self.redis.evalsha(script.sha, len(keys), *keys, *args)
        except rex.NoScriptError:
            return await self.redis.eval(script.body, len(keys), *keys, *args)

    async def _call(self, name: str, keys: list[str], args: list) -> Any:
        return await self._guard(lambda: self._eval(_SCRIPTS[name], keys, args))

    def _model_keys(self, user_id: str, versions: list[str]) -> list[str]:
        keys = []
        for v in versions:
            keys += [state_key(user_id, v), kv_key(user_id, v)]
        return keys

    # -- reads ----------------------------------------------------------------------------------
    async def read(self, user_id: str, versions: list[str], skip_state: bool = False,
                   hints: list[bytes] | None = None) -> UserView:
        keys = [hist_key(user_id), token_key(user_id), *self._model_keys(user_id, versions)]
        n, tok, views = await self._call("read", keys, ["1" if skip_state else "0",
                                                        *_hints(hints, versions)])
        return UserView(int(n), tok.decode(), _views(views))

    async def read_state(self, user_id: str, version: str) -> tuple[int, bytes | None]:
        keys = [hist_key(user_id), token_key(user_id), state_key(user_id, version)]
        n, value = await self._call("read_state", keys, [])
        return int(n), value or None

    async def get_history(self, user_id: str) -> list[str]:
        return orjson.loads(await self._call("read_history", [hist_key(user_id)], []))

    async def ping(self) -> bool:
        if self.wire is not None:
            return bool(await self._guard(lambda: self.wire.call("PING")))
        return bool(await self._guard(self.redis.ping))

    # -- writes ---------------------------------------------------------------------------------
    def _user_keys(self, user_id: str, versions: list[str]) -> list[str]:
        return [hist_key(user_id), token_key(user_id), events_key(user_id),
                *self._model_keys(user_id, versions)]

    async def sync(self, user_id: str, history: list[str], versions: list[str],
                   hints: list[bytes] | None = None) -> UserView:
        reply = await self._call("sync", self._user_keys(user_id, versions),
                                 [new_token(), self.hist_ttl_ms, *_hints(hints, versions),
                                  *history])
        action, n, tok, views = reply
        return UserView(int(n), tok.decode(), _views(views), action=action.decode())

    async def append_events(self, user_id: str, item_ids: list[str], event_id: str | None,
                            versions: list[str], hints: list[bytes] | None = None,
                            writes: list[StateWrite | None] | None = None) -> UserView:
        policy = self.idempotency
        if writes is None:
            writes = [None] * len(versions)
        elif len(writes) != len(versions):
            raise ValueError(f"{len(writes)} writes for {len(versions)} model versions")
        args = [event_id or f"auto:{new_token()}{new_token()}", "0" if event_id else "1",
                new_token(), self.hist_ttl_ms, self.max_stored_history, 1000 * policy.window_s,
                policy.max_ids, 1000 * policy.auto_keep_s, self.kv_ttl, *_hints(hints, versions)]
        for w in writes:
            if w is None:
                args += [-1, "", "none", "", "", "", 0, ""]
            else:
                args += [w.length - len(item_ids), w.token, w.kv_mode, w.kv_head, w.kv_payload,
                         w.expected_head, w.expected_strlen, w.state]
        applied, n, tok, views = await self._call("append", self._user_keys(user_id, versions),
                                                  [*args, *item_ids])
        return UserView(int(n), tok.decode(), _views(views), applied=bool(applied))

    def _write_call(self, group: list[StateWrite]) -> tuple[list[str], list]:
        """One WRITE_STATE call for writes of one user computed for the same history."""
        first = group[0]
        keys = [hist_key(first.user_id), token_key(first.user_id)]
        args: list = [first.length, first.token, self.kv_ttl]
        for w in group:
            keys += [kv_key(w.user_id, w.model_version), state_key(w.user_id, w.model_version)]
            args += [w.kv_mode, w.kv_head, w.kv_payload, w.expected_head, w.expected_strlen,
                     w.state]
        return keys, args

    async def write_states(self, writes: list[StateWrite],
                           on_sent: Callable[[], None] | None = None
                           ) -> list[tuple[bool, bool] | Exception]:
        """Every write conditionally (WRITE_STATE): one script call per (user, history), all of
        them in one round trip; a reply per write, in order: (cache written, state written), or
        the exception of its call. `on_sent` fires once they are written to the connection."""
        if not writes:
            return []
        script = _SCRIPTS["write"]
        groups: dict[tuple[str, int, str], list[int]] = {}
        for i, w in enumerate(writes):  # a user's models, computed in one batch, write together
            groups.setdefault((w.user_id, w.length, w.token), []).append(i)
        members = list(groups.values())
        calls = [self._write_call([writes[i] for i in group]) for group in members]

        async def run():
            if len(calls) == 1:  # the usual case (one user per batch): no pipeline
                keys, args = calls[0]
                try:
                    return [await self._eval(script, keys, args, on_sent)]
                except rex.ResponseError as exc:  # an error reply: this call's result, as below
                    return [exc]
            if self.wire is not None:
                replies = await self.wire.call_many(
                    [("EVALSHA", script.sha, len(k), *k, *a) for k, a in calls], on_sent)
            elif self.cluster:  # a cluster pipeline refuses EVALSHA: one call per user, at once
                replies = await asyncio.gather(
                    *(self.redis.evalsha(script.sha, len(k), *k, *a) for k, a in calls),
                    return_exceptions=True)
            else:
                pipe = self.redis.pipeline(transaction=False)
                for keys, args in calls:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                replies = await pipe.execute(raise_on_error=False)
            for i, reply in enumerate(replies):  # first call after a Redis restart: load it
                if isinstance(reply, rex.NoScriptError):
                    try:
                        replies[i] = await self._eval(script, *calls[i])
                    except rex.ResponseError as exc:
                        replies[i] = exc
            return replies

        replies = await self._guard(run)
        out: list[tuple[bool, bool] | Exception] = [None] * len(writes)  # type: ignore[list-item]
        for group, reply in zip(members, replies):
            failure = self._failure(reply) if isinstance(reply, Exception) else None
            for n, i in enumerate(group):
                out[i] = failure if failure is not None else (bool(reply[2 * n]),
                                                              bool(reply[2 * n + 1]))
        return out

    async def delete_user(self, user_id: str, model_versions: list[str]) -> bool:
        # Keys of model versions this process does not serve expire with their TTL (no SCAN);
        # with the token gone they can never be served again, even for a recreated history.
        keys = [hist_key(user_id), token_key(user_id), events_key(user_id),
                *self._model_keys(user_id, model_versions)]
        return int(await self._call("delete", keys, [])) > 0

    async def close(self) -> None:
        try:
            if self.wire is not None:
                await self.wire.aclose()
            else:
                await self.redis.aclose()
        except (rex.RedisError, OSError) as exc:  # closing a dead connection: not worth a trace
            log.info("closing store: %s", exc)
