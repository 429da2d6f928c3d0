"""A user's stateful requests take turns (server/user_turns.py): in order, one at a time per
user, other users unaffected; so concurrent events of one user each extend a current cache."""

from __future__ import annotations

import asyncio

import pytest

from server.schemas import EventsRequest, RecommendRequest
from server.store import state_key
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


def _held_event(client, before_read=None):
    """Run one event of user u (its compute held until the stored /recommend of u, started
    meanwhile, has answered or 2 s have passed) on the app's loop; `before_read` runs while the
    event is held. -> (read answer, event answer, log)."""
    services = client.app.state.plr.services
    worker = services.batcher._process.worker
    run, log = worker.run, []

    async def together():
        release = asyncio.Event()

        async def held_run(fn, works):
            if any(w.route == "events" for w in works):
                log.append("event computing")
                await release.wait()
                log.append("event released")
            return await run(fn, works)

        worker.run = held_run
        event = asyncio.create_task(
            services.append_events(EventsRequest(user_id="u", item_ids=[ITEM_IDS[20]])))
        while not log:
            await asyncio.sleep(0.001)
        if before_read is not None:
            before_read()
        read = asyncio.create_task(services.recommend(RecommendRequest(user_id="u", k=5)))
        done, _ = await asyncio.wait([read], timeout=2.0)
        log.append("read answered" if done else "read waiting")
        release.set()
        answer = await read
        return answer, await event

    try:
        read, event = client.portal.call(together)
    finally:
        worker.run = run
    return read, event, log


def _stored_user(client) -> None:
    client.post("/events", json={"user_id": "u", "item_ids": ITEM_IDS[:6]})
    assert client.post("/recommend", json={"user_id": "u", "k": 5}).status_code == 200
    settle(client)


def test_a_stored_read_answers_from_the_current_state_while_the_users_event_computes(
        make_client):
    """A stored /recommend of a user whose event is in flight needs no turn: the state that covers
    the stored history answers it (as of that history); without this it waits for the event's
    whole compute (the test can fail: the read is then still waiting)."""
    client = make_client()
    _stored_user(client)
    read, event, log = _held_event(client)
    assert log == ["event computing", "read answered", "event released"]
    assert read["cache"] == "precomputed" and read["history_length"] == 6
    assert event["history_length"] == 7
    after = client.post("/recommend", json={"user_id": "u", "k": 5}).json()
    assert after["cache"] == "precomputed" and after["history_length"] == 7  # read your writes
    text = client.get("/metrics").text
    assert 'stage="state_read"' in text


def test_without_a_current_state_a_stored_read_still_waits_for_the_users_turn(make_client,
                                                                               raw_redis):
    """No current state (here: deleted under the held event) -> the read takes its turn, after
    the event, and answers for the history with the event in it."""
    client = make_client()
    _stored_user(client)
    version = client.get("/models").json()["models"][0]["version"]
    read, event, log = _held_event(client, lambda: raw_redis.delete(state_key("u", version)))
    assert log == ["event computing", "read waiting", "event released"]
    assert read["history_length"] == 7 and event["history_length"] == 7
