"""RedisStore against a real embedded redis-server: atomic, conditional, idempotent writes; history
tokens; the idempotency window; TTLs; error replies vs an unreachable store."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from server.envelope import KV_MAGIC, STATE_MAGIC, Envelope
from server.errors import StoreUnavailable
from server.store import (
    CircuitBreaker,
    IdempotencyPolicy,
    RedisStore,
    StateWrite,
    events_key,
    hist_key,
    kv_key,
    state_key,
    token_key,
)


def run(coro):
    return asyncio.run(coro)


async def with_store(url, fn, **kw):
    store = RedisStore(url, **kw)
    try:
        return await fn(store)
    finally:
        await store.close()


def write(view, user="u", version="v", state=b"S", kv=b"ROWS", mode="set", **kw) -> StateWrite:
    """A StateWrite for what `view` (a UserView) says the history is."""
    return StateWrite(
        user, version, view.length, view.token, kv_mode=mode,
        kv_head=Envelope(KV_MAGIC, view.length, view.token).pack(), kv_payload=kv,
        state=Envelope(STATE_MAGIC, view.length, view.token).pack() + state if state else b"",
        **kw)


def test_events_are_all_or_nothing_and_applied_once(redis_url, raw_redis):
    async def go(store):
        first = await store.append_events("u", ["a", "b"], "e1", [])
        again = await store.append_events("u", ["a", "b"], "e1", [])  # retry: a no-op
        third = await store.append_events("u", ["c"], "e2", [])
        return first, again, third, await store.get_history("u")

    first, again, third, history = run(with_store(redis_url, go))
    assert (first.applied, first.length, again.applied, again.length) == (True, 2, False, 2)
    assert (third.applied, third.length) == (True, 3) and history == ["a", "b", "c"]
    assert first.token == again.token == third.token and len(first.token) == 16
    assert raw_redis.ttl(hist_key("u")) == -1  # history never expires unless configured


def test_events_without_an_id_are_all_applied_and_their_ids_do_not_pile_up(redis_url, raw_redis):
    async def go(store):
        for _ in range(3):
            await store.append_events("u", ["a"], None, [])
        return await store.get_history("u")

    assert run(with_store(redis_url, go)) == ["a", "a", "a"]
    # The ids made for them are kept auto_keep_s only: scored that far into the window's past.
    now_ms = time.time() * 1000
    scores = [s for _, s in raw_redis.zrange(events_key("u"), 0, -1, withscores=True)]
    window, keep = IdempotencyPolicy().window_s * 1000, IdempotencyPolicy().auto_keep_s * 1000
    assert len(scores) == 3 and all(s < now_ms - window + keep + 5000 for s in scores)


def test_the_idempotency_window_evicts_ids_one_by_one_by_count_and_age(redis_url, raw_redis):
    async def go(store):
        for i in range(5):
            await store.append_events("u", [str(i)], f"e{i}", [])
        oldest_gone = await store.append_events("u", ["x"], "e0", [])  # evicted: applied again
        newest_kept = await store.append_events("u", ["x"], "e4", [])  # still in the window
        return oldest_gone.applied, newest_kept.applied

    policy = IdempotencyPolicy(window_s=3600, max_ids=3)
    assert run(with_store(redis_url, go, idempotency=policy)) == (True, False)
    assert raw_redis.zcard(events_key("u")) == 3  # never more than max_ids, never emptied

    async def by_age(store):
        await store.append_events("w", ["a"], "old", [])
        raw_redis.zadd(events_key("w"), {"old": time.time() * 1000 - 7200 * 1000})  # 2 h ago
        await store.append_events("w", ["b"], "new", [])  # evicts ids older than the window
        return (await store.append_events("w", ["a"], "old", [])).applied

    assert run(with_store(redis_url, by_age, idempotency=policy)) is True


def test_append_reads_only_what_extending_a_cache_needs(redis_url, raw_redis):
    # Events never build a cache, so a model with none to extend gets nothing back: above all
    # not the whole history (up to max_stored entries), which a read returns to build one.
    async def go(store):
        appended = await store.append_events("u", ["a", "b"], "e1", ["v1"])
        read = await store.read("u", ["v1"])
        raw_redis.set(kv_key("u", "v1"), Envelope(KV_MAGIC, 2, "f" * 16).pack() + b"ROWS")
        stale = await store.append_events("u", ["c"], "e2", ["v1"])  # another history's cache
        return appended, read, stale

    appended, read, stale = run(with_store(redis_url, go))
    for view, stale_kv in ((appended, False), (stale, True)):
        (model,) = view.models
        assert (model.items, model.kv, model.base_state, model.fresh_state, model.near,
                model.stale_kv) == (None, None, None, None, False, stale_kv)
    assert (read.length, read.models[0].items, read.models[0].kv) == (2, ["a", "b"], None)
    assert appended.token == read.token and stale.length == 3


def test_reads_return_only_the_state_when_it_is_current_else_what_computing_needs(redis_url):
    async def go(store):
        view = await store.append_events("u", ["a", "b"], "e1", ["v"])
        assert await store.write_states([write(view)]) == [(True, True)]
        fresh = await store.read("u", ["v"])
        skipped = await store.read("u", ["v"], skip_state=True)
        grown = await store.append_events("u", ["c"], "e2", ["v"])
        return fresh.models[0], skipped.models[0], grown.models[0]

    fresh, skipped, grown = run(with_store(redis_url, go))
    assert fresh.fresh_state.endswith(b"S") and fresh.items is None and fresh.kv is None
    assert skipped.fresh_state is None and skipped.items == ["a", "b"] and skipped.kv
    # state and cache cover the same prefix: only the new entries are read
    assert (grown.base, grown.items) == (2, ["c"]) and grown.base_state and grown.kv


def test_a_state_read_returns_the_state_only_while_it_covers_exactly_the_history(redis_url,
                                                                                raw_redis):
    async def go(store):
        empty = await store.read_state("u", "v")
        view = await store.append_events("u", ["a", "b"], "e1", ["v"])
        before = await store.read_state("u", "v")  # no state written yet
        await store.write_states([write(view)])
        current = await store.read_state("u", "v")
        other_version = await store.read_state("u", "w")
        await store.append_events("u", ["c"], "e2", ["v"])
        grown = await store.read_state("u", "v")  # the history moved on: stale
        return empty, before, current, other_version, grown

    empty, before, current, other_version, grown = run(with_store(redis_url, go))
    assert empty == (0, None) and before == (2, None) and other_version == (2, None)
    assert current[0] == 2 and current[1] == raw_redis.get(state_key("u", "v"))
    assert current[1].endswith(b"S") and grown == (3, None)


def test_a_state_of_a_replaced_history_is_never_current(redis_url):
    async def go(store):
        view = await store.append_events("u", ["a", "b"], "e1", ["v"])
        await store.write_states([write(view)])
        await store.sync("u", ["x", "y"], ["v"])  # same length, new token
        return await store.read_state("u", "v")

    assert run(with_store(redis_url, go)) == (2, None)


def test_sync_extends_a_prefix_and_replaces_otherwise_with_a_new_token(redis_url):
    async def go(store):
        first = await store.append_events("u", ["a", "b"], "e1", [])
        extended = await store.sync("u", ["a", "b", "c"], [])
        unchanged = await store.sync("u", ["a", "b", "c"], [])
        replaced = await store.sync("u", ["x"], [])
        retried = await store.append_events("u", ["b"], "e1", [])  # its history is gone
        return first, extended, unchanged, replaced, retried, await store.get_history("u")

    first, extended, unchanged, replaced, retried, history = run(with_store(redis_url, go))
    assert [v.action for v in (extended, unchanged, replaced)] == ["extended", "unchanged",
                                                                    "replaced"]
    assert first.token == extended.token == unchanged.token != replaced.token
    # The replacing history is authoritative: the replaced events' ids went with them, so a
    # retried event is applied to the new history rather than silently lost.
    assert retried.applied and history == ["x", "b"]


def test_histories_read_back_exactly_whatever_the_item_ids_hold(redis_url):
    # Histories come back from Lua as one JSON string: every id must survive it unchanged.
    odd = ["1", "01", "1.0", "-0", "true", "null", "[]", "{}", 'a"b', "a\\b", "a/b", "a\x00b",
           "tab\tnl\n", "é", "中文", "🙂", "\x7f", " "]

    async def go(store):
        empty = await store.read("u", ["v"])
        await store.append_events("u", odd, "e1", [])
        view = await store.read("u", ["v"])
        return empty, view.models[0].items, await store.get_history("u")

    empty, items, stored = run(with_store(redis_url, go))
    assert (empty.length, empty.token, empty.models[0].items) == (0, "", [])
    assert items == odd and stored == odd


def test_writes_are_refused_once_the_history_they_were_made_for_is_gone(redis_url, raw_redis):
    async def go(store):
        view = await store.append_events("u", ["a"], "e1", [])
        await store.delete_user("u", ["v"])
        after_delete = await store.write_states([write(view)])  # a write racing a DELETE
        view = await store.append_events("u", ["a"], "e1", [])
        await store.sync("u", ["z"], [])
        after_replace = await store.write_states([write(view)])
        view = await store.read("u", [])
        ok = await store.write_states([write(view)])
        return after_delete, after_replace, ok

    assert run(with_store(redis_url, go)) == ([(False, False)], [(False, False)], [(True, True)])
    assert raw_redis.exists(hist_key("u"), kv_key("u", "v"), state_key("u", "v")) == 3


def test_cache_writes_are_compare_and_set_and_never_go_backwards(redis_url, raw_redis):
    async def go(store):
        v1 = await store.append_events("u", ["a"], "e1", [])
        first = write(v1, kv=b"ROWS")
        assert await store.write_states([first]) == [(True, True)]
        v2 = await store.append_events("u", ["b"], "e2", [])
        stored = raw_redis.get(kv_key("u", "v"))
        append = write(v2, kv=b"+", mode="append", expected_head=stored[:32],
                       expected_strlen=len(stored))
        wrong_len = write(v2, kv=b"+", mode="append", expected_head=stored[:32],
                          expected_strlen=99)
        assert await store.write_states([wrong_len]) == [(False, True)]
        assert await store.write_states([append, append]) == [(True, True), (False, True)]
        # An older computation arriving late never replaces the newer cache and state.
        assert await store.write_states([write(v1, state=b"OLD")]) == [(False, False)]

    run(with_store(redis_url, go, kv_ttl_seconds=60))
    value = raw_redis.get(kv_key("u", "v"))
    assert value[32:] == b"ROWS+" and Envelope.unpack(value).length == 2
    assert raw_redis.get(state_key("u", "v")).endswith(b"S")
    assert 0 < raw_redis.ttl(kv_key("u", "v")) <= 60 and 0 < raw_redis.ttl(state_key("u", "v"))


def test_a_write_computed_ahead_lands_with_its_append_only_right_after_its_history(
        redis_url, raw_redis):
    """An event's cache and state computed before the append (from a local copy of the history)
    ride in the append's own call and land only when the items went right after exactly that
    history; otherwise nothing of it is stored and the view is the one without it."""
    def ahead(base, items, kv=b"+", state=b"NEW", **kw) -> StateWrite:
        # What the server computes from its copy of history `base` (a UserView) plus `items`.
        stored = raw_redis.get(kv_key("u", "v"))
        grown = type(base)(base.length + len(items), base.token)
        return write(grown, kv=kv, state=state, mode="append", expected_head=stored[:32],
                     expected_strlen=len(stored), **kw)

    async def go(store):
        v1 = await store.append_events("u", ["a"], "e1", ["v"])
        assert await store.write_states([write(v1, kv=b"ROWS")]) == [(True, True)]
        hint = [raw_redis.get(kv_key("u", "v"))[:32]]
        # Right after its history: written in the same call, nothing read back.
        v2 = await store.append_events("u", ["b"], "e2", ["v"], hints=hint,
                                       writes=[ahead(v1, ["b"])])
        assert v2.length == 2 and v2.applied and v2.models[0].written
        assert raw_redis.get(kv_key("u", "v"))[32:] == b"ROWS+"
        assert Envelope.unpack(raw_redis.get(state_key("u", "v"))).length == 2
        # A repeated event id: nothing appended, the write is dropped, the state is current.
        again = await store.append_events("u", ["b"], "e2", ["v"], writes=[ahead(v2, ["b"])])
        assert not again.applied and not again.models[0].written
        assert again.models[0].fresh_state is not None and again.length == 2
        # Another event landed first (history 3, cache still at 2): a copy of history 2 is stale.
        await store.append_events("u", ["c"], "e3", ["v"])
        late = await store.append_events("u", ["d"], "e4", ["v"], writes=[ahead(v2, ["d"])])
        assert late.length == 4 and not late.models[0].written
        assert late.models[0].kv is not None and late.models[0].items == ["c", "d"]
        # The stored cache moved on under the copy (another server wrote it): refused whole,
        # the state included, even though the history itself is right after the copy's.
        v5 = await store.append_events("u", ["e"], "e5", ["v"])
        assert await store.write_states([write(v5, kv=b"OTHER")]) == [(True, True)]
        stale = ahead(v5, ["f"])
        stale.expected_head = Envelope(KV_MAGIC, 4, v5.token).pack()
        refused = await store.append_events("u", ["f"], "e6", ["v"], writes=[stale])
        assert not refused.models[0].written and refused.length == 6
        assert raw_redis.get(kv_key("u", "v"))[32:] == b"OTHER"
        assert not raw_redis.get(state_key("u", "v")).endswith(b"NEW")
        # A replaced history (new token): a copy of the old one never lands.
        view = await store.sync("u", ["x"], ["v"])
        assert view.token != v5.token
        old = ahead(type(v5)(6, v5.token), ["y"])
        replaced = await store.append_events("u", ["y"], "e7", ["v"], writes=[old])
        assert not replaced.models[0].written and replaced.length == 2
        with pytest.raises(ValueError, match="writes for"):
            await store.append_events("u", ["z"], "e8", ["v"], writes=[])

    run(with_store(redis_url, go))


def test_one_users_models_write_in_one_call_and_each_write_gets_its_own_reply(redis_url,
                                                                              raw_redis):
    """Writes of one (user, history) share one script call (one token check for all models);
    other users and stale histories in the same batch answer for themselves, in order."""
    async def go(store):
        u = await store.append_events("u", ["a"], "e1", [])
        w = await store.append_events("w", ["a"], "e1", [])
        await store.delete_user("w", [])  # w's writes now race a DELETE: all refused
        return await store.write_states([
            write(u, version="v1", kv=b"ONE"), write(w, version="v1"),
            write(u, version="v2", kv=b"TWO", state=b""), write(w, version="v2")])

    assert run(with_store(redis_url, go)) == [(True, True), (False, False), (True, False),
                                               (False, False)]
    assert raw_redis.get(kv_key("u", "v1"))[32:] == b"ONE"
    assert raw_redis.get(kv_key("u", "v2"))[32:] == b"TWO"
    assert raw_redis.exists(state_key("u", "v1"), state_key("u", "v2")) == 1
    assert raw_redis.exists(kv_key("w", "v1"), kv_key("w", "v2")) == 0


def test_history_keys_expire_together_and_reads_never_refresh_ttls(redis_url, raw_redis):
    async def go(store):
        view = await store.append_events("u", ["a"], "e1", ["v"])
        await store.write_states([write(view)])
        raw_redis.expire(kv_key("u", "v"), 30)
        await store.read("u", ["v"])
        await store.read("u", ["v"], skip_state=True)
        await store.sync("u", ["a"], ["v"])  # unchanged: a read

    run(with_store(redis_url, go, history_ttl_seconds=100, kv_ttl_seconds=60))
    pipe = raw_redis.pipeline(transaction=True)  # one instant: equal TTLs = one expiry time
    for key in (hist_key("u"), token_key("u"), events_key("u")):
        pipe.pttl(key)
    assert len(set(pipe.execute())) == 1  # history, token and event ids expire together
    assert 0 < raw_redis.ttl(hist_key("u")) <= 100
    assert raw_redis.ttl(kv_key("u", "v")) <= 30  # the reads did not push it back to 60


def test_long_histories_are_trimmed_under_a_new_token_and_chunk_past_lua_limits(redis_url):
    async def go(store):
        first = await store.append_events("u", [str(i) for i in range(2500)], "big", [])
        synced = await store.sync("u", [str(i) for i in range(9000)], [])
        trimmed = await store.append_events("u", ["x"] * 2000, "more", [])  # 11000 > max
        return first, synced, trimmed, len(await store.get_history("u"))

    first, synced, trimmed, length = run(with_store(redis_url, go, max_stored_history=10_000))
    assert (synced.length, trimmed.length, length) == (9000, 5000, 5000)
    assert first.token == synced.token != trimmed.token  # trimmed: every cache is a rebuild


def test_an_error_reply_fails_that_call_only_and_never_opens_the_breaker(redis_url, raw_redis):
    raw_redis.set(hist_key("broken"), "not a list")  # WRONGTYPE for every script touching it

    async def go(store):
        with pytest.raises(StoreUnavailable) as err:
            await store.read("broken", ["v"])
        assert err.value.reason == "error_reply" and store.breaker.retry_after() == 0
        view = await store.append_events("u", ["a"], "e1", [])  # other users are fine
        raw_redis.config_set("maxmemory", 1)
        try:
            with pytest.raises(StoreUnavailable) as oom:
                await store.append_events("u", ["b"], "e2", [])
        finally:
            raw_redis.config_set("maxmemory", 0)
        assert oom.value.reason == "oom" and store.breaker.retry_after() == 0
        other = await store.append_events("u2", ["a"], "e1", [])
        raw_redis.rpush(kv_key("u2", "v"), "not a string")
        replies = await store.write_states([write(view), write(other, user="u2")])
        alone = await store.write_states([write(other, user="u2")])  # one call: no pipeline
        return (await store.read("u", [])).length, replies + alone

    length, replies = run(with_store(redis_url, go))
    assert length == 1
    assert replies[0] == (True, True) and isinstance(replies[1], StoreUnavailable)
    assert isinstance(replies[2], StoreUnavailable) and replies[2].reason == "error_reply"


def test_store_down_raises_unavailable_then_the_open_breaker_fails_fast(redis_server, redis_url):
    async def go(store):
        # A 1 s first window (the default 0.1 s) outlasts restarting Redis on a loaded machine:
        # with 0.1 s the window had once closed before the check below (CI, 2026-12-01).
        store.breaker = CircuitBreaker(base_s=1.0, cap_s=1.0)
        await store.append_events("u", ["a"], "e1", [])
        redis_server.stop(kill=True)
        with pytest.raises(StoreUnavailable) as err:
            await store.get_history("u")
        assert err.value.reason == "unreachable"
        redis_server.start()  # back already, but the breaker is open: no connection attempt
        with pytest.raises(StoreUnavailable) as fast:
            await store.ping()
        assert fast.value.reason == "breaker_open"
        await asyncio.sleep(store.breaker.retry_after() + 0.05)
        return await store.ping()

    assert run(with_store(redis_url, go)) is True


def test_the_breaker_window_grows_with_failures_and_retry_after_follows_it():
    breaker = CircuitBreaker(base_s=1.0, cap_s=8.0)
    waits = []
    for _ in range(5):
        breaker.failure()
        waits.append(StoreUnavailable(breaker.retry_after()).retry_after)
    assert waits == [1, 2, 4, 8, 8]
    breaker.success()
    assert breaker.retry_after() == 0


def test_pooled_connections_reconnect_after_a_restart(redis_server, redis_url):
    # redis-py drops a dead pooled connection and reconnects on the next command (one retry).
    async def go(store):
        assert await store.ping()
        redis_server.stop()
        redis_server.start()
        return await store.get_history("nobody")

    assert run(with_store(redis_url, go)) == []


def test_scripts_survive_a_redis_that_forgot_them(redis_url, raw_redis):
    async def go(store):
        view = await store.append_events("u", ["a"], "e1", [])
        other = await store.append_events("w", ["a"], "e1", [])
        raw_redis.script_flush()  # a restarted or failed-over node: EVALSHA says NOSCRIPT
        replies = await store.write_states([write(view)])  # one call
        raw_redis.script_flush()
        replies += await store.write_states([write(view), write(other, user="w")])  # pipelined
        raw_redis.script_flush()
        return replies, (await store.read("u", [])).length

    assert run(with_store(redis_url, go)) == ([(True, True)] * 3, 1)


def test_a_connection_error_is_not_mistaken_for_an_error_reply():
    store = RedisStore("redis://127.0.0.1:1", timeout_s=0.2)

    async def go():
        try:
            with pytest.raises(StoreUnavailable) as err:
                await store.read("u", [])
            return err.value.reason, store.breaker.retry_after() > 0
        finally:
            await store.close()

    assert run(go()) == ("unreachable", True)
    assert issubclass(redis.ConnectionError, redis.RedisError)
