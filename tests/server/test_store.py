"""RedisStore against a real embedded redis-server: atomic, conditional, idempotent writes."""

from __future__ import annotations

import asyncio

import pytest

from server.cache_envelope import HEADER_LEN, Envelope
from server.errors import StoreUnavailable
from server.store import KVWrite, RedisStore, StateRead, UserState, hist_key, kv_key


def run(coro):
    return asyncio.run(coro)


async def with_store(url, fn, **kw):
    store = RedisStore(url, **kw)
    try:
        return await fn(store)
    finally:
        await store.close()


def test_events_are_all_or_nothing_and_applied_once(redis_url, raw_redis):
    async def go(store):
        assert await store.append_events("u", ["a", "b"], "e1") == (True, 2)
        assert await store.append_events("u", ["a", "b"], "e1") == (False, 2)  # retry: no-op
        assert await store.append_events("u", ["c"], "e2") == (True, 3)
        return await store.get_history("u")

    assert run(with_store(redis_url, go)) == ["a", "b", "c"]
    assert raw_redis.ttl(hist_key("u")) == -1  # history never expires unless configured


def test_append_and_read_returns_what_a_read_would_in_the_same_step(redis_url, raw_redis):
    async def go(store):
        assert await store.append_events_and_read("u", ["a"], "e1", ["v1", "v2"]) == (
            True, 1, [UserState(["a"], None, "read"), UserState(["a"], None, "read")])
        raw_redis.set(kv_key("u", "v2"), b"CACHE")
        applied = await store.append_events_and_read("u", ["b", "c"], "e2", ["v1", "v2"])
        repeated = await store.append_events_and_read("u", ["b", "c"], "e2", ["v2"])
        reads = await store.read_states([StateRead("u", "v1"), StateRead("u", "v2")])
        return applied, repeated, reads

    applied, repeated, reads = run(with_store(redis_url, go, kv_ttl_seconds=60))
    assert applied == (True, 3, reads)
    assert reads == [UserState(["a", "b", "c"], None, "read"),
                     UserState(["a", "b", "c"], b"CACHE", "read")]
    assert repeated == (False, 3, [reads[1]])  # not applied again, still read
    assert 0 < raw_redis.ttl(kv_key("u", "v2")) <= 60  # reading a cache refreshes its TTL


def test_sync_history_extends_a_prefix_and_replaces_otherwise(redis_url):
    async def go(store):
        await store.append_events("u", ["a", "b"], "e1")
        (s1,) = await store.read_states([StateRead("u", "v", ["a", "b", "c"])])
        (s2,) = await store.read_states([StateRead("u", "v", ["a", "b", "c"])])
        (s3,) = await store.read_states([StateRead("u", "v", ["x"])])
        return s1.history_action, s2.history_action, s3.history_action, await store.get_history("u")

    assert run(with_store(redis_url, go)) == ("extended", "unchanged", "replaced", ["x"])


def test_histories_read_back_exactly_whatever_the_item_ids_hold(redis_url):
    # Histories come back from Lua as one JSON string: every id must survive it unchanged.
    odd = ["1", "01", "1.0", "-0", "true", "null", "[]", "{}", 'a"b', "a\\b", "a/b", "a\x00b",
           "tab\tnl\n", "é", "中文", "🙂", "\x7f", " "]

    async def go(store):
        assert await store.read_states([StateRead("u", None)]) == [UserState([], None, "read")]
        (empty,) = await store.read_states([StateRead("u", "v")])
        await store.append_events("u", odd, "e1")
        states = await store.read_states([StateRead("u", "v"), StateRead("u", None)])
        return empty.history, [s.history for s in states], await store.get_history("u")

    empty, states, stored = run(with_store(redis_url, go))
    assert empty == [] and states == [odd, odd] and stored == odd


def test_kv_writes_are_compare_and_set(redis_url, raw_redis):
    hist = ["a", "b", "c"]
    head2 = Envelope.for_history("fp32", hist, 2).pack()
    head3 = Envelope.for_history("fp32", hist, 3).pack()

    async def go(store):
        first = KVWrite("u", "v", b"", head2, b"ROWS")
        assert await store.write_caches([first, first]) == [True, False]  # 2nd saw a stale head
        append = KVWrite("u", "v", head2, head3, b"+", append=True, expected_strlen=HEADER_LEN + 4)
        wrong_len = KVWrite("u", "v", head2, head3, b"+", append=True, expected_strlen=99)
        assert await store.write_caches([wrong_len]) == [False]
        assert await store.write_caches([append, append]) == [True, False]

    run(with_store(redis_url, go, kv_ttl_seconds=60))
    value = raw_redis.get(kv_key("u", "v"))
    assert value == head3 + b"ROWS+"
    assert 0 < raw_redis.ttl(kv_key("u", "v")) <= 60


def test_long_histories_are_trimmed_and_histories_chunk_past_lua_limits(redis_url):
    async def go(store):
        await store.append_events("u", [str(i) for i in range(2500)], "big")
        (state,) = await store.read_states([StateRead("u", "v", [str(i) for i in range(9000)])])
        await store.append_events("u", ["x"] * 2000, "more")  # 11000 > max_stored: keep half
        return len(state.history), len(await store.get_history("u"))

    assert run(with_store(redis_url, go, max_stored_history=10_000)) == (9000, 5000)


def test_envelope_matches_only_its_own_history_prefix():
    env = Envelope.for_history("fp16", ["a", "b", "c"], 2)
    assert Envelope.unpack(env.pack()) == env
    assert env.matches(["a", "b"]) and env.matches(["a", "b", "z"])
    assert not env.matches(["a"]) and not env.matches(["a", "x", "c"])
    assert Envelope.unpack(b"garbage" * 10) is None


def test_store_down_raises_unavailable_then_recovers_by_itself(redis_server, redis_url):
    async def go(store):
        await store.append_events("u", ["a"], "e1")
        redis_server.stop(kill=True)
        with pytest.raises(StoreUnavailable) as err:
            await store.get_history("u")
        assert err.value.retry_after >= 1
        with pytest.raises(StoreUnavailable):  # breaker open: fails fast, no connect attempt
            await store.ping()
        redis_server.start()
        for _ in range(50):  # breaker window is at most 2 s
            try:
                return await store.ping()
            except StoreUnavailable:
                await asyncio.sleep(0.1)

    assert run(with_store(redis_url, go)) is True


def test_pooled_connections_reconnect_after_a_restart(redis_server, redis_url):
    # redis-py drops a dead pooled connection and reconnects on the next command (one retry).
    async def go(store):
        assert await store.ping()
        redis_server.stop()
        redis_server.start()
        return await store.get_history("nobody")

    assert run(with_store(redis_url, go)) == []
