"""How long one full cycle collection stalls a warm server, with and without PLR_GC_FREEZE.

    python -m loadtest.gc_pause

Starts the app in-process on the default models and the embedded Redis (no compiled graphs),
serves a few requests, then times `gc.collect(2)` over the heap torch, the models and FastAPI
leave, before and after `gc.freeze()` (what `PLR_GC_FREEZE=true` does once the server is warm).
Prints one line per measurement with the date, host and load average.
"""

from __future__ import annotations

import gc
import os
import platform
import time
from datetime import datetime, timezone


def _collect_ms(repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        gc.collect(2)
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main() -> None:
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.settings import Settings

    app = create_app(Settings(compile="off", gc_freeze=False))
    with TestClient(app) as client:
        for _ in range(20):
            client.post("/recommend", json={"history": [1, 2, 3], "k": 10})
        tracked = len(gc.get_objects())
        before = _collect_ms()
        gc.freeze()
        after = _collect_ms()
        gc.unfreeze()
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    print(f"tracked objects: {tracked}")
    print(f"full collection, best of 3: {before:.1f} ms; after gc.freeze(): {after:.2f} ms")


if __name__ == "__main__":
    main()
