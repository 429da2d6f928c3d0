"""The hot routes (server/hot_routes.py) serve well-formed POST /recommend and /events themselves
and hand everything else to FastAPI: the same answers and errors either way, byte for byte."""

from __future__ import annotations

from server.hot_routes import HotRoutes
from server_helpers import ITEM_IDS, settle

HISTORY = ITEM_IDS[:12]  # longer than the tiny models' window (8)

# (method, path, json body or raw bytes, content type, served by the hot route)
REQUESTS = [
    ("/recommend", {"history": HISTORY[:5], "k": 5}, None, True),
    ("/recommend", {"user_id": "u1", "history": HISTORY, "model": "sasrec"}, None, True),
    ("/recommend", {"user_id": "u1", "history": HISTORY}, None, True),
    ("/events", {"user_id": "u1", "item_ids": [ITEM_IDS[20]], "event_id": "e1"}, None, True),
    ("/events", {"user_id": "u1", "item_ids": [ITEM_IDS[20]], "event_id": "e1"}, None, True),
    ("/events", {"user_id": "u2", "item_ids": [int(ITEM_IDS[3]), ITEM_IDS[4]]}, None, True),
    ("/recommend", {"user_id": "u1", "explain": True}, None, True),
    ("/recommend", {"user_id": "u1", "model": "sasrec", "exclude_seen": False}, None, True),
    ("/recommend", {"user_id": "u1", "use_cache": False, "k": 3}, None, True),
    ("/recommend", {"user_id": "nobody"}, None, True),
    # domain errors, answered by the hot route with the app's own mapping
    ("/recommend", {"user_id": "u1", "model": "nope"}, None, True),
    ("/recommend", {"history": ["not-an-item"]}, None, True),
    ("/recommend", {"history": HISTORY, "k": 1000}, None, True),
    ("/events", {"user_id": "u1", "item_ids": ["x1", "x2"]}, None, True),
    # not valid requests: FastAPI answers them
    ("/recommend", {"user_id": "u1", "k": "10"}, None, False),
    ("/recommend", {"user_id": "u1", "typo": 1}, None, False),
    ("/recommend", {}, None, False),
    ("/recommend", [1, 2], None, False),
    ("/events", {"user_id": "bad id", "item_ids": [ITEM_IDS[0]]}, None, False),
    ("/events", b'{"user_id": "u1", "item_ids": [', "application/json", False),
    ("/events", b'{"user_id": "u1", "item_ids": ["1001"]}', "text/plain", False),
    ("/recommend", b'{"history": [NaN]}', "application/json", False),
]


def _send(client, path, body, content_type):
    if content_type is None:
        return client.post(path, json=body)
    return client.post(path, content=body, headers={"content-type": content_type})


def _count_fastapi_calls(client) -> list[str]:
    """Wrap what the hot routes pass requests on to, recording each path that reaches FastAPI."""
    client.get("/healthz")  # builds the middleware stack
    layer, seen = client.app.middleware_stack, []
    while not isinstance(layer, HotRoutes):
        layer = layer.app
    inner = layer.app

    async def recording(scope, receive, send):
        seen.append(scope["path"])
        await inner(scope, receive, send)

    layer.app = recording
    return seen


def _run(client) -> list[tuple[int, bytes, str | None]]:
    out = []
    for path, body, content_type, _ in REQUESTS:
        response = _send(client, path, body, content_type)
        settle(client)
        out.append((response.status_code, response.content, response.headers.get("retry-after")))
    return out


def test_answers_and_errors_are_the_same_with_and_without_the_hot_routes(make_client, raw_redis):
    reference = _run(make_client(hot_routes=False))
    raw_redis.flushall()
    client = make_client()
    seen = _count_fastapi_calls(client)
    answers = _run(client)
    for (path, body, _, _), got, want in zip(REQUESTS, answers, reference):
        assert got == want, (path, body)
    assert {status for status, _, _ in answers} == {200, 404, 422}
    expected = [path for path, _, _, hot in REQUESTS if not hot]
    assert seen == expected


def test_the_api_key_is_checked_before_the_hot_route_serves(make_client):
    client = make_client(api_key="s3cret")
    seen = _count_fastapi_calls(client)
    body = {"history": HISTORY[:3]}
    assert client.post("/recommend", json=body).status_code == 401
    wrong = client.post("/recommend", json=body, headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    good = client.post("/recommend", json=body, headers={"authorization": "Bearer s3cret"})
    assert good.status_code == 200 and good.json()["items"]
    assert seen == ["/recommend", "/recommend"]


def test_hot_route_requests_are_measured_like_any_other(client):
    client.post("/recommend", json={"history": HISTORY[:3]})
    response = client.post("/recommend", json={"history": HISTORY[:3], "model": "nope"})
    assert response.status_code == 404 and response.headers["server-timing"].startswith("app;dur=")
    text = client.get("/metrics").text
    assert 'plr_request_seconds_count{method="POST",route="/recommend",status="200"} 1.0' in text
    assert 'plr_request_seconds_count{method="POST",route="/recommend",status="404"} 1.0' in text
    assert 'plr_errors_total{kind="not_found"} 1.0' in text
