"""Reads first (server/reads_first.py): event compute waits for the stored-user reads in flight,
bounded, never for reads that start later; a read's span never covers a wait for compute."""

from __future__ import annotations

import asyncio
import time

from server.reads_first import ReadsFirst
from server.schemas import EventsRequest, RecommendRequest
from server_helpers import ITEM_IDS, settle


def _run(coro):
    return asyncio.run(coro)


def test_settle_returns_without_suspending_when_no_read_is_in_flight():
    coro = ReadsFirst(0.5).settle()
    try:
        coro.send(None)
    except StopIteration as done:  # finished on its first step: the direct path stays direct
        assert done.value == 0.0
    else:
        raise AssertionError("settle() suspended with no read in flight")


def test_settle_waits_for_the_reads_in_flight_but_not_for_later_ones():
    async def main():
        reads, log = ReadsFirst(5.0), []
        release_first, release_late = asyncio.Event(), asyncio.Event()

        async def read(name, release):
            async with reads.read():
                log.append(f"{name}+")
                await release.wait()
            log.append(f"{name}-")

        first = asyncio.create_task(read("first", release_first))
        await asyncio.sleep(0)
        settling = asyncio.create_task(reads.settle())
        await asyncio.sleep(0)
        late = asyncio.create_task(read("late", release_late))  # starts while settle waits
        await asyncio.sleep(0.01)
        assert not settling.done() and reads.in_flight == 2
        release_first.set()
        waited = await asyncio.wait_for(settling, 1.0)  # the late read is still open
        log.append("settled")
        release_late.set()
        await asyncio.gather(first, late)
        return log, waited, reads.in_flight

    log, waited, in_flight = _run(main())
    assert log.index("first-") < log.index("settled") < log.index("late-")
    assert waited >= 0.009 and in_flight == 0


def test_settle_is_bounded_and_off_means_off():
    async def main():
        bounded, off = ReadsFirst(0.02), ReadsFirst(0)
        never = asyncio.Event()

        async def stuck(reads):
            async with reads.read():
                await never.wait()

        tasks = [asyncio.create_task(stuck(bounded)), asyncio.create_task(stuck(off))]
        await asyncio.sleep(0)
        started = time.perf_counter()
        waited = await bounded.settle()
        elapsed = time.perf_counter() - started
        off_in_flight = off.in_flight
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return waited, elapsed, off_in_flight, bounded.in_flight

    waited, elapsed, off_in_flight, left = _run(main())
    assert 0.015 <= waited <= 0.5 and elapsed <= 0.5
    assert off_in_flight == 0  # a disabled ReadsFirst tracks nothing
    assert left == 0  # a cancelled read leaves the set


def _order_of(client, read_user: str, event_user: str) -> list[str]:
    """Run a precomputed /recommend of `read_user` and an event of `event_user` at the same time
    on the app's loop; the log says when the read was answered and when each compute ran."""
    services = client.app.state.plr.services
    worker = services.batcher._process.worker
    log: list[str] = []
    run, rank = worker.run, services._rank_stored

    async def recording_run(fn, works):
        log.append("compute:" + ",".join(sorted({w.route for w in works})))
        return await run(fn, works)

    def recording_rank(*args):
        log.append("read answered")
        return rank(*args)

    worker.run, services._rank_stored = recording_run, recording_rank

    async def both():
        read = services.recommend(RecommendRequest(user_id=read_user, k=5))
        event = services.append_events(EventsRequest(user_id=event_user, item_ids=[ITEM_IDS[20]]))
        return await asyncio.gather(read, event)

    try:
        answer, outcome = client.portal.call(both)
    finally:
        worker.run, services._rank_stored = run, rank
    assert answer["cache"] == "precomputed" and outcome["cache"] == "extended"
    return log


def _two_stored_users(client) -> None:
    for user in ("reader", "writer"):
        client.post("/events", json={"user_id": user, "item_ids": ITEM_IDS[:6]})
        assert client.post("/recommend", json={"user_id": user, "k": 5}).status_code == 200
    settle(client)


def test_an_event_batch_computes_after_the_read_in_flight_is_answered(make_client):
    """On the real app and Redis: the event of another user is ready to compute (its cache is
    this process's near copy) while the read waits for Redis; reads first, it computes after the
    read was answered. With reads_first_ms=0 it computes first (the test can fail)."""
    first = make_client()
    _two_stored_users(first)
    assert _order_of(first, "reader", "writer") == ["read answered", "compute:events"]

    off = make_client(reads_first_ms=0)
    _two_stored_users(off)
    assert _order_of(off, "reader", "writer") == ["compute:events", "read answered"]


def test_a_read_that_needs_compute_has_closed_its_span_before_submitting(make_client):
    """A /recommend that must compute (no stored state yet) never holds the read span while it
    waits for the batcher: else an event batch ahead of it would wait for it, and it for them."""
    client = make_client()
    services = client.app.state.plr.services
    pipeline = services.batcher._process
    seen = []

    async def watching(works):
        seen.append(({w.route for w in works}, services.reads.in_flight))
        return await pipeline(works)

    services.batcher._process = watching
    client.post("/events", json={"user_id": "u", "item_ids": ITEM_IDS[:6]})
    answer = client.post("/recommend", json={"user_id": "u", "k": 5}).json()
    assert answer["cache"] == "miss"
    assert seen == [({"recommend"}, 0)]
