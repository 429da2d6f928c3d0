"""Numbers from one step's raw requests: percentiles, errors, achieved rate; goodput over a ladder.

Contract: percentiles are nearest-rank (the reported p99 is a latency that was observed); only
"measure"-phase rows count; names ending in "]" are setup traffic and stay out of "steady".
A step passes the SLO when its steady p99 <= slo_ms, it has no errors, and the achieved rate is
within `tolerance` of the offered one. Goodput is the highest rung of an unbroken run of passes.
"""

import csv
import math
from pathlib import Path

import numpy as np

QUANTILES = (50, 95, 99, 99.9)
RATE_TOLERANCE = 0.05


def percentile(values, q: float) -> float | None:
    """Nearest-rank q-th percentile (0 < q <= 100) of values; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_summary(latencies_ms) -> dict:
    out = {"n": len(latencies_ms)}
    for q in QUANTILES:
        out[f"p{q:g}"] = percentile(latencies_ms, q)
    out["mean"] = sum(latencies_ms) / len(latencies_ms) if latencies_ms else None
    return out


def read_request_rows(path) -> list[dict]:
    """The per-request CSV the locustfile writes."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["t_sched_s"] = float(row["t_sched_s"])
        row["status"] = int(row["status"])
        row["latency_ms"] = float(row["latency_ms"]) if row["latency_ms"] else None
        row["lateness_ms"] = float(row["lateness_ms"]) if row["lateness_ms"] else None
        row["model"] = row.get("model") or ""  # files written before interleaving had none
    return rows


def is_error(row: dict) -> bool:
    # status 0: connection error/timeout; -1: dropped by the generator; -2: unfinished after drain
    return not 200 <= row["status"] < 300


def achieved_rate(
    rows: list[dict], window_start_s: float, window_s: float, share: float = 1.0
) -> float | None:
    """Requests actually sent (scheduled time + lateness) inside the window, per second of the
    `share` of it these rows were offered in (an interleaved model's slices): a generator that
    falls behind pushes sends past the window's end and this drops below offered."""
    if window_s <= 0:
        return None
    end = window_start_s + window_s
    sent = [r["t_sched_s"] + r["lateness_ms"] / 1000 for r in rows if r["lateness_ms"] is not None]
    return sum(window_start_s <= t < end for t in sent) / (window_s * share)


def summarize_step(
    rows: list[dict], offered_rate: float, window_s: float, warmup_s: float = 0.0,
    share: float = 1.0,
) -> dict:
    """Per request name and "steady" (all non-setup names) plus step-level errors and rates.
    `share`: the fraction of the window the rows' stream owned (1/n for one of n interleaved
    models, which sees `offered_rate` only during its slices): rates are per owned second."""
    measured = [r for r in rows if r["phase"] == "measure"]
    groups = {"steady": [r for r in measured if not r["name"].endswith("]")]}
    for row in measured:
        groups.setdefault(row["name"], []).append(row)
    by_name = {}
    for name, group in groups.items():
        ok = [r["latency_ms"] for r in group if not is_error(r)]
        by_name[name] = latency_summary(ok) | {
            "requests": len(group),
            "errors": sum(is_error(r) for r in group),
            "status_5xx": sum(500 <= r["status"] < 600 for r in group),
            "cache": _counts(r["cache"] for r in group if r["cache"]),
        }
    lateness = [r["lateness_ms"] for r in measured if r["lateness_ms"] is not None]
    return {
        "offered_rate": offered_rate,
        "achieved_rate": achieved_rate(rows, warmup_s, window_s, share),
        "completed_rate": sum(r["status"] > 0 for r in measured) / (window_s * share)
        if window_s > 0
        else None,
        "errors": sum(is_error(r) for r in measured),
        "status_5xx": sum(500 <= r["status"] < 600 for r in measured),
        "lateness_p99_ms": percentile(lateness, 99),
        "by_name": by_name,
    }


def _counts(values) -> dict:
    out = {}
    for value in values:
        out[value] = out.get(value, 0) + 1
    return out


