"""The store's lean Redis client (server/redis_wire.py) against a real embedded redis-server:
replies matched to their callers under concurrency and cancellation, redis-py's error types, a
stuck Redis timing out without poisoning later calls, passwords and databases from the URL."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import redis
from redis import exceptions as rex

from server.embedded_redis import EmbeddedRedis
from server.redis_wire import Wire


def run(coro):
    return asyncio.run(coro)


async def with_wire(url, fn, timeout_s=1.0):
    wire = Wire.from_url(url, timeout_s)
    try:
        return await fn(wire)
    finally:
        await wire.aclose()


def test_urls_name_the_socket_host_database_and_password():
    unix = Wire.from_url("unix:///tmp/r.sock?db=3&password=p%40ss", 1.0)
    tcp = Wire.from_url("redis://me:s%3Dcret@example.org:7000/2", 1.0)
    plain = Wire.from_url("redis://localhost", 1.0)
    assert (unix.path, unix.db, unix.password) == ("/tmp/r.sock", 3, "p@ss")
    assert (tcp.host, tcp.port, tcp.db, tcp.username, tcp.password) == (
        "example.org", 7000, 2, "me", "s=cret")
    assert (plain.host, plain.port, plain.db, plain.password) == ("localhost", 6379, 0, None)
    # TLS and anything else stay with redis-py
    assert Wire.from_url("rediss://localhost", 1.0) is None


def test_concurrent_calls_share_one_connection_and_each_gets_its_own_reply(redis_url):
    async def go(wire):
        await wire.call_many([("SET", f"k{i}", f"v{i}".encode() * (i % 50 + 1)) for i in range(300)])
        gets = [asyncio.ensure_future(wire.call("GET", f"k{i}")) for i in range(300)]
        doomed = [asyncio.ensure_future(wire.call("GET", f"k{i}")) for i in range(0, 300, 7)]
        await asyncio.sleep(0)
        for task in doomed:  # callers that give up: their replies must not shift the others'
            task.cancel()
        replies = await asyncio.gather(*gets)
        after = await wire.call("GET", "k5")
        return replies, after

    replies, after = run(with_wire(redis_url, go))
    assert replies == [f"v{i}".encode() * (i % 50 + 1) for i in range(300)]
    assert after == b"v5" * 6


def test_error_replies_raise_redis_py_exceptions_and_pipelines_return_them(redis_url):
    async def go(wire):
        await wire.call("SET", "s", "x")
        with pytest.raises(rex.NoScriptError):
            await wire.call("EVALSHA", "0" * 40, 0)
        with pytest.raises(rex.ResponseError, match="WRONGTYPE"):
            await wire.call("LPUSH", "s", "y")
        return await wire.call_many([("GET", "s"), ("LPUSH", "s", "y"), ("GET", "missing")])

    ok, error, missing = run(with_wire(redis_url, go))
    assert ok == b"x" and isinstance(error, rex.ResponseError) and missing is None


def test_a_stuck_redis_times_out_and_the_next_call_after_it_recovers_works(redis_server,
                                                                           redis_url):
    async def go(wire):
        await wire.call_many([("SET", "a", "1"), ("SET", "b", "2")])
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            results = await asyncio.gather(*(wire.call("GET", "a") for _ in range(5)),
                                           return_exceptions=True)
            waited = time.monotonic() - started
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        return results, waited, await wire.call("GET", "b")

    results, waited, after = run(with_wire(redis_url, go, timeout_s=0.3))
    assert all(isinstance(r, rex.TimeoutError) for r in results) and waited < 2.0
    assert after == b"2"  # a fresh connection: no late reply of the stuck calls is mistaken


def test_a_restarted_redis_is_reconnected_once_and_a_stopped_one_refuses(redis_server,
                                                                         redis_url):
    async def go(wire):
        await wire.call("PING")
        redis_server.stop()
        redis_server.start()
        again = await wire.call("PING")  # the old connection died: one retry on a new one
        redis_server.stop()
        with pytest.raises(rex.ConnectionError):
            await wire.call("PING")
        redis_server.start()
        return again, await wire.call("PING")

    assert run(with_wire(redis_url, go)) == (b"PONG", b"PONG")


def test_the_password_and_database_in_the_url_are_used(tmp_path):
    with EmbeddedRedis(tmp_path) as server:
        path = server.socket_path
        admin = redis.Redis(unix_socket_path=str(path))
        admin.config_set("requirepass", "s3cret")
        admin.close()

        async def go():
            good = Wire.from_url(f"unix://{path}?db=2&password=s3cret", 1.0)
            bad = Wire.from_url(f"unix://{path}?password=wrong", 1.0)
            try:
                await good.call("SET", "k", "in db 2")
                with pytest.raises(rex.AuthenticationError):
                    await bad.call("PING")
                return await good.call_many([("GET", "k"), ("SELECT", 0), ("GET", "k")])
            finally:
                await good.aclose()
                await bad.aclose()

        assert run(go()) == [b"in db 2", b"OK", None]
