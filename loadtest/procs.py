"""Child processes of a load test: servers under uvicorn, locust runs, all optionally CPU-pinned.

Contract: start_* return a Popen whose output goes to a log file; wait_ready polls a URL until
200 or raises TimeoutError with the log tail; stop() terminates then kills only that process.
Pinning uses sched_setaffinity in the child, so everything it forks (embedded Redis) inherits it.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_thread_env(extra: dict | None = None) -> dict:
    """Environment for a child that must not spread over cores (BLAS/OpenMP pools of 1)."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def _pin(cpus):
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, set(cpus))


def spawn(cmd: list[str], log_path: Path, env: dict, cpus=None) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_pin(cpus)
    )


def uvicorn_cmd(app: str, port: int, factory: bool = False) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    return cmd + (["--factory"] if factory else [])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def wait_ready(url: str, proc: subprocess.Popen, log_path: Path, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}\n{_tail(log_path)}")
        try:
            if http_get(url, timeout=2.0)[0] == 200:
                return
        except OSError:  # not listening yet
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready after {timeout_s}s\n{_tail(log_path)}")


def wait_or_stop(proc: subprocess.Popen, timeout_s: float) -> None:
    """Wait for `proc` up to `timeout_s`; stop it if it is still running when the wait ends,
    by timeout or by any exception (the runner's SIGTERM exit included), so a stopped run never
    leaves a load generator firing on the benchmark's CPU (it did on 2026-12-02)."""
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        pass
    finally:
        stop(proc)


def stop(proc: subprocess.Popen | None, grace_s: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def locust_cmd(host: str, csv_prefix: Path, run_time_s: float, lt_args: dict) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(REPO / "loadtest" / "locustfile.py"),
        "--headless",
        "-u",
        "1",
        "-r",
        "1",
        "-t",
        f"{int(run_time_s)}s",
        "--host",
        host,
        "--csv",
        str(csv_prefix),
        "--only-summary",
        "--exit-code-on-error",
        "0",
        "--loglevel",
        "WARNING",
    ]
    for key, value in lt_args.items():
        cmd += [f"--lt-{key.replace('_', '-')}", str(value)]
    return cmd
