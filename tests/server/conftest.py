"""Fixtures for server tests: tiny synthetic checkpoints (random init, d=16, 50 items) and a real
embedded redis-server (never a mock). Apps are built per test with their own Settings."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import redis

with warnings.catch_warnings():  # starlette nags about httpx vs httpx2; not ours to fix
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from server.app import create_app
from server.embedded_redis import EmbeddedRedis
from server.settings import Settings
from server_helpers import save_tiny


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    save_tiny(root / "plr", "plr", seed=0)
    save_tiny(root / "sasrec", "sasrec", seed=1)
    return root


@pytest.fixture(scope="session")
def redis_server():
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server):
    redis_server.start()  # a test may have stopped it
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def raw_redis(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def make_client(models_dir, redis_url):
    """make_client(**settings) -> a started TestClient (closed at teardown)."""
    stack = contextlib.ExitStack()

    def make(raise_server_exceptions: bool = True, **overrides) -> TestClient:
        # default batching; no compiled graphs (a build takes a minute: tests/inference does it)
        # compute inline on the event loop, as a one-core CPU server runs (tests that need the
        # compute thread ask for it)
        values = dict(models_dir=models_dir, redis_url=redis_url, compile="off", compute="inline")
        values.update(overrides)
        app = create_app(Settings(**values))
        return stack.enter_context(TestClient(app, raise_server_exceptions=raise_server_exceptions))

    with stack:
        yield make


@pytest.fixture
def client(make_client):
    return make_client()
