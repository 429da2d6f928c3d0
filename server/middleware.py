"""ASGI middleware: request body size limit (413), per-route latency metrics (also sent back as
a `Server-Timing: app;dur=<ms>` header on every response), concurrency limit.

The body limit checks Content-Length up front and counts streamed (chunked) bytes as they arrive,
so an oversized body is refused before it is parsed, whatever the client claims. The metrics
middleware stamps the request's arrival (`scope[ARRIVED]`, for the routes' parse stage) and
refuses a request at once (503 + Retry-After) when `max_concurrency` are already in flight.
"""

from __future__ import annotations

import json
import time

from fastapi import HTTPException

from .metrics import Metrics

ARRIVED = "plr.arrived"  # scope key: time.perf_counter() when the request reached the app


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body exceeds {limit} bytes (PLR_MAX_BODY_BYTES)")


async def _send_json(send, status: int, detail: str, extra_headers=()) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _send_json(send, 413, BodyTooLarge(self.max_bytes).detail)
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException passes FastAPI's body parsing untouched -> 413 response.
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:
            if started:
                raise
            await _send_json(send, 413, exc.detail)


class MetricsMiddleware:
    """Observes every HTTP request's latency by method, route template and status, tells the
    client its server time in `Server-Timing` (outermost middleware: 413s included), sheds load."""

    def __init__(self, app, metrics: Metrics, max_concurrency: int = 4096):
        self.app, self.metrics, self.max_concurrency = app, metrics, max_concurrency
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = scope[ARRIVED] = time.perf_counter()
        status = 500
        if self.in_flight >= self.max_concurrency:
            self.metrics.error("shed_concurrency")
            self.metrics.request(scope["method"], "unmatched", "503", 0.0)
            return await _send_json(send, 503, "server overloaded (too many requests in flight); "
                                    "retry later", [(b"retry-after", b"1")])

        async def tracking_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # Server time to the response head, for browsers (the playground shows it): one
                # clock read and one header, about a microsecond against milliseconds of work.
                ms = (time.perf_counter() - started) * 1000
                message["headers"] = [*message.get("headers", ()),
                                      (b"server-timing", b"app;dur=%.2f" % ms)]
            await send(message)

        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)
        try:
            await self.app(scope, receive, tracking_send)
        finally:
            self.in_flight -= 1
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.request(scope["method"], path, str(status), time.perf_counter() - started)
