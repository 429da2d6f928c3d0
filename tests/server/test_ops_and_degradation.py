"""Probes, metrics, docs, and behaviour while Redis is down and after it comes back."""

from __future__ import annotations

import time

from server_helpers import ITEM_IDS, settle


def test_probes_docs_and_openapi_examples(client):
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"models": True, "store": True}
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/recommend", "/events", "/users/{user_id}", "/models"} <= set(spec["paths"])
    assert spec["components"]["schemas"]["RecommendRequest"]["examples"]


def test_metrics_expose_stages_batches_outcomes_and_errors(client):
    client.post("/events", json={"user_id": "u1", "item_ids": ITEM_IDS[:3]})
    client.post("/recommend", json={"user_id": "u1"})
    client.post("/recommend", json={"user_id": "u1"})
    client.post("/recommend", json={"user_id": "bad id"})
    text = client.get("/metrics").text
    for route, model, stage in [("recommend", "plr", "parse"), ("recommend", "plr", "store_read"),
                                ("recommend", "plr", "compute"), ("recommend", "plr", "rank"),
                                ("recommend", "plr", "encode"), ("events", "all", "parse"),
                                ("compute", "all", "queue_wait"), ("write", "all", "store_write")]:
        assert (f'plr_stage_seconds_count{{model="{model}",route="{route}",stage="{stage}"}}'
                in text), (route, stage)
    assert 'plr_request_seconds_count{method="POST",route="/recommend",status="200"} 2.0' in text
    assert 'plr_cache_outcomes_total{model="plr",op="recommend",outcome="precomputed"} 1.0' in text
    assert 'plr_cache_outcomes_total{model="plr",op="recommend",outcome="miss"} 1.0' in text
    assert 'plr_cache_outcomes_total{model="plr",op="events",outcome="miss"} 1.0' in text
    assert "plr_batch_size_count 1.0" in text
    assert 'plr_errors_total{kind="invalid_request"} 1.0' in text


