"""POST /recommend (contract v1, docs/api.md)."""

import time

import orjson
from fastapi import APIRouter, Request, Response

from ..middleware import ARRIVED
from ..schemas import RecommendRequest, RecommendResponse
from ..services import Services

router = APIRouter(tags=["recommend"])  # API key: server.app adds it when one is set


@router.post("/recommend", response_model=RecommendResponse,
             responses={404: {"description": "unknown model"}, 422: {"description": "bad input"},
                        503: {"description": "store down and the request needs stored state, "
                                             "overloaded, or shutting down (Retry-After)"}})
async def recommend(body: RecommendRequest, request: Request) -> Response:
    handler = time.perf_counter()
    svc: Services = request.app.state.plr.services  # no Depends: the hot path skips resolution
    return encode(svc, "recommend", request, await svc.recommend(body, request.is_disconnected), handler)


def encode(svc: Services, route: str, request: Request, answer: dict, handler: float) -> Response:
    content = encode_answer(svc.metrics, route, answer, handler, request.scope.get(ARRIVED))
    return Response(content, media_type="application/json")


def encode_answer(metrics, route: str, answer: dict, handler: float,
                  arrived: float | None) -> bytes:
    """The answer as JSON bytes (orjson; the dict is built to the response model's shape, which
    the tests check, so it is not validated a second time), with the parse stage (arrival to
    `handler`, when the route started) and the encode stage."""
    started = time.perf_counter()
    content = orjson.dumps(answer)
    done = time.perf_counter()
    model = answer.get("model", "all")
    if arrived is not None:
        metrics.stage(route, model, "parse", handler - arrived)
    metrics.stage(route, model, "encode", done - started)
    return content
