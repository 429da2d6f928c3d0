"""`python -m server`: serve the app with uvicorn, configured by `Settings` (PLR_* env vars).

With PLR_WORKERS > 1 and no REDIS_URL, the embedded redis-server is started here, once, and
every worker is pointed at it: per-user state must be shared by all processes.
"""

from __future__ import annotations

import logging
import os

import uvicorn

from .app import create_app
from .embedded_redis import EmbeddedRedis
from .settings import Settings


def main() -> None:
    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
    main()
