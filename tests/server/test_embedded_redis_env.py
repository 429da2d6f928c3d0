"""The embedded redis-server keeps the malloc it was built for, also under a server that runs on
jemalloc (`python -m server` restarts itself with jemalloc in LD_PRELOAD, model/allocator.py)."""

from pathlib import Path

import pytest

from model.allocator import find_jemalloc
from server.embedded_redis import EmbeddedRedis

JEMALLOC = find_jemalloc({})


@pytest.mark.skipif(JEMALLOC is None, reason="no jemalloc on this machine")
def test_the_embedded_redis_does_not_inherit_the_servers_jemalloc_preload(monkeypatch):
    # redis-server rewrites its own environ (its process title), so /proc/PID/environ cannot
    # tell; what it mapped can.
    monkeypatch.setenv("LD_PRELOAD", JEMALLOC)
    monkeypatch.setenv("PLR_JEMALLOC_STARTED", "1")
    with EmbeddedRedis() as redis_server:
        maps = Path(f"/proc/{redis_server.process.pid}/maps").read_text()
    assert "libjemalloc" not in maps
