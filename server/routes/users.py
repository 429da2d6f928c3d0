"""GET/DELETE /users/{user_id}: a user's stored history; forgetting a user."""

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from ..deps import services
from ..schemas import USER_ID_PATTERN, DeleteUserResponse, UserResponse
from ..services import Services

router = APIRouter(tags=["users"])  # API key: server.app adds it when one is set
UserIdPath = Annotated[str, Path(pattern=USER_ID_PATTERN, description="1-128 chars of [A-Za-z0-9._:@-]")]
_ERRORS = {404: {"description": "no stored history for this user"}, 503: {"description": "store down"}}


@router.get("/users/{user_id}", response_model=UserResponse, responses=_ERRORS)
async def get_user(user_id: UserIdPath, svc: Services = Depends(services)) -> dict:
    return await svc.get_user(user_id)


@router.delete("/users/{user_id}", response_model=DeleteUserResponse, responses=_ERRORS)
async def delete_user(user_id: UserIdPath, svc: Services = Depends(services)) -> dict:
    return await svc.delete_user(user_id)
