"""HTTP request/response bodies (contract v1, docs/api.md). Static limits live here; the limits
set per deployment (max_history, max_k) are checked by the services and answered the same way.

Requests are strict (no "10" for 10, no unknown fields) so a typo is a 422, not a silent default.
Item ids may be sent as strings or integers and are always returned as strings.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints, model_validator

USER_ID_PATTERN = r"^[A-Za-z0-9._:@-]{1,128}$"
UserId = Annotated[str, StringConstraints(pattern=USER_ID_PATTERN)]
ItemId = Annotated[str, StringConstraints(min_length=1, max_length=256)] | StrictInt
CacheOutcome = Literal["precomputed", "hit", "extended", "rebuilt", "miss", "bypass"]


def item_strs(item_ids: list[str | int] | None) -> list[str] | None:
    """Item ids as the vocabulary and the store hold them: strings."""
    return None if item_ids is None else [str(i) for i in item_ids]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class RecommendRequest(_Strict):
    user_id: UserId | None = Field(None, description="1-128 chars of [A-Za-z0-9._:@-]")
    history: list[ItemId] | None = Field(
        None, min_length=1, description="item ids, oldest first; authoritative when given"
    )
    k: int = Field(10, ge=1, le=1000)
    model: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    exclude_seen: bool = True
    use_cache: bool = True
    explain: bool = False

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"user_id": "u42", "k": 10},
                {"user_id": "u42", "history": ["1", "50", "172"], "k": 5, "explain": True},
                {"history": [1, 50, 172], "k": 10, "model": "sasrec"},
            ]
        }
    )

    @model_validator(mode="after")
    def _user_or_history(self) -> "RecommendRequest":
        if self.user_id is None and self.history is None:
            raise ValueError("at least one of user_id or history is required")
        return self


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    title: str | None = None


class ExplainedItem(BaseModel):
    item_id: str
    title: str | None = None


class StreamExplanation(BaseModel):
    stream: int
    gate_weight: float | None = Field(description="MoRS gate weight of this stream (sums to 1)")
    items: list[ExplainedItem] = Field(description="top-k of this stream scored alone (h0 + z_m)")


class StepExplanation(BaseModel):
    step: int
    items: list[ExplainedItem]


class Explanation(BaseModel):
    """PLR: `streams`; ReaRec: `steps` (step 0 = the encoder's own state); SASRec: none."""

    streams: list[StreamExplanation] | None = None
    steps: list[StepExplanation] | None = None


class RecommendResponse(BaseModel):
    user_id: str | None
    model: str
    model_version: str
    items: list[RecommendedItem]
    history_length: int
    cache: CacheOutcome
    fallback: Literal["popularity"] | None = Field(
        None, description="set when there was no history to condition on"
    )
    explain: Explanation | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "user_id": "u42", "model": "plr", "model_version": "3f9a1c0e5b7d2a48",
                    "items": [{"item_id": "50", "score": 7.31, "title": "Star Wars (1977)"}],
                    "history_length": 3, "cache": "extended", "fallback": None, "explain": None,
                }
            ]
        }
    )


class EventsRequest(_Strict):
    user_id: UserId
    item_ids: list[ItemId] = Field(min_length=1, max_length=1000, description="oldest first")
    event_id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = Field(
        None, description="idempotency key: a repeated id is not applied twice"
    )

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"user_id": "u42", "item_ids": ["7"], "event_id": "e-1"}]}
    )


class EventsResponse(BaseModel):
    user_id: str
    history_length: int
    applied: bool = Field(description="false when event_id was seen before (nothing appended)")
    cache: CacheOutcome = Field(description="outcome for the default model")
    caches: dict[str, CacheOutcome] = Field(description="outcome per loaded model")


class UserResponse(BaseModel):
    user_id: str
    history: list[str]
    history_length: int


class DeleteUserResponse(BaseModel):
    user_id: str
    deleted: bool


class EngineInfo(BaseModel):
    mode: Literal["compiled", "eager", "building"] = Field(
        description="compiled: ahead-of-time compiled graphs serve small batches; eager: plain "
                    "PyTorch (graphs off, missing or not loadable: see detail); building: being "
                    "compiled in the background, eager until then")
    detail: str


class ModelInfo(BaseModel):
    name: str
    version: str
    kind: str
    default: bool
    n_items: int
    config: dict
    metrics: dict
    engine: EngineInfo | None = None


class ModelsResponse(BaseModel):
    default: str
    models: list[ModelInfo]


class HealthResponse(BaseModel):
    status: str
    checks: dict[str, bool] = {}


class CatalogItemInfo(BaseModel):
    item_id: str
    title: str | None = Field(description="null when the dataset has no title for the item")
    popularity_rank: int = Field(description="1 = the item with the most training interactions")


class ItemsResponse(BaseModel):
    model: str
    total: int = Field(description="items matching q (or ids given); `items` is one page of them")
    limit: int
    offset: int
    items: list[CatalogItemInfo]

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"model": "plr", "total": 3, "limit": 20, "offset": 0, "items": [
                    {"item_id": "50", "title": "Star Wars (1977)", "popularity_rank": 1},
                    {"item_id": "172", "title": "Empire Strikes Back, The (1980)",
                     "popularity_rank": 10}]}
            ]
        }
    )
