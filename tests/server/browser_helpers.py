"""For the playground's browser tests: the real app under uvicorn in a thread, and headless
Chromium through selenium with the system chromedriver (never selenium's driver download).

A machine without Chromium skips those tests with the reason, unless PLR_REQUIRE_BROWSER=1
(.ci/run sets it): there a missing browser is a failure, so CI can never skip them silently.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time

import pytest
import uvicorn

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1000")


def require_browser() -> tuple[str, str]:
    """(chromium path, chromedriver path), or skip (fail under PLR_REQUIRE_BROWSER=1)."""
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[dev]')")
    chromium = next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    driver = shutil.which("chromedriver")
    if chromium is None:
        missing.append("Chromium (apt-get install chromium)")
    if driver is None:
        missing.append("chromedriver (apt-get install chromium-driver)")
    if missing:
        reason = "browser tests need " + ", ".join(missing)
        if os.environ.get("PLR_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason}; PLR_REQUIRE_BROWSER=1 makes that a failure")
        pytest.skip(reason)
    return chromium, driver


def start_chromium(chromium: str, driver: str, profile_dir: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


class LiveServer:
    """`create_app(...)` served by uvicorn on a free 127.0.0.1 port, in a daemon thread."""

    def __init__(self, app):
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.url = "http://127.0.0.1:%d" % self.socket.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name="live-server", daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 180  # model loading on a loaded 2-core machine
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the live server did not start (see the log above)")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        self.socket.close()


def fresh_profile_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="plr-chromium-")
