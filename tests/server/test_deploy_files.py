"""Deployment files stay true to the code: every PLR_* / REDIS_URL that docker-compose.yml or the
Dockerfile sets is a real Settings field with a valid value; the image runs as non-root with a
health check; Redis never evicts histories."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def service_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    # ${VAR:-default} -> default: what the variable is when the caller sets nothing.
    return {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v)) for k, v in env.items()}


def setting_name(var: str) -> str:
    return "redis_url" if var == "REDIS_URL" else var.removeprefix("PLR_").lower()


def server_envs() -> list[tuple[str, dict[str, str]]]:
    return [(name, service_env(s)) for name, s in compose()["services"].items()
            if any(k.startswith("PLR_") or k == "REDIS_URL" for k in service_env(s))]


def test_compose_has_the_expected_services():
    services = compose()["services"]
    assert {"redis", "server", "locust", "redis-cluster-init", "server-cluster"} <= set(services)
    assert services["server"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "healthcheck" in services["redis"] and "healthcheck" in services["server"]
    assert services["server-cluster"]["environment"]["PLR_REDIS_CLUSTER"] == "true"


@pytest.mark.parametrize("name,env", server_envs(), ids=[n for n, _ in server_envs()])
def test_every_variable_compose_sets_is_a_valid_setting(name, env, monkeypatch):
    for var, value in env.items():
        if var.startswith("PLR_") or var == "REDIS_URL":
            assert setting_name(var) in Settings.model_fields, f"{name}: {var} is not a setting"
            monkeypatch.setenv(var, value)
    settings = Settings()  # raises if a value does not parse
    assert settings.redis_url == (env.get("REDIS_URL") or None)


def test_redis_never_evicts_histories():
    for name, service in compose()["services"].items():
        command = service.get("command") or []
        if "redis-server" in command:
            policy = command[command.index("--maxmemory-policy") + 1]
            assert policy == "volatile-lru", f"{name} may evict keys without a TTL (histories)"


def test_dockerfile_runs_non_root_with_a_healthcheck_and_real_settings(monkeypatch):
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    user = re.search(r"^USER (\S+)", text, re.M)
    assert user and user.group(1) not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*", text, re.M) and "/healthz" in text
    assert "torch==2.13.0" in text and "download.pytorch.org/whl/cpu" in text
    for var, value in re.findall(r"(PLR_[A-Z_]+)=(\S+)", text):
        assert setting_name(var) in Settings.model_fields, var
        monkeypatch.setenv(var, value)
    Settings()
