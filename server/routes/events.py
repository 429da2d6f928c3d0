"""POST /events: append interactions to a user's history (all or nothing, idempotent by event_id)."""

import time

from fastapi import APIRouter, Request, Response

from ..schemas import EventsRequest, EventsResponse
from ..services import Services
from .recommend import encode

router = APIRouter(tags=["events"])  # API key: server.app adds it when one is set


@router.post("/events", response_model=EventsResponse,
             responses={422: {"description": "bad input or unknown item ids (nothing written)"},
                        503: {"description": "store down, overloaded or shutting down "
                                             "(Retry-After)"}})
async def append_events(body: EventsRequest, request: Request) -> Response:
    handler = time.perf_counter()
    svc: Services = request.app.state.plr.services  # no Depends: the hot path skips resolution
    return encode(svc, "events", request, await svc.append_events(body, request.is_disconnected), handler)
