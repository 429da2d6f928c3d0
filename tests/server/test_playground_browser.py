"""The playground page (GET /) in headless Chromium against the real server: uvicorn, the
committed MovieLens checkpoints (artifacts/models: PLR and SASRec, real titles), the embedded
Redis. Skipped without Chromium, failed instead under PLR_REQUIRE_BROWSER=1 (CI).

With PLR_SCREENSHOT_DIR set, the first test saves playground.png there; docs/playground.png is
made that way (PLR_SCREENSHOT_DIR=docs pytest tests/server/test_playground_browser.py -k
url_renders).
"""

from __future__ import annotations

import base64
import os
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from browser_helpers import LiveServer, fresh_profile_dir, require_browser, start_chromium
from server.app import create_app
from server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "artifacts" / "models"
WAIT_S = 90  # an upper bound for a loaded CI machine, not a latency check

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chromium():
    binary, driver_path = require_browser()
    with fresh_profile_dir() as profile:
        driver = start_chromium(binary, driver_path, profile)
        try:
            yield driver
        finally:
            driver.quit()


def live(redis_server, **settings):
    redis_server.start()  # another test may have stopped it
    return LiveServer(create_app(Settings(models_dir=MODELS, redis_url=redis_server.url,
                                          compile="off", **settings)))


@pytest.fixture(scope="module")
def server(chromium, redis_server):
    with live(redis_server) as running:
        yield running.url


@pytest.fixture(scope="module")
def keyed_server(chromium, redis_server):
    with live(redis_server, api_key="s3cret") as running:
        yield running.url


# -- reading the page ------------------------------------------------------------------------------

def renders(driver) -> int:
    return int(driver.execute_script("return document.querySelector('.results').dataset.renders"))


def wait_for_render(driver, after: int) -> None:
    """Until a render newer than `after` has finished (the page bumps a counter per action)."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT_S).until(lambda d: d.execute_script(
        "const r = document.querySelector('.results');"
        "return r.getAttribute('aria-busy') === 'false'"
        "    && Number(r.dataset.renders) > arguments[0]", after))


def open_page(driver, url: str) -> None:
    driver.get(url)
    wait_for_render(driver, 0)


def column(driver, model: str) -> dict | None:
    return driver.execute_script("""
        const col = document.querySelector(`.column[data-model="${arguments[0]}"]`);
        if (!col) return null;
        const field = (name) => {
            const f = col.querySelector(`[data-field="${name}"]`);
            return f && f.textContent;
        };
        return {cache: field('cache'), server_ms: field('server-ms'),
                error: !!col.querySelector('.column-error'),
                items: [...col.querySelectorAll('li.item')].map(li => ({
                    id: li.dataset.itemId, title: li.querySelector('.title').textContent,
                    differs: li.classList.contains('differs')}))};
    """, model)


def errors(driver) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#errors .error')].map(e => e.textContent)")


def text_of(driver, element_id: str) -> str:
    return driver.execute_script("return document.getElementById(arguments[0]).textContent",
                                 element_id)


def search(driver, query: str) -> list[str]:
    """Types the query, presses Enter, waits for its answer; the titles found."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    box = driver.find_element(By.ID, "search")
    box.clear()
    box.send_keys(query, Keys.ENTER)
    # Busy from the Enter key on: an answer to an earlier search (the same query included)
    # cannot pass for this one.
    WebDriverWait(driver, WAIT_S).until(lambda d: d.execute_script(
        "return document.getElementById('search-results').getAttribute('aria-busy') === 'false'"))
    assert f' "{query}"' in text_of(driver, "search-summary")
    return driver.execute_script(
        "return [...document.querySelectorAll('#search-results .title')].map(t => t.textContent)")


