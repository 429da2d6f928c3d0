"""Probes, metrics, docs, and behaviour while Redis is down and after it comes back."""

from __future__ import annotations

import time

from server_helpers import ITEM_IDS


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
            assert int(response.headers["retry-after"]) >= 1
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200
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
