"""Which malloc a process runs on: jemalloc when the machine has it, else the system's (glibc).

Used by the experiment queue (training) and by `python -m server` (serving).

Contract:
- `find_jemalloc()`: the path of a jemalloc shared library on this machine, or None. The
  environment variable PLR_JEMALLOC overrides the search: a path uses that library, an empty
  value means "use glibc's malloc" (and an unusable path is a ValueError, not a silent fallback).
- `with_jemalloc(env)`: a copy of `env` for a process about to be *started* (exec), with jemalloc
  preloaded (LD_PRELOAD) under `JEMALLOC_CONF`; `env` unchanged when there is no jemalloc. A
  running process cannot change its malloc: only processes it starts get it.
- `exec_on_jemalloc(module, argv)`: a command-line entry point (`python -m module`) restarts
  itself in place on jemalloc when the machine has it; `without_jemalloc(env)` takes it out of
  the environment of a child that keeps its own malloc.
- `jemalloc_active()`: whether this process runs on jemalloc (its maps hold the library).
Nothing here changes a number a run computes: the allocator decides where tensors live, never
what is in them (torch asks for 64-byte aligned blocks from either).

Why: a training step frees and reallocates the same large activations (the logits alone are
hundreds of MB), and their sizes vary from batch to batch (how many prefixes carry a target).
glibc's malloc either hands such blocks back to the kernel and faults them in again every step,
or, kept (`model.train.keep_freed_memory`), fragments: a PLR run on ml-latest-small held ~130 MB
in use between epochs but a heap of 3.9 GB after its first epoch and 4.7 GB after its sixth, its
free list 2,700 then 10,300 chunks long (mallinfo2, scratch, 2026-12-02), until the queue's
workers ran out of memory. jemalloc's size classes reuse freed extents of nearby sizes: in
docs/training-memory.md (`python -m model.experiments.malloc_bench`) the same run stays flat at
~2.9 GB on jemalloc, where glibc's peak creeps up epoch after epoch, with 0.87x the CPU an epoch
and the same weights bit for bit.

Serving: the compiled engine graphs allocate their intermediate buffers on every call, and one
event's engine work (`Engine.advance`) costs ~0.85x on jemalloc (docs/serving-malloc.md,
`python -m model.experiments.malloc_bench --serving`). A server keeps jemalloc's own settings.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from pathlib import Path

# oversize_threshold 0: large blocks come from the ordinary arenas, not the dedicated one that
# returns them to the kernel at once; decay -1: freed pages are kept for the next step, never
# purged (the process exits when its job ends: a queue job runs in a child process of its own).
JEMALLOC_CONF = "oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1"
STARTED = "PLR_JEMALLOC_STARTED"  # set in a process exec_on_jemalloc started
SEARCH_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",  # Debian / Ubuntu: apt-get install libjemalloc2
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",  # Fedora / RHEL
    "/usr/lib/libjemalloc.so.2",  # Arch, Alpine
    "/usr/local/lib/libjemalloc.so.2",  # built from source
)


def find_jemalloc(environ: dict | None = None) -> str | None:
    """The jemalloc library to preload, or None (see the module docstring for PLR_JEMALLOC)."""
    environ = os.environ if environ is None else environ
    chosen = environ.get("PLR_JEMALLOC")
    if chosen is not None:
        if chosen == "":
            return None
        if not Path(chosen).is_file():
            raise ValueError(f"PLR_JEMALLOC={chosen!r} is not a file (unset it to search, or "
                             "set it empty to use glibc's malloc)")
        return chosen
    for path in SEARCH_PATHS:
        if Path(path).is_file():
            return path
    found = ctypes.util.find_library("jemalloc")  # a soname such as libjemalloc.so.2
    return found or None


def with_jemalloc(env: dict, conf: str | None = JEMALLOC_CONF) -> dict:
    """`env` for a process to start: jemalloc preloaded, if there is one, under `conf` (None:
    jemalloc's own defaults); a MALLOC_CONF already in `env` is kept."""
    library = find_jemalloc(env)
    if library is None:
        return dict(env)
    preload = " ".join(p for p in (library, env.get("LD_PRELOAD", "")) if p)
    out = {**env, "LD_PRELOAD": preload}
    if conf is not None and "MALLOC_CONF" not in env:
        out["MALLOC_CONF"] = conf
    return out


def without_jemalloc(env: dict) -> dict:
    """`env` minus this module's preload, for a child that should keep its own malloc (the
    embedded redis-server under a server that runs on jemalloc)."""
    out = dict(env)
    kept = [p for p in env.get("LD_PRELOAD", "").split() if "jemalloc" not in Path(p).name]
    if kept:
        out["LD_PRELOAD"] = " ".join(kept)
    else:
        out.pop("LD_PRELOAD", None)
    if len(kept) != len(env.get("LD_PRELOAD", "").split()):
        out.pop("MALLOC_CONF", None)
    out.pop(STARTED, None)
    return out


def exec_on_jemalloc(module: str, argv: list[str], conf: str | None = JEMALLOC_CONF) -> None:
    """Start `python -m module argv...` again in place of this process, on jemalloc, when the
    machine has it and this process is not on it yet; returns when there is nothing to do. For
    command-line entry points only: a process cannot change its malloc, so it execs itself with
    LD_PRELOAD, once (a preload that did not take is not retried: STARTED marks the attempt)."""
    if jemalloc_active() or os.environ.get(STARTED):
        return
    env = with_jemalloc(dict(os.environ), conf)
    if env.get("LD_PRELOAD") == os.environ.get("LD_PRELOAD"):
        return  # no jemalloc on this machine, or PLR_JEMALLOC=""
    env[STARTED] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)


def jemalloc_active() -> bool:
    """Whether this process's malloc is jemalloc (preloaded or linked)."""
    try:
        with open("/proc/self/maps") as maps:
            return any("jemalloc" in line for line in maps)
    except OSError:  # no procfs (not Linux): glibc's tuning does not apply there either
        return False
