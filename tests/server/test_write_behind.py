"""Write-behind (server/write_behind.py): a user's writes land in order, `settled` waits for them
(until sent where the store keeps call order, until done otherwise), failures never reach waiters;
and against a real embedded Redis, a read sent once a write is settled-as-sent sees that write."""

from __future__ import annotations

import asyncio

from server.envelope import KV_MAGIC, STATE_MAGIC, Envelope
from server.store import RedisStore, StateWrite
from server.write_behind import WriteBehind


def _run(coro):
    return asyncio.run(coro)


class _Writer:
    """A synthetic write: records when it was sent and finishes when released."""

    def __init__(self, log: list, name: str, fail: bool = False, send: bool = True):
        self.log, self.name, self.fail, self.send = log, name, fail, send
        self.reply = asyncio.get_running_loop().create_future()

    async def __call__(self, on_sent):
        self.log.append(f"{self.name} sent")
        if self.send:
            on_sent()
        await self.reply
        self.log.append(f"{self.name} done")
        if self.fail:
            raise RuntimeError("write failed")


async def _settled_within(writes: WriteBehind, user: str, seconds: float = 0.05) -> bool:
    try:
        await asyncio.wait_for(writes.settled(user), seconds)
        return True
    except TimeoutError:
        return False


def test_ordered_store_settles_a_write_once_sent_and_keeps_each_users_writes_in_order():
    async def main():
        writes, log = WriteBehind(ordered=True), []
        first, second = _Writer(log, "w1"), _Writer(log, "w2")
        writes.schedule(["u"], first)
        writes.schedule(["u", "v"], second)
        await asyncio.sleep(0.01)
        # w2 waits for w1 to be sent (one connection keeps the order), not for its reply
        assert log == ["w1 sent", "w2 sent"]
        assert await _settled_within(writes, "u") and await _settled_within(writes, "v")
        assert writes.pending == 2  # replies still outstanding: drain waits for them
        first.reply.set_result(None)
        second.reply.set_result(None)
        await writes.drain()
        assert writes.pending == 0 and log[2:] == ["w1 done", "w2 done"]

    _run(main())


def test_unordered_store_settles_only_when_the_write_is_done():
    async def main():
        writes, log = WriteBehind(ordered=False), []
        first, second = _Writer(log, "w1"), _Writer(log, "w2")
        writes.schedule(["u"], first)
        writes.schedule(["u"], second)
        await asyncio.sleep(0.01)
        assert log == ["w1 sent"]  # w2 waits for w1's reply: separate connections may reorder
        assert not await _settled_within(writes, "u")
        first.reply.set_result(None)
        await asyncio.sleep(0.01)
        assert log == ["w1 sent", "w1 done", "w2 sent"]
        second.reply.set_result(None)
        assert await _settled_within(writes, "u")

    _run(main())


def test_a_write_that_fails_or_never_sends_still_settles_and_other_users_never_wait():
    async def main():
        writes, log = WriteBehind(ordered=True), []
        never = _Writer(log, "w1", fail=True, send=False)  # e.g. refused by an open breaker
        writes.schedule(["u"], never)
        later = _Writer(log, "w2")
        writes.schedule(["u"], later)
        assert await _settled_within(writes, "other")  # nothing pending for that user
        assert not await _settled_within(writes, "u")  # w1 neither sent nor over
        never.reply.set_result(None)  # it ends with an error: settled, and w2 goes on
        await asyncio.sleep(0.01)
        assert log == ["w1 sent", "w1 done", "w2 sent"]
        assert await _settled_within(writes, "u")
        later.reply.set_result(None)
        await writes.drain()

    _run(main())


def test_a_cancelled_waiter_does_not_cancel_the_write():
    async def main():
        writes, log = WriteBehind(ordered=True), []
        w = _Writer(log, "w1", send=False)
        writes.schedule(["u"], w)
        assert not await _settled_within(writes, "u", 0.01)  # wait_for cancels the waiter
        w.reply.set_result(None)
        await writes.drain()
        assert log == ["w1 sent", "w1 done"]

    _run(main())


def test_a_read_sent_once_the_write_is_sent_sees_it_on_a_real_redis(redis_url):
    """The guarantee `ordered=True` rests on: one connection, call order = execution order."""

    async def main():
        store = RedisStore(redis_url)
        writes = WriteBehind(ordered=store.sends_in_order)
        assert writes.ordered
        try:
            seen = []
            for n in range(1, 41):  # each round: write a state, settle, read it straight back
                view = await store.append_events("u", [f"i{n}"], f"e{n}", ["v"])
                head = Envelope(KV_MAGIC, view.length, view.token).pack()
                state = Envelope(STATE_MAGIC, view.length, view.token).pack() + b"S%d" % n
                w = StateWrite("u", "v", view.length, view.token, kv_mode="set", kv_head=head,
                               kv_payload=b"ROWS", state=state)
                writes.schedule(["u"], lambda on_sent, w=w: store.write_states([w], on_sent))
                await writes.settled("u")
                read = await store.read("u", ["v"])
                seen.append(read.models[0].fresh_state)
            await writes.drain()
        finally:
            await store.close()
        assert seen == [Envelope(STATE_MAGIC, n, view.token).pack() + b"S%d" % n
                        for n in range(1, 41)]

    _run(main())
