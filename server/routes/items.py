"""GET /items: search a model's catalogue by title (case-insensitive), or look items up by id."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from ..deps import services
from ..schemas import ItemsResponse
from ..services import Services

router = APIRouter(tags=["items"])  # API key: server.app adds it when one is set


@router.get("/items", response_model=ItemsResponse,
            responses={404: {"description": "unknown model"},
                       422: {"description": "bad limit/offset/q, or unknown ids (listed)"}})
async def items(
    svc: Annotated[Services, Depends(services)],
    q: Annotated[str | None, Query(max_length=200, description=(
        "case-insensitive substring of the title; empty or absent: every item"))] = None,
    ids: Annotated[str | None, Query(max_length=8192, description=(
        "comma-separated item ids (at most 100): these items, in this order, instead of a "
        "search; not together with q"))] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="items per page")] = 20,
    offset: Annotated[int, Query(ge=0, description="matches to skip")] = 0,
    model: Annotated[str | None, Query(min_length=1, max_length=128, description=(
        "a name from GET /models; default PLR_DEFAULT_MODEL"))] = None,
) -> dict:
    """Matches in popularity rank order (1 = most interacted-with in training)."""
    return svc.items(model, q, ids, limit, offset)
