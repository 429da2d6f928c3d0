"""Every bad input is a 4xx with a message naming the field (and limit), and writes nothing: not on
an empty database, not to a user with stored state (history, event ids, caches, their TTLs), and
the event_id of a rejected /events is not recorded (its corrected retry is applied)."""

from __future__ import annotations

import pytest

from server_helpers import ITEM_IDS, settle
from server.store import events_key

GOOD = ITEM_IDS[:3]
CASES = [
    # (method, path, json body, status, text the message must contain)
    ("post", "/recommend", {}, 422, "at least one of user_id or history"),
    ("post", "/recommend", {"user_id": "u", "k": "10"}, 422, "k"),
    ("post", "/recommend", {"user_id": "u", "k": 0}, 422, "greater than or equal to 1"),
    ("post", "/recommend", {"user_id": "u", "k": 1001}, 422, "less than or equal to 1000"),
    ("post", "/recommend", {"user_id": "u", "k": 51}, 422, "limit is 50"),
    ("post", "/recommend", {"user_id": "u", "k": 2.5}, 422, "k"),
    ("post", "/recommend", {"user_id": "u", "history": []}, 422, "at least 1 item"),
    ("post", "/recommend", {"user_id": "u", "history": [1.5]}, 422, "history"),
    ("post", "/recommend", {"user_id": "u", "history": [None]}, 422, "history"),
    ("post", "/recommend", {"user_id": "u", "history": "1001"}, 422, "history"),
    ("post", "/recommend", {"user_id": "u", "history": GOOD + ["nope"]}, 422, "nope"),
    ("post", "/recommend", {"user_id": "u", "history": GOOD * 7}, 422, "limit is 20"),
    ("post", "/recommend", {"user_id": "bad id!", "history": GOOD}, 422, "user_id"),
    ("post", "/recommend", {"user_id": "u" * 129, "history": GOOD}, 422, "user_id"),
    ("post", "/recommend", {"user_id": "", "history": GOOD}, 422, "user_id"),
    ("post", "/recommend", {"user_id": 7, "history": GOOD}, 422, "user_id"),
    ("post", "/recommend", {"user_id": "u", "history": GOOD, "model": "nope"}, 404, "unknown model"),
    ("post", "/recommend", {"user_id": "u", "history": GOOD, "kk": 3}, 422, "kk"),
    ("post", "/recommend", {"user_id": "u", "history": GOOD, "use_cache": "no"}, 422, "use_cache"),
    ("post", "/recommend", [GOOD], 422, "body"),
    ("post", "/events", {"user_id": "u", "item_ids": []}, 422, "item_ids"),
    ("post", "/events", {"user_id": "u", "item_ids": [], "event_id": "e-bad"}, 422, "item_ids"),
    ("post", "/events", {"user_id": "u", "item_ids": GOOD * 334}, 422, "at most 1000"),
    ("post", "/events", {"user_id": "u", "item_ids": GOOD * 334, "event_id": "e-bad"}, 422,
     "at most 1000"),
    ("post", "/events", {"user_id": "u", "item_ids": GOOD + ["nope"]}, 422, "nope"),
    ("post", "/events", {"user_id": "u", "item_ids": GOOD + ["nope"], "event_id": "e-bad"}, 422,
     "nope"),
    ("post", "/events", {"user_id": "u", "item_ids": GOOD, "event_id": "e-bad", "x": 1}, 422,
     '"x"'),
    ("post", "/events", {"item_ids": GOOD}, 422, "user_id"),
    ("post", "/events", {"user_id": "a/b", "item_ids": GOOD}, 422, "user_id"),
    ("post", "/events", {"user_id": "u", "item_ids": GOOD, "event_id": ""}, 422, "event_id"),
    ("get", "/users/bad!id", None, 422, "user_id"),
    ("get", "/users/nobody", None, 404, "nobody"),
    ("delete", "/users/nobody", None, 404, "nobody"),
]


@pytest.fixture
def strict_client(make_client):
    return make_client(max_history=20)


