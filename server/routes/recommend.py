"""POST /recommend (contract v1, docs/api.md)."""

from fastapi import APIRouter, Depends

from ..deps import require_api_key, services
from ..schemas import RecommendRequest, RecommendResponse, item_strs
from ..services import RecommendQuery, Services

router = APIRouter(tags=["recommend"], dependencies=[Depends(require_api_key)])


@router.post("/recommend", response_model=RecommendResponse,
             responses={404: {"description": "unknown model"}, 422: {"description": "bad input"},
                        503: {"description": "store down and the request needs stored state"}})
async def recommend(body: RecommendRequest, svc: Services = Depends(services)) -> dict:
    query = RecommendQuery(
        user_id=body.user_id, history=item_strs(body.history), k=body.k, model=body.model,
        exclude_seen=body.exclude_seen, use_cache=body.use_cache, explain=body.explain,
    )
    return await svc.recommend(query)
