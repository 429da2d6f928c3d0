"""The latency floor: the v1 routes parsed and serialized with the server's own schemas, no work.

Contract: POST /recommend and POST /events validate bodies exactly as the real server does
(`server.schemas`, strict) and answer a fixed small body through the same response models;
DELETE /users/{id}, /healthz and /readyz answer at once. Nothing is stored, no model is loaded.
Run: uvicorn loadtest.empty_app:app --port 8001
"""

from fastapi import FastAPI

from server.schemas import (
    DeleteUserResponse,
    EventsRequest,
    EventsResponse,
    HealthResponse,
    RecommendRequest,
    RecommendResponse,
)

FIXED_ITEMS = [{"item_id": str(i), "score": 0.0, "title": None} for i in range(1, 11)]

app = FastAPI(title="empty floor")


@app.post("/recommend", response_model=RecommendResponse)
async def recommend(body: RecommendRequest) -> dict:
    return {
        "user_id": body.user_id,
        "model": body.model or "empty",
        "model_version": "0",
        "items": FIXED_ITEMS[: body.k],
        "history_length": len(body.history or ()),
        "cache": "bypass",
    }


@app.post("/events", response_model=EventsResponse)
async def post_events(body: EventsRequest) -> dict:
    return {
        "user_id": body.user_id,
        "history_length": len(body.item_ids),
        "applied": True,
        "cache": "bypass",
        "caches": {},
    }


@app.delete("/users/{user_id}", response_model=DeleteUserResponse)
async def forget_user(user_id: str) -> dict:
    return {"user_id": user_id, "deleted": True}


@app.get("/healthz", response_model=HealthResponse)
@app.get("/readyz", response_model=HealthResponse)
async def ready() -> dict:
    return {"status": "ok"}
