"""How steady is the server's core? `python -m loadtest.cpu_probe [--seconds 90] [--cpu 0]`.

Times one fixed unit of pure-Python work (300,000 multiply-adds, one thread, pinned to `--cpu`)
once a second and writes docs/latency/cpu_probe.md: the spread of those times and the series.
Why: on a shared VM the same work can take very different times from one second to the next
(another tenant on the host, the sibling hyperthread), and a load-test step that lands in a slow
stretch fails its SLO for reasons that are not the server's. Run it as the load test runs (same
core, training paused): a wide spread means single-step pass/fail near capacity is noise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

from loadtest.procs import REPO
from model.experiments.hardware import cpu_model

UNIT = 300_000


def work_unit_ms() -> float:
    start = time.perf_counter()
    acc = 0
    for i in range(UNIT):
        acc += i * i
    return (time.perf_counter() - start) * 1e3


def speed_stamp(n: int = 15) -> dict:
    """The work unit `n` times back to back on the caller's CPU: {"n", "median_ms", "min_ms",
    "max_ms"}. A load-test report carries one from before and one from after its run, so two
    reports can be compared knowing how fast the machine was (this VM has read ~13 ms in its
    fast phases and ~19-22 ms in its slow ones)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    times = [work_unit_ms() for _ in range(n)]
    return {"n": n, "median_ms": round(statistics.median(times), 2),
            "min_ms": round(min(times), 2), "max_ms": round(max(times), 2)}


def probe(seconds: int) -> list[float]:
    times = []
    for _ in range(seconds):
        started = time.perf_counter()
        times.append(work_unit_ms())
        time.sleep(max(0.0, 1.0 - (time.perf_counter() - started)))
    return times


def report(times: list[float], cpu: int, load_before: tuple, load_after: tuple) -> str:
    ordered = sorted(times)
    p50, p90 = ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.9)]
    return "\n".join([
        "# CPU probe: how steady the server's core is",
        "",
        f"Written by `python -m loadtest.cpu_probe --seconds {len(times)} --cpu {cpu}` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {cpu_model()}, "
        f"{os.cpu_count()} cores, {platform.platform()}. Load average before / after: "
        f"{' '.join(f'{x:.2f}' for x in load_before)} / "
        f"{' '.join(f'{x:.2f}' for x in load_after)}.",
        "",
        f"The same pure-Python work unit ({UNIT:,} multiply-adds, one thread pinned to CPU "
        f"{cpu}) once a second, {len(times)} times:",
        "",
        "| min ms | p50 ms | p90 ms | max ms | max / min |",
        "|---|---|---|---|---|",
        f"| {ordered[0]:.1f} | {p50:.1f} | {p90:.1f} | {ordered[-1]:.1f} | "
        f"{ordered[-1] / ordered[0]:.2f} |",
        "",
        "Per second, in order (ms): " + " ".join(f"{t:.0f}" for t in times),
        "",
    ])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=90)
    p.add_argument("--cpu", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "latency" / "cpu_probe.md")
    p.add_argument("--stamp", type=int, default=0, metavar="N",
                   help="print speed_stamp(N) as JSON instead (no report written)")
    args = p.parse_args(argv)
    if args.stamp:
        os.sched_setaffinity(0, {args.cpu})
        print(json.dumps(speed_stamp(args.stamp)))
        return
    if args.seconds < 2:
        raise SystemExit("--seconds must be at least 2")
    os.sched_setaffinity(0, {args.cpu})
    load_before = os.getloadavg()
    times = probe(args.seconds)
    text = report(times, args.cpu, load_before, os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