def store_user(client, user_id: str = "u") -> None:
    """A user with a history, a recorded event id and a cache of each model."""
    body = {"user_id": user_id, "item_ids": ITEM_IDS[10:14], "event_id": "e-ok"}
    assert client.post("/events", json=body).status_code == 200
    for model in ("plr", "sasrec"):
        answer = client.post("/recommend", json={"user_id": user_id, "model": model})
        assert answer.status_code == 200 and answer.json()["cache"] == "miss"
    settle(client)


def snapshot(raw_redis) -> dict:
    """Every key's serialized value (DUMP) and remaining time to live in ms."""
    return {key: (raw_redis.dump(key), raw_redis.pttl(key)) for key in raw_redis.keys()}


def assert_unchanged(before: dict, after: dict) -> None:
    assert sorted(after) == sorted(before)
    for key, (value, ttl) in before.items():
        assert after[key][0] == value, f"{key} changed"
        assert after[key][1] <= ttl, f"{key}: TTL refreshed ({ttl} -> {after[key][1]} ms)"


@pytest.mark.parametrize("method,path,body,status,needle", CASES,
                         ids=[f"{c[0]} {c[1]} {str(c[2])[:40]}" for c in CASES])
def test_bad_input_is_4xx_with_a_clear_message_and_writes_nothing(
    strict_client, raw_redis, method, path, body, status, needle
):
    kwargs = {} if body is None else {"json": body}
    response = getattr(strict_client, method)(path, **kwargs)
    assert response.status_code == status, response.text
    assert needle in response.text
    assert raw_redis.dbsize() == 0
    # Again for a user with stored state: nothing read-and-refreshed, nothing written.
    store_user(strict_client)
    before = snapshot(raw_redis)
    assert len(before) == 7  # history, token, event ids, two caches, two states
    response = getattr(strict_client, method)(path, **kwargs)
    assert response.status_code == status and needle in response.text
    assert_unchanged(before, snapshot(raw_redis))
    assert raw_redis.zscore(events_key("u"), "e-bad") is None


def test_a_rejected_events_id_is_not_recorded_so_its_corrected_retry_applies(client, raw_redis):
    store_user(client)
    bad = {"user_id": "u", "item_ids": GOOD + ["nope"], "event_id": "order-1"}
    assert client.post("/events", json=bad).status_code == 422
    assert raw_redis.zscore(events_key("u"), "order-1") is None
    fixed = client.post("/events", json={**bad, "item_ids": GOOD})
    assert fixed.status_code == 200 and fixed.json()["applied"] is True
    assert fixed.json()["history_length"] == 4 + len(GOOD)


def test_malformed_json_is_422(client, raw_redis):
    response = client.post("/recommend", content=b'{"user_id": "u",',
                           headers={"content-type": "application/json"})
    assert response.status_code == 422 and "JSON" in response.text
    assert raw_redis.dbsize() == 0


def test_oversized_bodies_are_413_declared_or_streamed(make_client, raw_redis):
    client = make_client(max_body_bytes=2048)
    big = {"user_id": "u", "item_ids": [ITEM_IDS[0]] * 400}
    assert client.post("/events", json=big).status_code == 413

    def chunks():  # no Content-Length: the limit is enforced on the streamed bytes
        yield b'{"user_id": "u", "item_ids": ['
        for _ in range(400):
            yield f'"{ITEM_IDS[0]}",'.encode()
        yield f'"{ITEM_IDS[0]}"]}}'.encode()

    response = client.post("/events", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "2048" in response.text
    assert raw_redis.dbsize() == 0
    assert client.post("/events", json={"user_id": "u", "item_ids": GOOD}).status_code == 200


def test_api_key_required_when_configured_except_probes(make_client, raw_redis):
    client = make_client(api_key="s3cret")
    body = {"user_id": "u", "item_ids": GOOD}
    assert client.post("/events", json=body).status_code == 401
    wrong = client.post("/events", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    for path in ("/models", "/users/u"):
        assert client.get(path).status_code == 401
    assert client.post("/recommend", json={"history": GOOD}).status_code == 401
    assert raw_redis.dbsize() == 0
    ok = {"Authorization": "Bearer s3cret"}
    assert client.post("/events", json=body, headers=ok).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200