def search_and_add(driver, query: str, title: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    assert title in search(driver, query)
    button = driver.find_element(By.XPATH, "//ul[@id='search-results']//button"
                                 f"[.//span[@class='title' and text()='{title}']]")
    before = renders(driver)
    button.send_keys(Keys.ENTER)  # the keyboard path: results are buttons
    wait_for_render(driver, before)


def save_screenshot(driver, directory: str) -> None:
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": 1280, "height": size["height"], "scale": 1}})
    Path(directory).mkdir(parents=True, exist_ok=True)
    (Path(directory) / "playground.png").write_bytes(base64.b64decode(shot["data"]))


def severe_console_messages(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


# -- tests -----------------------------------------------------------------------------------------

def test_url_renders_both_models_with_titles_and_the_stream_weights_sum_to_1(chromium, server):
    open_page(chromium, f"{server}/?history=50,172,181&k=10")
    plr, sasrec = column(chromium, "plr"), column(chromium, "sasrec")
    for answer in (plr, sasrec):
        assert answer["cache"] == "bypass" and answer["server_ms"].endswith(" ms")
        assert len(answer["items"]) == 10
        assert all(i["title"] and not i["title"].startswith("item ") for i in answer["items"])
        assert not {"50", "172", "181"} & {i["id"] for i in answer["items"]}  # history excluded
    # Highlighted = in this model's top 10 and not in the other's.
    plr_ids, sasrec_ids = ({i["id"] for i in a["items"]} for a in (plr, sasrec))
    assert {i["id"] for i in plr["items"] if i["differs"]} == plr_ids - sasrec_ids
    assert {i["id"] for i in sasrec["items"] if i["differs"]} == sasrec_ids - plr_ids
    weights = chromium.execute_script(
        "return [...document.querySelectorAll('.stream')].map(s => Number(s.dataset.gateWeight))")
    assert len(weights) == 2 and sum(weights) == pytest.approx(1.0, abs=1e-4)  # PLR: M = 2
    assert "Star Wars (1977)" in text_of(chromium, "history-list")
    assert errors(chromium) == [] and severe_console_messages(chromium) == []
    if os.environ.get("PLR_SCREENSHOT_DIR"):
        save_screenshot(chromium, os.environ["PLR_SCREENSHOT_DIR"])


def test_search_finds_star_wars_and_adding_it_updates_the_url_and_the_lists(chromium, server):
    open_page(chromium, f"{server}/?history=1&k=5")
    before = column(chromium, "plr")["items"]
    assert search(chromium, "star WARS") == ["Star Wars (1977)"]
    assert text_of(chromium, "search-summary").startswith('1 title matches "star WARS"')
    search_and_add(chromium, "star WARS", "Star Wars (1977)")
    assert "Star Wars (1977)" in text_of(chromium, "history-list")
    assert parse_qs(urlparse(chromium.current_url).query)["history"] == ["1,50"]
    after = column(chromium, "plr")["items"]
    assert len(after) == 5 and after != before and "50" not in {i["id"] for i in after}


def test_adding_for_a_stored_user_posts_events_and_the_cache_goes_from_miss_to_hit(chromium,
                                                                                    server):
    user = f"browser-{uuid.uuid4().hex[:8]}"
    open_page(chromium, f"{server}/?user={user}&k=5")
    assert "no stored history yet" in text_of(chromium, "history-note")
    popular = column(chromium, "plr")["items"]  # no history: the popularity fallback
    search_and_add(chromium, "star wars", "Star Wars (1977)")
    first = column(chromium, "plr")
    assert first["cache"] == "miss" and first["items"] != popular
    search_and_add(chromium, "empire", "Empire Strikes Back, The (1980)")
    assert "caches plr extended, sasrec extended" in text_of(chromium, "status")
    # A cache the events extended serves the next answer: "hit" (or "precomputed", should the
    # server answer from a stored user vector; the page shows whatever the server says).
    assert {column(chromium, m)["cache"] for m in ("plr", "sasrec")} <= {"hit", "precomputed"}
    stored = httpx.get(f"{server}/users/{user}").json()["history"]
    assert stored == ["50", "172"]
    assert "Empire Strikes Back, The (1980)" in text_of(chromium, "history-list")


def test_an_unknown_item_id_shows_an_error_not_a_blank_page(chromium, server):
    open_page(chromium, f"{server}/?history=50,999999&k=5")
    shown = errors(chromium)
    assert len(shown) == 2 and all("unknown item ids" in e and "999999" in e for e in shown)
    assert column(chromium, "plr")["error"] and column(chromium, "sasrec")["error"]


def test_with_the_api_key_on_the_page_asks_for_it_and_then_works(chromium, keyed_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    open_page(chromium, f"{keyed_server}/?history=50&k=3")
    assert any(e.startswith("401") and "API key" in e for e in errors(chromium))
    before = renders(chromium)
    chromium.find_element(By.ID, "api-key").send_keys("s3cret", Keys.ENTER)
    wait_for_render(chromium, before)
    assert errors(chromium) == []
    assert [len(column(chromium, m)["items"]) for m in ("plr", "sasrec")] == [3, 3]
    assert "s3cret" not in chromium.current_url