def rate_matches(offered: float, achieved: float | None, tolerance: float = RATE_TOLERANCE) -> bool:
    return achieved is not None and abs(achieved - offered) <= tolerance * offered


def passes_slo(step: dict, slo_ms: float, tolerance: float = RATE_TOLERANCE) -> bool:
    p99 = step["by_name"].get("steady", {}).get("p99")
    return (
        p99 is not None
        and p99 <= slo_ms
        and step["errors"] == 0
        and rate_matches(step["offered_rate"], step["achieved_rate"], tolerance)
        and rate_matches(step["offered_rate"], step["completed_rate"], tolerance)
    )


def goodput(steps: list[dict], slo_ms: float) -> float | None:
    """Highest offered rate reached with every lower rung passing too (a later lucky pass after a
    failure does not count). 0.0 when the lowest rung fails; None without steps."""
    if not steps:
        return None
    best = 0.0
    for step in sorted(steps, key=lambda s: s["offered_rate"]):
        if not passes_slo(step, slo_ms):
            break
        best = step["offered_rate"]
    return best


def interleaved_blocks(rows: list[dict], models: list[str], name: str, slice_s: float) -> list[dict]:
    """The measured, successful `name` latencies of an interleaved step, per block of turns: the
    block of a request is t_sched // (len(models) * slice_s), the unit in which
    `traffic.Interleaving` gives every model one turn. Only blocks where every model has
    requests are kept. -> [{model: [latency ms, ...]}, ...] in time order."""
    width = len(models) * slice_s
    blocks: dict[int, dict[str, list[float]]] = {}
    for r in rows:
        if r["phase"] == "measure" and r["name"] == name and not is_error(r) \
                and r["model"] in models:
            block = blocks.setdefault(int(r["t_sched_s"] // width), {m: [] for m in models})
            block[r["model"]].append(r["latency_ms"])
    return [blocks[k] for k in sorted(blocks) if all(blocks[k][m] for m in models)]


def ratio_ci(blocks: list[dict], a: str, b: str, q: float = 50, level: float = 0.95,
             resamples: int = 1000, seed: int = 0) -> tuple[float, float] | None:
    """Bootstrap confidence interval of percentile_q(a) / percentile_q(b) over interleaved blocks
    (`interleaved_blocks`): whole blocks are resampled with replacement, so the two models'
    requests that shared a stretch of machine time stay together (their latencies are
    correlated with the machine's drift and with each other's backlog; resampling single
    requests would understate the spread). Percentile interval, seeded. None with < 2 blocks."""
    if len(blocks) < 2:
        return None
    rng = np.random.default_rng(np.frombuffer(f"ratio_ci:{seed}".encode(), np.uint8))
    arrays = {m: [np.asarray(blk[m], dtype=float) for blk in blocks] for m in (a, b)}
    ratios = np.empty(resamples)
    for i in range(resamples):
        drawn = rng.integers(0, len(blocks), len(blocks))
        # nearest-rank, as `percentile`: numpy's inverted_cdf is that definition
        top, bottom = (np.percentile(np.concatenate([arrays[m][j] for j in drawn]), q,
                                     method="inverted_cdf") for m in (a, b))
        ratios[i] = top / bottom
    tail = (1 - level) / 2
    lo, hi = np.quantile(ratios, [tail, 1 - tail], method="inverted_cdf")
    return float(lo), float(hi)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def parse_locust_stats(path) -> dict[str, dict]:
    """locust --csv PREFIX_stats.csv -> name -> {requests, failures, p50, p99, ...} (ms; locust
    rounds its percentiles, so these are a cross-check of our own exact numbers)."""
    out = {}
    with open(Path(path), newline="") as f:
        for row in csv.DictReader(f):
            out[row["Name"]] = {
                "type": row["Type"],
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "median_ms": _num(row["Median Response Time"]),
                "mean_ms": _num(row["Average Response Time"]),
                "rps": _num(row["Requests/s"]),
                **{f"p{q:g}": _num(row.get(f"{q:g}%", "N/A")) for q in QUANTILES},
            }
    return out


def _num(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):  # locust writes "N/A" for empty entries
        return None
