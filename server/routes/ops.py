"""GET /models (auth), and the unauthenticated probes: /healthz, /readyz, /metrics."""

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..deps import app_state, services
from ..lifecycle import AppState
from ..schemas import HealthResponse, ModelsResponse
from ..services import Services

models_router = APIRouter(tags=["models"])  # API key: server.app adds it when one is set
probes_router = APIRouter(tags=["operations"])


@models_router.get("/models", response_model=ModelsResponse)
async def models(svc: Services = Depends(services)) -> dict:
    return svc.models()


@probes_router.get("/healthz", response_model=HealthResponse)
async def healthz() -> dict:
    return {"status": "ok"}


@probes_router.get("/readyz", response_model=HealthResponse,
                   responses={503: {"model": HealthResponse, "description": "not ready"}})
async def readyz(state: AppState = Depends(app_state)):
    checks = await state.ready()
    ok = all(checks.values())
    return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks},
                        status_code=200 if ok else 503)


@probes_router.get("/metrics", response_class=Response)
async def metrics(state: AppState = Depends(app_state)) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
