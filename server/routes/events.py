"""POST /events: append interactions to a user's history (all or nothing, idempotent by event_id)."""

import time

from fastapi import APIRouter, Depends, Request, Response

from ..deps import require_api_key, services
from ..schemas import EventsRequest, EventsResponse
from ..services import Services
from .recommend import encode

router = APIRouter(tags=["events"], dependencies=[Depends(require_api_key)])


@router.post("/events", response_model=EventsResponse,
             responses={422: {"description": "bad input or unknown item ids (nothing written)"},
                        503: {"description": "store down, overloaded or shutting down "
                                             "(Retry-After)"}})
async def append_events(body: EventsRequest, request: Request,
                        svc: Services = Depends(services)) -> Response:
    handler = time.perf_counter()
    return encode(svc, "events", request, await svc.append_events(body, request.is_disconnected), handler)
