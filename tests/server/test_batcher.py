"""MicroBatcher: concurrent submits share one process() call; errors reach every waiter."""

from __future__ import annotations

import asyncio

import pytest

from server.batcher import ComputeWorker, MicroBatcher


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


def test_stop_fails_pending_waiters_instead_of_hanging():
    async def process(items):
        await asyncio.sleep(10)

    async def go():
        b = MicroBatcher(process, max_size=8, max_wait_s=5.0)
        b.start()
        waiter = asyncio.ensure_future(b.submit(1))
        await asyncio.sleep(0.01)
        await b.stop()
        with pytest.raises(RuntimeError):
            await waiter

    asyncio.run(go())


def test_a_failing_job_does_not_fail_the_rest_of_its_batch(make_client, monkeypatch):
    import concurrent.futures

    from server_helpers import ITEM_IDS

    client = make_client(batch_max_wait_ms=50, raise_server_exceptions=False)
    engine = client.app.state.plr.runtimes["plr"].engine
    real = engine.recommend

    def flaky(requests):  # the engine rejects any batch containing a 3-item history
        if any(len(r.history) == 3 for r in requests):
            raise ValueError("engine says no")
        return real(requests)

    monkeypatch.setattr(engine, "recommend", flaky)
    bodies = [{"history": ITEM_IDS[:n]} for n in (2, 3, 4, 5)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda b: client.post("/recommend", json=b).status_code, bodies))
    assert codes == [200, 500, 200, 200]
    assert 'plr_errors_total{kind="internal"} 1.0' in client.get("/metrics").text
