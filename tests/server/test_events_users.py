"""POST /events, GET/DELETE /users/{user_id}: all-or-nothing appends, idempotency, forgetting."""

from __future__ import annotations

from server_helpers import ITEM_IDS, settle
from server.store import events_key, hist_key, kv_key, state_key, token_key


def post_events(client, **body):
    return client.post("/events", json=body)


def test_events_append_in_order_and_report_length(client):
    first = post_events(client, user_id="u1", item_ids=ITEM_IDS[:2]).json()
    second = post_events(client, user_id="u1", item_ids=[int(ITEM_IDS[2])]).json()
    assert (first["history_length"], second["history_length"]) == (2, 3)
    assert first["applied"] and second["applied"]
    assert client.get("/users/u1").json() == {
        "user_id": "u1", "history": ITEM_IDS[:3], "history_length": 3}


def test_retried_event_id_is_applied_once(client):
    for _ in range(3):
        answer = post_events(client, user_id="u1", item_ids=ITEM_IDS[:2], event_id="e-1").json()
        assert answer["history_length"] == 2
    assert answer["applied"] is False
    other = post_events(client, user_id="u1", item_ids=ITEM_IDS[:2], event_id="e-2").json()
    assert other["applied"] and other["history_length"] == 4
    # event ids are per user: the same id for another user is a different event
    assert post_events(client, user_id="u2", item_ids=ITEM_IDS[:1], event_id="e-1").json()["applied"]


def test_unknown_items_reject_the_whole_request_naming_them(client, raw_redis):
    post_events(client, user_id="u1", item_ids=ITEM_IDS[:2])
    response = post_events(client, user_id="u1", item_ids=[ITEM_IDS[3], "nope", "zzz", "nope"])
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "item_ids"] and detail["input"] == ["nope", "zzz"]
    assert "nope" in detail["msg"] and "zzz" in detail["msg"]
    assert raw_redis.lrange(hist_key("u1"), 0, -1) == [i.encode() for i in ITEM_IDS[:2]]


def test_unknown_items_in_user_history_write_nothing(client, raw_redis):
    post_events(client, user_id="u1", item_ids=ITEM_IDS[:2])
    response = client.post("/recommend", json={"user_id": "u1", "history": [ITEM_IDS[0], "x"]})
    assert response.status_code == 422 and "'x'" in response.json()["detail"][0]["msg"]
    assert client.get("/users/u1").json()["history"] == ITEM_IDS[:2]


def test_delete_forgets_history_events_caches_and_states(client, raw_redis):
    post_events(client, user_id="u1", item_ids=ITEM_IDS[:3], event_id="e")
    client.post("/recommend", json={"user_id": "u1"})
    settle(client)
    version = client.get("/models").json()["models"][0]["version"]
    assert raw_redis.exists(hist_key("u1"), token_key("u1"), events_key("u1"),
                            kv_key("u1", version), state_key("u1", version)) == 5
    assert client.delete("/users/u1").json() == {"user_id": "u1", "deleted": True}
    assert raw_redis.dbsize() == 0
    assert client.get("/users/u1").status_code == 404
    assert client.delete("/users/u1").status_code == 404
    answer = client.post("/recommend", json={"user_id": "u1"}).json()
    assert answer["fallback"] == "popularity"


def test_history_ttl_is_applied_when_configured(make_client, raw_redis):
    client = make_client(history_ttl_seconds=100, kv_ttl_seconds=50)
    post_events(client, user_id="u1", item_ids=ITEM_IDS[:2], event_id="e")
    client.post("/recommend", json={"user_id": "u1"})
    settle(client)
    version = client.get("/models").json()["models"][0]["version"]
    assert 50 < raw_redis.ttl(hist_key("u1")) <= 100
    assert 50 < raw_redis.ttl(token_key("u1")) <= 100
    assert 0 < raw_redis.ttl(state_key("u1", version)) <= 50
    assert 50 < raw_redis.ttl(events_key("u1")) <= 100
    assert 0 < raw_redis.ttl(kv_key("u1", version)) <= 50
