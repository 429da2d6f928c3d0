"""A lean asyncio Redis client for the store's script calls: one pipelined connection, hiredis
replies, redis-py's exception types.

Why: the store makes three Redis calls per /events + /recommend pair, and redis-py's asyncio
client spends ~50 us of Python on each on top of the round trip (pool checkout and release, a
retry wrapper, a task per timeout, health checks): a PING round trip with the server and Redis on
one core costs ~70 us through it and ~20 us through this (scratch measure, 2026-11-30). The
store uses this for `redis://` and `unix://` URLs and keeps redis-py for Redis Cluster and TLS.

Contract:
- `Wire.from_url(url, timeout_s)`: a client for `redis://[[user]:password@]host[:port][/db]` or
  `unix://path[?db=N&password=...]`, or None for any other scheme (the caller uses redis-py).
  Nothing connects until the first call.
- `await wire.call(*args)`: one command; the reply as hiredis decodes it (bytes, int, list,
  None). An error reply raises redis-py's exception for it (`NoScriptError`, `OutOfMemoryError`,
  `ReadOnlyError`, `BusyLoadingError`, `ResponseError`, ...), exactly as redis-py would.
- `await wire.call_many([args, ...])`: pipelined in one write; replies in order, an error reply
  returned in its place as that exception (a failed transport still raises).
- Concurrent calls share the one connection: commands are written in call order and replies
  matched first in, first out. Redis runs one connection's commands in the order they arrive, so
  a command written after another is executed after it: `on_sent` (optional, on `call` and
  `call_many`) is called once the command is handed to the connection, before its reply, for
  callers that only need "anything I send from now on runs after this" (the store's writes).
  A caller that gives up (cancelled) leaves its reply to be read and dropped, so the order
  holds.
- Failures raise `redis.exceptions.ConnectionError` (refused, reset, closed) or `TimeoutError`
  (no connection or no reply within `timeout_s`). A timeout closes the connection (a stuck Redis
  must not hold every later call behind it) and fails every call waiting on it; the next call
  connects again. A call that fails because a connection it reused had died (a restarted Redis)
  is sent once more on a fresh one: every store script is idempotent under a retry.
"""

from __future__ import annotations

import asyncio
from collections import deque
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
from redis import exceptions as rex
from redis._parsers.base import BaseParser  # redis-py's own error-reply -> exception mapping


class _Protocol(asyncio.Protocol):
    """One connection: a FIFO of reply futures fed by the hiredis reader."""

    def __init__(self):
        self.reader = hiredis.Reader(protocolError=rex.InvalidResponse,
                                     replyError=BaseParser.parse_error)
        self.waiting: deque[asyncio.Future] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed: Exception | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                future = self.waiting.popleft()
                if not future.done():  # a caller that gave up: its reply is dropped
                    future.set_result(reply)
        except (rex.InvalidResponse, IndexError) as exc:  # garbage, or a reply nobody asked for
            self.close(rex.ConnectionError(f"bad reply from Redis: {exc!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(rex.ConnectionError(f"Redis closed the connection: {exc or 'end of stream'}"))

    def send(self, packed: bytes, count: int) -> list[asyncio.Future]:
        if self.closed is not None:
            raise self.closed
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(count)]
        self.waiting.extend(futures)
        self.transport.write(packed)
        return futures

    def close(self, exc: Exception) -> None:
        self._fail(exc)
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: Exception) -> None:
        if self.closed is None:
            self.closed = exc
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(exc)


class Wire:
    def __init__(self, timeout_s: float, path: str | None = None, host: str = "127.0.0.1",
                 port: int = 6379, db: int = 0, username: str | None = None,
                 password: str | None = None):
        self.timeout_s = timeout_s
        self.path, self.host, self.port = path, host, port
        self.db, self.username, self.password = db, username, password
        self._conn: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    @classmethod
    def from_url(cls, url: str, timeout_s: float) -> "Wire | None":
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        password = unquote(parts.password) if parts.password else query.get("password")
        username = unquote(parts.username) if parts.username else query.get("username")
        if parts.scheme == "unix":
            return cls(timeout_s, path=unquote(parts.path), db=int(query.get("db", 0)),
                       username=username or None, password=password)
        if parts.scheme == "redis":
            db = parts.path.strip("/") or query.get("db", "0")
            return cls(timeout_s, host=parts.hostname or "127.0.0.1", port=parts.port or 6379,
                       db=int(db), username=username or None, password=password)
        return None

    # -- calls ------------------------------------------------------------------------------------
    async def call(self, *args, on_sent=None):
        (reply,) = await self._send(hiredis.pack_command(args), 1, on_sent)
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def call_many(self, commands: list[tuple], on_sent=None) -> list:
        return await self._send(b"".join(hiredis.pack_command(c) for c in commands),
                                len(commands), on_sent)

    async def _send(self, packed: bytes, count: int, on_sent) -> list:
        conn = self._conn
        reused = conn is not None and conn.closed is None
        try:
            return await self._exchange(packed, count, on_sent)
        except rex.ConnectionError:
            if not reused:
                raise
            return await self._exchange(packed, count, on_sent)  # the reused connection had died

    async def _exchange(self, packed: bytes, count: int, on_sent) -> list:
        conn = None
        try:
            async with asyncio.timeout(self.timeout_s):
                conn = await self._connection()
                replies = conn.send(packed, count)
                if on_sent is not None:
                    on_sent()
                return await asyncio.gather(*replies)
        except TimeoutError:
            exc = rex.TimeoutError(f"no reply from Redis within {self.timeout_s} s")
            if conn is not None:
                conn.close(exc)  # a stuck Redis: later calls must not queue behind it
            raise exc from None

    # -- connection -------------------------------------------------------------------------------
    async def _connection(self) -> _Protocol:
        conn = self._conn
        if conn is not None and conn.closed is None:
            return conn
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._conn is not None and self._conn.closed is None:
                return self._conn
            self._conn = await self._connect()
            return self._conn

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            if self.path is not None:
                _, conn = await loop.create_unix_connection(_Protocol, self.path)
            else:
                _, conn = await loop.create_connection(_Protocol, self.host, self.port)
        except OSError as exc:
            where = self.path or f"{self.host}:{self.port}"
            raise rex.ConnectionError(f"cannot connect to Redis at {where}: {exc}") from exc
        try:
            await self._set_up(conn)
        except BaseException:  # refused, or timed out / cancelled half way: never left open
            conn.close(rex.ConnectionError("connection set-up failed"))
            raise
        return conn

    async def _set_up(self, conn: _Protocol) -> None:
        """AUTH and SELECT, when the URL asks for them."""
        setup = []
        if self.password is not None:
            setup.append(("AUTH", self.username, self.password) if self.username
                         else ("AUTH", self.password))
        if self.db:
            setup.append(("SELECT", self.db))
        if setup:
            replies = await asyncio.gather(*conn.send(
                b"".join(hiredis.pack_command(c) for c in setup), len(setup)))
            for reply in replies:
                if isinstance(reply, Exception):  # a wrong password, a db that does not exist
                    raise reply

    async def aclose(self) -> None:
        if self._conn is not None:
            self._conn.close(rex.ConnectionError("client closed"))
            self._conn = None
