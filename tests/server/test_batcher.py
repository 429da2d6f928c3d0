"""MicroBatcher: concurrent submits share one process() call; errors reach every waiter; the
queue is bounded, late and abandoned works are shed, shutdown answers 503."""

from __future__ import annotations

import asyncio

import pytest

from server.batcher import DISCONNECT_CHECK_S, ComputeWorker, MicroBatcher
from server.errors import Overloaded, ShuttingDown


def test_concurrent_requests_are_grouped_and_answered_in_order():
    calls = []

    async def process(items):
        calls.append(list(items))
        return [i * 10 for i in items]

    async def go():
        b = MicroBatcher(process, max_size=4, max_wait_s=0.05)
        b.start()
        out = await asyncio.gather(*(b.submit(i) for i in range(10)))
        await b.stop()
        return out

    assert asyncio.run(go()) == [i * 10 for i in range(10)]
    assert [len(c) for c in calls] == [4, 4, 2]  # max_size caps a batch; the rest waits max_wait


@pytest.mark.parametrize("in_flight", [1, 2])
def test_continuous_batching_dispatches_at_once_and_groups_arrivals_while_busy(in_flight):
    calls, release = [], None

    async def process(items):
        calls.append(list(items))
        if len(calls) <= in_flight:
            await release.wait()  # hold every slot busy while more requests arrive
        return list(items)

    async def settle():
        for _ in range(5):
            await asyncio.sleep(0)

    async def go():
        nonlocal release
        release = asyncio.Event()
        b = MicroBatcher(process, max_size=4, max_wait_s=0.0, max_in_flight=in_flight)
        b.start()
        busy = []
        for i in range(in_flight):
            busy.append(asyncio.ensure_future(b.submit(i)))
            await settle()
            assert calls == [[j] for j in range(i + 1)]  # a free slot: left at once, alone
        rest = [asyncio.ensure_future(b.submit(i)) for i in range(in_flight, in_flight + 6)]
        await settle()
        assert len(calls) == in_flight  # every slot busy: the newcomers wait, together
        release.set()
        out = await asyncio.gather(*busy, *rest)
        await b.stop()
        return out

    assert asyncio.run(go()) == list(range(in_flight + 6))
    # the six that waited left as full batches once a slot freed (max_size 4 caps the first)
    waited = calls[in_flight:]
    assert [len(c) for c in waited] == [4, 2]
    assert sum(waited, []) == list(range(in_flight, in_flight + 6))


def test_batch_errors_propagate_to_each_waiter_and_per_item_errors_to_one():
    async def process(items):
        if 0 in items:
            raise RuntimeError("boom")
        return [ValueError(f"bad {i}") if i == 2 else i for i in items]

    async def go():
        b = MicroBatcher(process, max_size=8, max_wait_s=0.01)
        b.start()
        first = await asyncio.gather(b.submit(0), b.submit(1), return_exceptions=True)
        second = await asyncio.gather(b.submit(2), b.submit(3), return_exceptions=True)
        await b.stop()
        return first, second

    first, second = asyncio.run(go())
    assert all(isinstance(e, RuntimeError) for e in first)
    assert isinstance(second[0], ValueError) and second[1] == 3


def test_an_inline_worker_runs_on_the_event_loop_thread():
    import threading

    worker = ComputeWorker("t", inline=True)

    async def go():
        return await worker.run(lambda: threading.current_thread() is threading.main_thread())

    assert asyncio.run(go()) is True
    worker.close()


def test_compute_worker_runs_off_the_event_loop_one_at_a_time():
    import threading

    worker = ComputeWorker("t")
    active, peak = [0], [0]
    lock = threading.Lock()

    def job():
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        threading.Event().wait(0.01)
        with lock:
            active[0] -= 1
        return threading.current_thread().name

    async def go():
        return await asyncio.gather(*(worker.run(job) for _ in range(5)))

    names = asyncio.run(go())
    worker.close()
    assert peak[0] == 1 and all(n.startswith("compute-t") for n in names)


