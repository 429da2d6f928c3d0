"""Deployment knobs: one `Settings` object read from `PLR_*` environment variables (and `REDIS_URL`).

Every field has a working local default (embedded Redis, CPU, models under artifacts/models).
Nothing here runs at import time: build `Settings()` where the process starts, pass it down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PLR_", extra="ignore")

    # Models: every subdirectory of models_dir is a checkpoint, served under the directory's name.
    models_dir: Path = Path("artifacts/models")
    default_model: str = "plr"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int | None = Field(None, ge=1, description="None = torch's default")
    # Ahead-of-time compiled engine graphs (model/inference/compiled.py), CPU only. "background":
    # use the packages in compiled_dir, and build missing ones in a low-priority subprocess while
    # serving eagerly, switching over when they are ready; "load": use them only if present;
    # "off": eager only.
    compile: Literal["off", "load", "background"] = "background"
    compiled_dir: Path = Path("artifacts/compiled")

    # Store. No URL = an embedded redis-server started by the process (local/dev/tests).
    redis_url: str | None = Field(
        None, validation_alias=AliasChoices("REDIS_URL", "PLR_REDIS_URL", "redis_url")
    )
    redis_cluster: bool = Field(False, description="REDIS_URL names one node of a Redis Cluster")
    redis_timeout_s: float = Field(1.0, gt=0)
    embedded_redis_dir: Path | None = Field(None, description="None = a fresh temp dir")
    kv_ttl_seconds: int | None = Field(7 * 24 * 3600, ge=1, description="None = no TTL")
    history_ttl_seconds: int | None = Field(None, ge=1, description="None = keep forever")
    kv_dtype: Literal["fp32", "fp16"] = "fp32"
    # Near cache: the decoded caches and states this process computed, kept (LRU, this many MiB)
    # so the next event of a user it just served reads no cache bytes from Redis. 0 = off.
    near_cache_mb: int = Field(256, ge=0)
    max_stored_history: int = Field(
        10_000, ge=2, description="past this the oldest half of a stored history is dropped"
    )
    events_extend_cache: bool = Field(
        True, description="POST /events extends cached KV now (False: next /recommend does it)"
    )
    # Idempotency window per user: an event id is remembered this long, and at most this many
    # ids are kept (the oldest evicted one by one); a retry within the window is not applied.
    idempotency_window_s: int = Field(24 * 3600, ge=1)
    idempotency_max_ids: int = Field(10_000, ge=1)

    # Limits and security.
    api_key: str | None = Field(None, description="None = no auth")
    max_body_bytes: int = Field(1 << 20, ge=1024)
    max_history: int = Field(2000, ge=1, le=100_000)
    max_k: int = Field(1000, ge=1, le=1000)

    # Micro-batching. Wait 0 = continuous batching: a batch leaves as soon as a batch slot is
    # free, and requests that arrive while every slot is busy form the next batch. A wait > 0
    # also holds a batch open until its oldest request has waited this long (or it is full).
    # In flight: batches of one model running at once; 2 overlaps one batch's store round trips
    # with another's compute, which pays off only when the store is slow to answer and compute
    # has a core of its own (on one shared core it just halves the batches: measured slower).
    batch_max_size: int = Field(64, ge=1)
    batch_max_wait_ms: float = Field(0.0, ge=0)
    batch_max_in_flight: int = Field(1, ge=1, le=8)
    # Where the engine runs: "inline" on the event loop (a CPU process on one core: no thread
    # hand-off), "thread" (one compute thread: the loop stays free while a GPU or other cores
    # compute), or "auto" (thread on CUDA or with several torch threads, else inline).
    compute: Literal["auto", "inline", "thread"] = "auto"
    # Reads first (inline compute only): a batch of event compute first waits, at most this
    # long, for the stored-user reads already in flight, so a /recommend answered from its
    # precomputed state does not wait behind event compute on the one core. 0 = off.
    reads_first_ms: float = Field(2.0, ge=0)
    # Overload control: works waiting for the compute thread beyond max_queue are refused (503 +
    # Retry-After); a work still queued after queue_timeout_ms is dropped (503). HTTP requests
    # in flight beyond max_concurrency are refused at once (503), the fast path included.
    max_queue: int = Field(1024, ge=1)
    queue_timeout_ms: float = Field(1000.0, gt=0)
    max_concurrency: int = Field(4096, ge=1)

    # HTTP.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, description="uvicorn worker processes (python -m server)")
    log_level: str = "info"
    # One log line per request costs ~20 us of a ~300 us request: off unless asked for (the
    # Prometheus request metrics count every request anyway).
    access_log: bool = False
    # Serve well-formed POST /recommend and /events without FastAPI's route dispatch (same
    # contract; anything unusual still goes through FastAPI): server/hot_routes.py.
    hot_routes: bool = True
    # Freeze the start-up heap out of the cycle collector and collect less often (lifecycle.py).
    gc_freeze: bool = True

    @field_validator("api_key", "redis_url", "torch_threads", "kv_ttl_seconds",
                     "history_ttl_seconds", mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        # `PLR_API_KEY=` (e.g. compose's ${PLR_API_KEY:-}) means "not set", not "the empty key".
        return None if isinstance(value, str) and value.strip() == "" else value
