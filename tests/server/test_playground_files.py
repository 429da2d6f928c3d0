"""The playground's files: served at / and /static with a policy that allows this server only,
free of third-party URLs, and shipped inside the wheel (an installed server has its page)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "server" / "static"
PAGE_FILES = ["index.html", "playground.js", "playground.css"]


def test_the_page_and_its_assets_are_served_with_a_same_origin_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert 'src="static/playground.js"' in page.text and 'href="static/playground.css"' in page.text
    script = client.get("/static/playground.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert client.get("/static/playground.css").headers["content-type"].startswith("text/css")
    assert client.get("/static/missing.js").status_code == 404
    assert "/" not in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize("name", PAGE_FILES)
def test_the_page_fetches_nothing_from_elsewhere(name):
    text = (STATIC / name).read_text()
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), \
        f"{name} names another host: the page must work offline"
    assert "innerHTML" not in text and "eval(" not in text  # server data is text, never code


def test_the_wheel_carries_the_page(tmp_path):
    source = tmp_path / "src"  # a copy: building in the checkout would leave build/ behind
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("model", "server", "loadtest"):
        shutil.copytree(ROOT / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    # No build isolation: offline, with the setuptools of the dev extras.
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         str(source), "-w", str(tmp_path / "dist")],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"server/static/{name}" for name in PAGE_FILES} <= names


def test_ci_installs_the_browser_and_makes_its_absence_a_failure():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "apt-get install -y -qq $packages" in ci  # the browser when missing (and jemalloc)
    assert 'have_browser || packages=" chromium chromium-driver"' in ci
    assert 'have_jemalloc || packages="$packages libjemalloc2"' in ci
    assert re.search(r"^export PLR_REQUIRE_BROWSER=1$", ci, re.M)
    assert ci.index("PLR_REQUIRE_BROWSER=1") < ci.index("make test")
