"""POST /events: append interactions to a user's history (all or nothing, idempotent by event_id)."""

from fastapi import APIRouter, Depends

from ..deps import require_api_key, services
from ..schemas import EventsRequest, EventsResponse, item_strs
from ..services import Services

router = APIRouter(tags=["events"], dependencies=[Depends(require_api_key)])


@router.post("/events", response_model=EventsResponse,
             responses={422: {"description": "bad input or unknown item ids (nothing written)"},
                        503: {"description": "store down"}})
async def append_events(body: EventsRequest, svc: Services = Depends(services)) -> dict:
    return await svc.append_events(body.user_id, item_strs(body.item_ids), body.event_id)