def test_stop_answers_queued_waiters_shutting_down_and_refuses_new_ones():
    release = None

    async def process(items):
        await release.wait()
        return list(items)

    async def go():
        nonlocal release
        release = asyncio.Event()
        b = MicroBatcher(process, max_size=1)
        b.start()
        running = asyncio.ensure_future(b.submit(1))  # in flight when stop() is called
        await asyncio.sleep(0.01)
        queued = asyncio.ensure_future(b.submit(2))
        await asyncio.sleep(0.01)
        stopping = asyncio.ensure_future(b.stop())
        await asyncio.sleep(0.01)
        release.set()
        await stopping
        with pytest.raises(ShuttingDown):
            await queued
        with pytest.raises(ShuttingDown):
            await b.submit(3)
        return await running  # a batch in flight still finishes

    assert asyncio.run(go()) == 1


def test_a_full_queue_refuses_at_once_and_late_or_abandoned_works_are_shed():
    release, shed, processed = None, [], []

    async def process(items):
        processed.extend(items)
        await release.wait()
        return list(items)

    async def gone():
        return True

    async def go():
        nonlocal release
        release = asyncio.Event()
        b = MicroBatcher(process, max_size=8, max_queue=3, deadline_s=0.05, on_shed=shed.append)
        b.start()
        busy = asyncio.ensure_future(b.submit("busy"))
        await asyncio.sleep(0.01)
        late = asyncio.ensure_future(b.submit("late"))
        await asyncio.sleep(0.08)  # waits past its deadline while the slot is busy
        left = asyncio.ensure_future(b.submit("left", disconnected=gone))
        fine = asyncio.ensure_future(b.submit("fine"))
        await asyncio.sleep(DISCONNECT_CHECK_S + 0.01)
        with pytest.raises(Overloaded):
            await b.submit("one too many")  # queue holds late, left, fine
        release.set()
        results = await asyncio.gather(busy, late, left, fine, return_exceptions=True)
        await b.stop()
        return results

    busy, late, left, fine = asyncio.run(go())
    assert busy == "busy" and fine == "fine"
    assert isinstance(late, Overloaded) and isinstance(left, asyncio.CancelledError)
    assert processed == ["busy", "fine"]  # shed works cost no compute
    assert sorted(shed) == ["deadline", "disconnected", "queue_full"]


def test_a_failing_work_does_not_fail_the_rest_of_its_batch(client, monkeypatch):
    from server_helpers import ITEM_IDS

    from server.compute import RankSpec, Work

    state = client.app.state.plr
    rt = state.runtimes["plr"]
    real = rt.engine.advance

    def flaky(steps):  # the engine rejects any batch containing a 3-item history
        if any(len(s.new_items) == 3 for s in steps):
            raise ValueError("engine says no")
        return real(steps)

    monkeypatch.setattr(rt.engine, "advance", flaky)
    works = [Work(rt, RankSpec(5), history=ITEM_IDS[:n]) for n in (2, 3, 4, 5)]
    pipeline = state.batcher._process
    results = client.portal.call(pipeline, works)  # one batch, deterministically
    assert [type(r).__name__ for r in results] == ["WorkResult", "ValueError", "WorkResult",
                                                  "WorkResult"]
    assert all(len(r.ranked[0]) == 5 for r in results if not isinstance(r, Exception))
    assert 'plr_errors_total{kind="batch_split"} 1.0' in client.get("/metrics").text


def test_submit_many_leaves_in_one_batch_with_each_result_in_its_place():
    calls = []

    async def process(items):
        calls.append(list(items))
        return [ValueError("bad") if i == 2 else i * 10 for i in items]

    async def go():
        b = MicroBatcher(process, max_size=8, max_queue=3)
        b.start()
        out = await b.submit_many([1, 2, 3])
        with pytest.raises(Overloaded):
            await b.submit_many([4, 5, 6, 7])  # more than the queue holds: refused whole
        await b.stop()
        return out

    out = asyncio.run(go())
    assert calls == [[1, 2, 3]]
    assert out[0] == 10 and isinstance(out[1], ValueError) and out[2] == 30