def wait_ready(client, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return True
        time.sleep(0.1)
    return False


def test_redis_down_degrades_without_500_then_recovers(client, redis_server):
    client.post("/events", json={"user_id": "u1", "item_ids": ITEM_IDS[:3]})
    expected = client.post("/recommend", json={"history": ITEM_IDS[:4]}).json()["items"]
    redis_server.stop(kill=True)
    try:
        # A request that carries its history is still answered, from scratch.
        with_history = client.post("/recommend", json={"user_id": "u1", "history": ITEM_IDS[:4]})
        assert with_history.status_code == 200
        assert with_history.json()["cache"] == "bypass" and with_history.json()["items"] == expected
        # Requests that need stored state: 503 + Retry-After, never a 500.
        for method, path, body in [
            ("post", "/recommend", {"user_id": "u1"}),
            ("post", "/events", {"user_id": "u1", "item_ids": ITEM_IDS[:1]}),
            ("get", "/users/u1", None),
            ("delete", "/users/u1", None),
        ]:
            kwargs = {} if body is None else {"json": body}
            response = getattr(client, method)(path, **kwargs)
            assert response.status_code == 503, (path, response.text)
            assert response.headers["retry-after"].isdigit()
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200
        # The breaker opened: later calls failed fast without trying to connect.
        assert 'plr_errors_total{kind="store_breaker_open"}' in client.get("/metrics").text
        assert 'plr_errors_total{kind="store_unavailable"}' in client.get("/metrics").text
    finally:
        redis_server.start()
    assert wait_ready(client)
    # Recovered by itself (the embedded test Redis keeps no data across a kill).
    assert client.post("/events", json={"user_id": "u1", "item_ids": ITEM_IDS[:2]}).status_code == 200
    again = client.post("/recommend", json={"user_id": "u1"})
    assert again.status_code == 200 and again.json()["cache"] == "miss"


def test_server_starts_with_redis_down_and_becomes_ready(make_client, redis_server):
    redis_server.stop(kill=True)
    try:
        client = make_client()
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503
        assert client.post("/recommend", json={"history": ITEM_IDS[:3]}).status_code == 200
    finally:
        redis_server.start()
    assert wait_ready(client)


def test_embedded_redis_is_started_when_no_url_is_set(make_client, tmp_path):
    client = make_client(redis_url=None, embedded_redis_dir=tmp_path / "redis")
    client.post("/events", json={"user_id": "u1", "item_ids": ITEM_IDS[:2]})
    assert client.get("/users/u1").json()["history_length"] == 2
    assert (tmp_path / "redis" / "redis.sock").exists()


def engines(client) -> dict:
    return {m["name"]: m["engine"] for m in client.get("/models").json()["models"]}


def test_models_stay_eager_and_say_why_when_compiled_graphs_are_missing(make_client, tmp_path):
    client = make_client(compile="load", compiled_dir=tmp_path / "nothing-built")
    plr = engines(client)["plr"]
    assert plr["mode"] == "eager" and "no compiled graphs" in plr["detail"]
    assert 'plr_compiled_graphs{model="plr"} 0.0' in client.get("/metrics").text
    assert client.post("/recommend", json={"history": ITEM_IDS[:3]}).status_code == 200
    assert engines(make_client())["sasrec"] == {"mode": "eager",
                                                "detail": "compiled graphs off (PLR_COMPILE=off)"}


def test_a_failed_background_build_leaves_engines_eager_and_counts_it(make_client, tmp_path,
                                                                     monkeypatch):
    import server.graphs

    monkeypatch.setattr(server.graphs, "BUILD_MODULE", "json.tool")  # exits 2 on these args
    client = make_client(compile="background", compiled_dir=tmp_path / "out")
    assert engines(client)["plr"]["mode"] in ("building", "eager")
    deadline = time.monotonic() + 30
    while engines(client)["plr"]["mode"] == "building" and time.monotonic() < deadline:
        time.sleep(0.1)
    plr = engines(client)["plr"]
    assert plr["mode"] == "eager" and "background build failed (exit 2" in plr["detail"]
    assert 'plr_errors_total{kind="compile_failed"} 1.0' in client.get("/metrics").text
    assert client.post("/recommend", json={"history": ITEM_IDS[:3]}).status_code == 200


def test_an_error_reply_fails_only_that_users_requests_with_503(client, raw_redis):
    from server.store import hist_key

    client.post("/events", json={"user_id": "ok", "item_ids": ITEM_IDS[:3]})
    raw_redis.set(hist_key("broken"), "not a list")  # WRONGTYPE inside every script
    for method, path, body in [("post", "/recommend", {"user_id": "broken"}),
                               ("post", "/events", {"user_id": "broken", "item_ids": ITEM_IDS[:1]})]:
        response = getattr(client, method)(path, json=body)
        assert response.status_code == 503 and response.headers["retry-after"] == "1", path
    assert client.post("/recommend", json={"user_id": "ok"}).status_code == 200  # no breaker
    assert 'plr_errors_total{kind="store_error_reply"} 2.0' in client.get("/metrics").text


def test_out_of_memory_refuses_writes_with_503_and_reads_still_answer(client, raw_redis):
    client.post("/events", json={"user_id": "u1", "item_ids": ITEM_IDS[:3]})
    client.post("/recommend", json={"user_id": "u1"})
    settle(client)
    policy = raw_redis.config_get("maxmemory-policy")["maxmemory-policy"]
    raw_redis.config_set("maxmemory-policy", "noeviction")  # full, and nothing may be evicted
    raw_redis.config_set("maxmemory", 1)
    try:
        refused = client.post("/events", json={"user_id": "u1", "item_ids": ITEM_IDS[3:4]})
        assert refused.status_code == 503 and "oom" in refused.text
        read = client.post("/recommend", json={"user_id": "u1"})
        assert read.status_code == 200 and read.json()["cache"] == "precomputed"
    finally:
        raw_redis.config_set("maxmemory", 0)
        raw_redis.config_set("maxmemory-policy", policy)
    assert client.post("/events", json={"user_id": "u1", "item_ids": ITEM_IDS[3:4]}).json()[
        "history_length"] == 4


def test_a_failed_cache_write_or_extension_never_fails_the_answer(client, raw_redis, monkeypatch):
    from server.errors import StoreUnavailable

    store = client.app.state.plr.store
    real_write = store.write_states

    async def failing_write(writes):  # the store refuses writes (as out of memory would)
        raise StoreUnavailable(1.0, "oom")

    client.post("/events", json={"user_id": "u1", "item_ids": ITEM_IDS[:3]})
    monkeypatch.setattr(store, "write_states", failing_write)
    answer = client.post("/recommend", json={"user_id": "u1"})
    assert answer.status_code == 200 and answer.json()["cache"] == "miss"
    settle(client)
    assert 'plr_errors_total{kind="store_write_failed"} 1.0' in client.get("/metrics").text
    monkeypatch.setattr(store, "write_states", real_write)
    client.post("/recommend", json={"user_id": "u1"})  # a cache again
    settle(client)
    engine = client.app.state.plr.runtimes["plr"].engine

    def broken(steps):
        raise RuntimeError("the engine failed")

    monkeypatch.setattr(engine, "advance", broken)
    applied = client.post("/events", json={"user_id": "u1", "item_ids": ITEM_IDS[3:4]})
    assert applied.status_code == 200
    assert applied.json()["applied"] is True and applied.json()["caches"]["plr"] == "bypass"
    assert client.get("/users/u1").json()["history_length"] == 4  # the event is stored
    assert 'plr_errors_total{kind="events_extend_failed"} 1.0' in client.get("/metrics").text


def test_overload_is_shed_with_503_and_retry_after(make_client):
    import concurrent.futures
    import threading

    client = make_client(compute="thread", max_queue=2, queue_timeout_ms=50)
    state = client.app.state.plr
    held, gate = threading.Event(), threading.Event()

    def hold():
        held.set()
        gate.wait()

    blocker = client.portal.start_task_soon(state.worker.run, hold)
    assert held.wait(10)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client.post, "/recommend", json={"history": ITEM_IDS[i:i + 3]})
                   for i in range(8)]
        time.sleep(0.3)  # the queue is full; what is queued is past its 50 ms deadline by now
        gate.set()
        answers = [f.result() for f in futures]
    blocker.result()
    codes = sorted(a.status_code for a in answers)
    assert set(codes) <= {200, 503} and codes.count(503) >= 6, codes
    assert all(a.headers["retry-after"] == "1" for a in answers if a.status_code == 503)
    text = client.get("/metrics").text
    assert 'plr_errors_total{kind="shed_queue_full"}' in text
    assert client.post("/recommend", json={"history": ITEM_IDS[:3]}).status_code == 200


def test_too_many_requests_in_flight_are_refused_at_once(make_client):
    client = make_client(max_concurrency=1)
    middleware = client.app.middleware_stack
    while not hasattr(middleware, "in_flight"):
        middleware = middleware.app
    middleware.in_flight = 1  # as if another request were being served
    try:
        refused = client.post("/recommend", json={"history": ITEM_IDS[:3]})
    finally:
        middleware.in_flight = 0
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert client.post("/recommend", json={"history": ITEM_IDS[:3]}).status_code == 200


def test_shutdown_answers_503_not_500(client):
    state = client.app.state.plr
    client.portal.call(state.batcher.stop)
    response = client.post("/recommend", json={"history": ITEM_IDS[:3]})
    assert response.status_code == 503 and "shutting down" in response.text
    assert response.headers["retry-after"] == "1"
