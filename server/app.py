"""`create_app(settings)`: the one place that wires routers, middleware and error mapping.

Domain errors map to HTTP here and nowhere else: InputError -> 422 (field + limit), UnknownModel /
UnknownUser -> 404, Unavailable (store trouble, overload, shutdown) -> 503 + Retry-After, oversized
body -> 413, missing API key -> 401, too many requests in flight -> 503 (middleware). Anything else
is a bug: logged, counted, answered 500 without internals.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from .deps import require_api_key
from .errors import ServiceError, error_reply
from .hot_routes import HotRoutes
from .lifecycle import AppState
from .middleware import BodyLimitMiddleware, MetricsMiddleware
from .routes import events, items, ops, playground, recommend, users
from .settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = """PLR sequential recommender with per-user transformer KV caches in Redis.

Send a user's history (or a user_id whose history is stored) and get the top-k next items.
See docs/api.md for the full contract, semantics and error codes."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    state = AppState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(title="PLR recommender", version="1.0", description=DESCRIPTION,
                  lifespan=lifespan)
    app.state.plr = state
    # The API key check is attached only when a key is set: a no-op dependency still costs every
    # request FastAPI's dependency resolution.
    guarded = [Depends(require_api_key)] if settings.api_key else []
    for router in (recommend.router, events.router, users.router, items.router,
                   ops.models_router):
        app.include_router(router, dependencies=guarded)
    for router in (ops.probes_router, playground.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=playground.STATIC_DIR), name="static")
    _register_errors(app, state)
    # The last added is the outermost: metrics see every response, 413s included; the size
    # limit still applies before anything reads the body; the hot routes sit inside both.
    if settings.hot_routes:
        app.add_middleware(HotRoutes, state=state,
                           routes=[*recommend.router.routes, *events.router.routes])
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics,
                       max_concurrency=settings.max_concurrency)
    return app


def _validation_detail(errors) -> list[dict]:
    # Keep location, message and type; drop the echoed input (it can be a 1 MB history).
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in errors]


def _register_errors(app: FastAPI, state: AppState) -> None:
    def count(kind: str) -> None:
        state.metrics.error(kind)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        count("invalid_request")
        return JSONResponse({"detail": _validation_detail(exc.errors())}, status_code=422)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError):
        reply = error_reply(exc, count)
        if reply is None:
            return await internal(request, exc)
        status, content, headers = reply
        return Response(content, status_code=status, headers=headers,
                        media_type="application/json")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        count("internal")
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error"}, status_code=500)
