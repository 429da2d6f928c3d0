"""A user's stateful requests take turns (server/user_turns.py): in order, one at a time per
user, other users unaffected; so concurrent events of one user each extend a current cache."""

from __future__ import annotations

import asyncio

import pytest

from server.schemas import EventsRequest
from server.user_turns import UserTurns
from server_helpers import ITEM_IDS, settle


def _run(coro):
    return asyncio.run(coro)


def test_turns_of_one_user_run_one_at_a_time_in_arrival_order():
    async def main():
        turns, log = UserTurns(), []

        async def work(user, name, pause):
            async with turns.turn(user):
                log.append(f"{name}+")
                await asyncio.sleep(pause)
                log.append(f"{name}-")

        await asyncio.gather(work("a", "a1", 0.03), work("a", "a2", 0.0), work("b", "b1", 0.01),
                             work("a", "a3", 0.0))
        return log, turns.open

    log, still_open = _run(main())
    assert [e for e in log if e.startswith("a")] == ["a1+", "a1-", "a2+", "a2-", "a3+", "a3-"]
    assert log.index("b1+") < log.index("a1-")  # another user never waits
    assert still_open == 0


def test_a_failed_or_cancelled_turn_keeps_the_order_of_the_others():
    async def main():
        turns, log = UserTurns(), []
        release = asyncio.Event()

        async def first():
            async with turns.turn("u"):
                log.append("first+")
                await release.wait()
                log.append("first-")

        async def failing():
            async with turns.turn("u"):
                log.append("failing")
                raise RuntimeError("boom")

        async def waiter(name):
            async with turns.turn("u"):
                log.append(name)

        t1 = asyncio.create_task(first())
        await asyncio.sleep(0)
        cancelled = asyncio.create_task(waiter("cancelled"))
        await asyncio.sleep(0)
        cancelled.cancel()  # gives up its place while the first turn runs
        t3 = asyncio.create_task(failing())
        t4 = asyncio.create_task(waiter("last"))
        await asyncio.sleep(0.01)
        assert log == ["first+"]  # nobody overtook the running turn
        release.set()
        results = await asyncio.gather(t1, cancelled, t3, t4, return_exceptions=True)
        return log, results, turns.open

    log, results, still_open = _run(main())
    assert log == ["first+", "first-", "failing", "last"]
    assert isinstance(results[1], asyncio.CancelledError) and isinstance(results[2], RuntimeError)
    assert still_open == 0


@pytest.mark.parametrize("n_events", [2, 4])
def test_concurrent_events_of_one_user_each_extend_a_current_cache(make_client, n_events):
    client = make_client()
    for model in ("plr", "sasrec"):
        assert client.post("/recommend", json={"user_id": "u1", "history": ITEM_IDS[:5],
                                               "model": model}).status_code == 200
    settle(client)
    services = client.app.state.plr.services

    async def together():
        bodies = [EventsRequest(user_id="u1", item_ids=[ITEM_IDS[10 + i]]) for i in range(n_events)]
        return await asyncio.gather(*(services.append_events(b) for b in bodies))

    answers = client.portal.call(together)
    settle(client)
    assert [a["history_length"] for a in answers] == list(range(6, 6 + n_events))
    assert all(a["caches"] == {"plr": "extended", "sasrec": "extended"} for a in answers)
    text = client.get("/metrics").text
    assert 'kind="write_superseded"' not in text  # each write extended the one before it
    assert 'plr_near_cache_total{result="stale"}' not in text
    for model in ("plr", "sasrec"):
        stored = client.post("/recommend", json={"user_id": "u1", "model": model}).json()
        assert stored["cache"] == "precomputed" and stored["history_length"] == 5 + n_events
