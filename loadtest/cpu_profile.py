"""Where a process's CPU goes, by library: Linux `perf` samples grouped into a few named parts.

Contract: `record(pid, seconds, path)` samples the process (every thread, user and kernel where
the machine allows) with `perf record` for `seconds` and returns `perf report`'s per-library text,
or None when perf is missing or not permitted (the caller goes on without a breakdown).
`breakdown(text)` turns that text into {part: percent of the samples} over `PARTS` (first match
wins; the rest is "other"), so that a report can say how much of a request is the Python
interpreter, the kernel, torch's own machinery around the model, and the compiled model itself.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

# (part, shared-object name prefixes or suffixes): first match wins.
PARTS = [
    ("compiled engine graphs", ("suffix", (".wrapper.so",))),  # AOTInductor packages
    ("Python interpreter", ("prefix", ("libpython", "python"))),
    ("kernel", ("prefix", ("[kernel",))),
    ("torch around the model (ops, dispatch, tensors)",
     ("prefix", ("libtorch", "libc10", "libgomp", "libmkl", "libiomp"))),
    ("event loop, HTTP, JSON, validation, Redis client",
     ("prefix", ("loop.", "parser.", "url_parser.", "_asyncio", "orjson", "hiredis",
                 "_pydantic_core", "_json", "httptools"))),
    ("numpy", ("prefix", ("_multiarray", "libopenblas", "libscipy_openblas"))),
    ("malloc and C/C++ runtime", ("prefix", ("libc.", "libc-", "libjemalloc", "libstdc++",
                                            "ld-linux", "libm.", "libm-", "libz.",
                                            "libpthread"))),
]
_ROW = re.compile(r"^\s*([0-9.]+)%\s+(\S.*?)\s*$")


def part_of(shared_object: str) -> str:
    name = Path(shared_object).name if not shared_object.startswith("[") else shared_object
    for part, (kind, marks) in PARTS:
        if (name.endswith(marks) if kind == "suffix" else name.startswith(marks)):
            return part
    return "other"


def breakdown(report_text: str) -> dict[str, float]:
    """`perf report --sort dso --stdio` text -> {part: percent}, every part present (0.0 when
    none of its libraries was sampled), summing to the report's total."""
    shares = {part: 0.0 for part, _ in PARTS} | {"other": 0.0}
    for line in report_text.splitlines():
        match = _ROW.match(line)
        if match and not line.lstrip().startswith("#"):
            shares[part_of(match.group(2))] += float(match.group(1))
    return shares


def record(pid: int, seconds: float, path: Path) -> str | None:
    """perf's per-library report of `seconds` of the process, or None where perf cannot run."""
    perf = shutil.which("perf")
    if perf is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    sampled = subprocess.run([perf, "record", "-q", "-F", "999", "-p", str(pid), "-o", str(path),
                              "--", "sleep", f"{seconds:g}"], capture_output=True)
    if sampled.returncode != 0 or not path.exists():
        return None
    shown = subprocess.run([perf, "report", "-i", str(path), "--sort", "dso", "--stdio"],
                           capture_output=True, text=True)
    return shown.stdout if shown.returncode == 0 else None
