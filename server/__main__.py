"""`python -m server`: serve the app with uvicorn, configured by `Settings` (PLR_* env vars).

With PLR_WORKERS > 1 and no REDIS_URL, the embedded redis-server is started here, once, and
every worker is pointed at it: per-user state must be shared by all processes.
The command restarts itself on jemalloc when the machine has it (model/allocator.py; the engine's
work per event costs ~0.8-0.9x on it, docs/serving-malloc.md); PLR_JEMALLOC="" keeps the system
malloc. The embedded redis-server keeps its own.
"""

from __future__ import annotations

import logging
import os
import sys

import uvicorn

from model.allocator import exec_on_jemalloc, jemalloc_active

from .app import create_app
from .embedded_redis import EmbeddedRedis
from .settings import Settings


def main() -> None:
    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger(__name__).info(
        "malloc: %s", "jemalloc" if jemalloc_active() else "the system's (no jemalloc found)")
    if settings.workers == 1:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                    log_level=settings.log_level, access_log=settings.access_log)
        return
    embedded = None
    if settings.redis_url is None:
        embedded = EmbeddedRedis(settings.embedded_redis_dir,
                                 persist=settings.embedded_redis_dir is not None).start()
        os.environ["REDIS_URL"] = embedded.url  # inherited by the worker processes
    try:
        uvicorn.run("server.app:create_app", factory=True, host=settings.host,
                    port=settings.port, workers=settings.workers, log_level=settings.log_level,
                    access_log=settings.access_log)
    finally:
        if embedded:
            embedded.close()


if __name__ == "__main__":
    exec_on_jemalloc("server", sys.argv[1:], conf=None)  # jemalloc's own defaults for a server
    main()
