"""The two hot routes, POST /recommend and POST /events, served without FastAPI's per-request
machinery, with the same contract.

Why: for a stored user the model's work is now ~0.1-0.3 ms, and FastAPI's route dispatch around it
(router matching through nested routers, a Request object, dependency solving, the body read and
JSON parse, two more middleware layers, a Response object) cost as much again. This ASGI
middleware sits inside the metrics and body-limit middleware and answers a request itself when it
is well-formed: the body parsed with orjson and validated by the same pydantic model FastAPI
uses (python mode, so the same strict rules), the same service call, the same encoder and stage
metrics, and domain errors mapped by the same function as the app's exception handlers
(`server.errors.error_reply`).

Contract: anything else goes to FastAPI unchanged, so every error the client can see is produced
exactly as before: a body that is not valid JSON or not a valid request (FastAPI's 422 detail), a
non-JSON content type, an API key that does not match (FastAPI's 401), a server not started yet.
The body already read is replayed to FastAPI, so nothing is read twice from the client. An
unexpected exception propagates like one from a route (ServerErrorMiddleware's logged 500).
"""

from __future__ import annotations

import time

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from .deps import api_key_matches
from .errors import error_reply
from .middleware import ARRIVED
from .routes.recommend import encode_answer
from .schemas import EventsRequest, RecommendRequest

# path -> (route label, request model, the Services method that answers it)
HOT = {b"/recommend": ("recommend", RecommendRequest, "recommend"),
       b"/events": ("events", EventsRequest, "append_events")}


class HotRoutes:
    def __init__(self, app, state, routes):
        """`state`: the app's AppState (services exist once started); `routes`: the routers' routes,
        to label metrics with the same route object FastAPI would have matched."""
        self.app, self.state = app, state
        self.routes = {path.encode(): route for route in routes
                       if (path := getattr(route, "path", None)) in ("/recommend", "/events")}

    async def __call__(self, scope, receive, send):
        path = (scope.get("raw_path") or scope["path"].encode()
                if scope["type"] == "http" and scope["method"] == "POST" else None)
        hot = HOT.get(path)
        if hot is None or not self._plain_json(scope):
            return await self.app(scope, receive, send)
        chunks, disconnected = [], False
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        services = self.state.services
        request = self._parse(hot[1], body) if services is not None and not disconnected else None
        if request is None:  # FastAPI answers it, exactly as it always has
            return await self.app(scope, _replay(body, disconnected, receive), send)
        handler = time.perf_counter()
        route, _, method = hot
        scope["route"] = self.routes.get(path)
        try:
            answer = await getattr(services, method)(request,
                                                     Request(scope, receive).is_disconnected)
        except Exception as exc:  # noqa: BLE001 - mapped like the app's handlers, or re-raised
            reply = error_reply(exc, services.metrics.error)
            if reply is None:
                raise
            return await _send(send, *reply)
        content = encode_answer(services.metrics, route, answer, handler, scope.get(ARRIVED))
        await _send(send, 200, content)

    def _plain_json(self, scope) -> bool:
        """application/json, and the API key (when one is set) as `require_api_key` wants it."""
        content_type, authorization = None, b""
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"authorization":
                authorization = value
        if content_type is None or content_type.split(b";", 1)[0].strip().lower() != \
                b"application/json":
            return False
        return api_key_matches(authorization.decode("latin-1"), self.state.settings.api_key)

    @staticmethod
    def _parse(model: type[BaseModel], body: bytes):
        try:
            return model.model_validate(orjson.loads(body))
        except (orjson.JSONDecodeError, ValidationError, TypeError, ValueError):
            return None


def _replay(body: bytes, disconnected: bool, receive):
    """A receive() that hands FastAPI the body already read (or the disconnect), then the
    client's own receive (for the disconnect checks that follow)."""
    pending = [{"type": "http.disconnect"} if disconnected else
               {"type": "http.request", "body": body, "more_body": False}]

    async def replay():
        if pending:
            return pending.pop()
        return await receive()

    return replay


async def _send(send, status: int, content: bytes, headers: dict | None = None) -> None:
    raw = [(b"content-type", b"application/json"),
           (b"content-length", str(len(content)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": content})
