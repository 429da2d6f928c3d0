"""Render docs/latency.md from step results and report.headline(); text only, no computation
beyond picking and formatting, so every number in the page comes from a measured step."""

from loadtest import cpu_cost
from loadtest.stats import QUANTILES


def _resumed(steps: dict | None) -> str:
    """How much of the report this invocation measured (a resumed run reuses saved steps)."""
    if not steps or not steps["reused"]:
        return ""
    return (f" for {steps['run']} steps; {steps['reused']} steps were measured by an earlier "
            f"invocation of the same plan and checkpoints and reused (steps' own time "
            f"{steps['steps_wall_s']} s in all)")


def _f(value, digits=2, suffix="") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def _met(value, goal, higher_is_better=False) -> str:
    if value is None:
        return "not measured"
    return "yes" if (value >= goal if higher_is_better else value <= goal) else "no"


def _stat(result, name, key):
    return result["summary"]["by_name"].get(name, {}).get(key)


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _machine_load(results: list[dict], cores: int) -> str:
    loads = [x for r in results for x in r.get("loadavg_1m") or [] if x is not None]
    if not loads:
        return "- Machine load: not recorded."
    worst = max(loads)
    verdict = (
        f"above the {cores} cores: other processes competed with the test and the numbers "
        "are pessimistic"
        if worst > cores
        else f"within the {cores} cores"
    )
    return f"- Machine load (1-min load average around each step): up to {worst:.1f}, {verdict}."


def _machine_speed(speed: dict | None) -> str:
    """Setup line: how fast the server's core was before and after the run (loadtest.cpu_probe's
    work unit), so that reports from different runs can be compared knowing the machine's pace."""
    stamps = [(when, (speed or {}).get(when)) for when in ("before", "after")]
    shown = [f"{s['median_ms']:.1f} ms {when} the run (min {s['min_ms']:.1f}, max "
             f"{s['max_ms']:.1f}, {s['n']} units)" for when, s in stamps if s]
    if not shown:
        return "- Machine speed: not recorded."
    return ("- Machine speed (`loadtest.cpu_probe`'s pure-Python work unit, back to back on the "
            "server's CPU, median; lower is faster): " + "; ".join(shown) + ". This VM has read "
            "~13 ms in fast phases and ~19-22 ms in slow ones (docs/latency/cpu_probe.md): "
            "compare runs at the same pace.")


def _model_versions(server_models: dict) -> str:
    served = server_models.get("models") or []
    if not served:
        return "- Served models: not reported by GET /models."
    names = ", ".join(
        f"{m['name']} (kind {m.get('kind')}, version {m.get('version')}, engine "
        f"{(m.get('engine') or {}).get('mode', 'eager')})" for m in served
    )
    return f"- Served models (GET /models): {names}."


def _setup(ctx: dict, slo_ms: float, results: list[dict]) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in ctx["versions"].items())
    data = f"{ctx['dataset']}" + (" (SYNTHETIC)" if ctx["synthetic"] else "")
    return [
        "## Setup",
        "",
        f"- Date: {ctx['date']}; mode `{ctx['mode']}`; run wall time {ctx['wall_s']} s"
        + _resumed(ctx.get("steps")) + ".",
        f"- Command: `{ctx['command']}`",
        f"- Hardware: {ctx['cpu']}, {ctx['cores']} cores, {ctx['platform']}.",
        f"- Pinning: server + its embedded Redis on CPU {ctx['server_cpus']} (torch threads 1, "
        f"BLAS/OpenMP 1), the empty floor app on the same CPU, locust on CPU {ctx['locust_cpus']}: "
        "the serving stack gets one core.",
        _machine_load(results, ctx["cores"]),
        _machine_speed(ctx.get("machine_speed")),
        f"- Versions: {versions}.",
        f"- Models: {', '.join(ctx['models'])} from `{ctx.get('models_dir', 'artifacts/models')}`"
        f"; max_len {ctx['max_len']}.",
        _model_versions(ctx.get("server_models") or {}),
        f"- Server malloc: {ctx.get('server_malloc', 'not recorded')} (`python -m server` runs on "
        "jemalloc where the machine has it: model/allocator.py, docs/serving-malloc.md).",
        f"- Workload: users and histories from {data}; pools (users) {ctx['pools']}. Zipf (s=1) "
        "user popularity over a seeded shuffle of users; /events : /recommend = 1:1; constant "
        "arrivals, open loop (requests fire on schedule, each in its own greenlet); latency is "
        "measured from the scheduled send time.",
        f"- Each step: {ctx['warmup_s']:g} s warm-up (excluded), {ctx['measure_s']:g} s measured "
        + (f"(a ladder step at least {ctx['min_requests']} requests: longer at low rates; "
           if ctx.get("min_requests") else "(")
        + "length steps warm up longer, to start every user first). While both models are on "
        "the ladder, a rate runs as one interleaved step: the models take turns in 1 s slices "
        "(each pair of slices in seeded random order), each with its own users and the full "
        "rate during its turns, and each gets the warm-up and measured seconds above; the "
        "requests are split back per model. A drift of the machine then weighs on both models "
        "alike; the server's stage histograms of such a step cover both models' turns (rows "
        "labelled with the other model left out).",
        "- *steady* = `/recommend` by user_id (stored history and cache) + `/events` (one item). "
        "A user's first request in a step is a session start (`/recommend` with the full "
        "history), reported apart.",
        f"- SLO: steady p99 <= {slo_ms:g} ms, zero errors, achieved and completed rate within 5% "
        "of offered. Achieved counts requests actually sent inside the window; *send lateness* "
        "is how late locust sent them (generator overload shows there; it is in the latency).",
        "",
    ]


def _headline(head: dict, models: list[str], goals: dict, extra: list[list] = ()) -> list[str]:
    worst, worst99 = head["worst_p50_ratio"], head["worst_p99_ratio"]
    where = "both met the SLO" if head["ratio_rates_pass"] else "both ran (none passed both)"
    gp, ev = head["goodput"], head["events_length"]
    a, b = (models + [None, None])[:2]
    capped = set(head.get("goodput_capped", []))

    def rate(key) -> str:  # ">=" where the target never failed: a lower bound
        return (">= " if key in capped else "") + _f(gp.get(key), 0)

    bound = {frozenset(): "", frozenset({a}): f" (a lower bound: {a} never failed)",
             frozenset({"empty"}): " (an upper bound: the floor never failed)"}.get(
        frozenset(capped & {a, "empty"}), " (both never failed: not a measure of capacity)")
    rows = [
        [
            f"{a}/{b} /recommend p50 ratio, worst rate where {where}"
            + (f" ({head['worst_p50_rate']:g} req/s)" if head.get("worst_p50_rate") else ""),
            _f(worst, 3) + _ci(head.get("worst_p50_ci")),
            f"<= {goals['p50_ratio']}",
            _met(worst, goals["p50_ratio"]) + _ci_verdict(head.get("worst_p50_ci"),
                                                          goals["p50_ratio"]),
        ],
        [f"{a}/{b} /recommend p99 ratio, same rates", _f(worst99, 3), "-", "-"],
        [
            f"goodput {a} / empty floor ({rate(a)} / {rate('empty')} req/s)",
            _f(head["goodput_fraction"], 3),
            f">= {goals['goodput_fraction']}",
            _met(head["goodput_fraction"], goals["goodput_fraction"], True) + bound,
        ],
        [f"goodput {b}", rate(b) + (" req/s" if gp.get(b) is not None else ""), "-", "-"],
        [
            f"/events p50 at history {ev['long']} vs {ev['short']}",
            _f(ev["p50_ratio"], 3),
            f"<= {goals['events_length_ratio']}",
            _met(ev["p50_ratio"], goals["events_length_ratio"]),
        ],
        [
            "5xx responses, every step within capacity (at or below each target's goodput)",
            head["status_5xx"],
            "0",
            "yes" if head["status_5xx"] == 0 else "no",
        ],
        [
            "503 (shed) responses past capacity: "
            + (", ".join(head.get("overload_steps") or []) or "no such step"),
            head.get("status_5xx_overload", 0),
            "-",
            "shed by design (503 + Retry-After)",
        ],
        ["errors (non-2xx, timeouts, drops), all steps", head["errors"], "-", "-"],
        [
            "steps whose achieved rate was within 5% of offered",
            f"{head['steps'] - len(head['rate_misses'])}/{head['steps']}",
            "all",
            "yes" if not head["rate_misses"] else "no: " + ", ".join(head["rate_misses"]),
        ],
    ]
    rows = list(extra) + rows
    return ["## Headline", ""] + _table(["measure", "value", "goal", "met"], rows) + [""]


def _ladder(results: list[dict], group: str, title: str) -> list[str]:
    chosen = sorted(
        (r for r in results if r["step"]["group"] == group),
        key=lambda r: (r["step"]["rate"], r["step"]["model"] or ""),
    )
    if not chosen:
        return []
    header = [
        "rate/s",
        "model",
        "achieved/s",
        "n",
        *[f"p{q:g} ms" for q in QUANTILES],
        "/recommend p50",
        "/recommend p99",
        "/events p50",
        "session p50",
        "errors",
        "send lateness p99",
        "load avg",
        "measured",
        "SLO",
    ]
    rows = [
        [
            f"{r['step']['rate']:g}",
            r["step"]["model"] or "empty",
            _f(r["summary"]["achieved_rate"], 1),
            _stat(r, "steady", "n"),
            *[_f(_stat(r, "steady", f"p{q:g}")) for q in QUANTILES],
            _f(_stat(r, "/recommend", "p50")),
            _f(_stat(r, "/recommend", "p99")),
            _f(_stat(r, "/events", "p50")),
            _f(_stat(r, "/recommend [session]", "p50")),
            r["summary"]["errors"],
            _f(r["summary"]["lateness_p99_ms"]),
            _f(max(r.get("loadavg_1m") or [None]), 1),
            _how(r["step"]),
            "pass" if r["passes_slo"] else "fail",
        ]
        for r in chosen
    ]
    return [f"## {title}", ""] + _table(header, rows) + [""]


def _how(step: dict) -> str:
    """How a ladder step was measured: in turns with the other models, or by itself (the only
    model left, or again after a model failed the rate in turns: runner.StepRunner.interleave)."""
    if step.get("interleaved"):
        return "in turns"
    return "alone, after a failure in turns" if step["name"].endswith("-alone") else "alone"


def _span(ci) -> str:
    return f"{ci[0]:.3f}-{ci[1]:.3f}"


def _ci(ci) -> str:
    return f" (95 % CI {_span(ci)})" if ci else ""


def _ci_verdict(ci, goal: float) -> str:
    """Whether the interval settles the verdict: a ratio whose interval straddles the goal is
    not a clear pass or miss."""
    if not ci:
        return ""
    if ci[0] > goal:
        return " (the whole interval is above the goal)"
    if ci[1] > goal:
        return " (the interval includes the goal)"
    return ""


def _ratios(head: dict, models: list[str]) -> list[str]:
    if not head["ratios"]:
        return []
    header = ["rate/s", "/recommend p50", "p50 95 % CI", "/recommend p99", "steady p50",
              "steady p99"]
    rows = [
        [
            f"{r['rate']:g}",
            _f(r["/recommend_p50_ratio"], 3),
            _span(r["/recommend_p50_ci"]) if r.get("/recommend_p50_ci") else "-",
            _f(r["/recommend_p99_ratio"], 3),
            *[_f(r[f"steady_{k}_ratio"], 3) for k in ("p50", "p99")],
        ]
        for r in head["ratios"]
    ]
    return (
        [f"## {models[0]} / {models[1]} latency ratios at the same offered rate", "",
         "The interval: a 95 % bootstrap interval of the /recommend p50 ratio at rates the "
         "models ran interleaved, resampling the step's blocks of turns (each block holds one "
         "turn per model, so what the two shared stays paired) with replacement, 1000 times "
         "(`loadtest.stats.ratio_ci`). It covers the spread within this run, not the "
         "difference between two runs or machines; '-': measured apart.", ""]
        + _table(header, rows)
        + [""]
    )


def _cache(head: dict) -> list[str]:
    if not head["cache"]:
        return []
    header = ["model", "rate/s", "on p50", "on p99", "off p50", "off p99", "off/on p50"]
    rows = [
        [
            r["model"],
            f"{r['rate']:g}",
            _f(r["on_p50"]),
            _f(r["on_p99"]),
            _f(r["off_p50"]),
            _f(r["off_p99"]),
            _f(r["off_on_p50_ratio"], 2),
        ]
        for r in head["cache"]
    ]
    return (
        [
            "## Cache on vs off (/recommend only, histories at max_len, ms)",
            "",
            "Cache on: `/recommend` by user_id reads the stored KV cache; off: `use_cache: false` "
            "with the history in the request, recomputed from scratch.",
            "",
            "![cache](latency/cache_on_off.png)",
            "",
        ]
        + _table(header, rows)
        + [""]
    )


def _events(results: list[dict]) -> list[str]:
    chosen = [r for r in results if r["step"]["group"] == "length"]
    if not chosen:
        return []
    header = ["step", "pool", "rate/s", "users", "/events n", "p50 ms", "p99 ms", "errors"]
    rows = [
        [
            r["step"]["name"],
            r["step"]["pool"],
            f"{r['step']['rate']:g}",
            r["step"]["users"],
            _stat(r, "/events", "n"),
            _f(_stat(r, "/events", "p50")),
            _f(_stat(r, "/events", "p99")),
            r["summary"]["errors"],
        ]
        for r in chosen
    ]
    return (
        [
            "## /events by history length",
            "",
            "Events only; each user starts at the pool's length and gets at most a few events in "
            "the window.",
            "",
        ]
        + _table(header, rows)
        + [""]
    )


def _stages(results: list[dict], models: list[str]) -> list[str]:
    ladder = [
        r for r in results if r["step"]["group"] == "ladder" and r["passes_slo"] and r.get("stages")
    ]
    by_model = {}
    for r in ladder:
        by_model.setdefault(r["step"]["model"], []).append(r)
    common = (
        set.intersection(*[{r["step"]["rate"] for r in rs} for rs in by_model.values()])
        if by_model
        else set()
    )
    if not common:
        return []
    rate = max(common)
    rows = []
    for r in ladder:
        if r["step"]["rate"] != rate:
            continue
        for s in r["stages"]:
            rows.append([
                r["step"]["name"],
                s["metric"],
                s["labels"],
                int(s["count"]),
                _f(s["mean"], 3),
                _f(s["p50"], 3),
                _f(s["p99"], 3),
                s["unit"],
            ])
    return (
        [
            f"## Server stages at {rate:g} req/s (GET /metrics histograms, diffed over the step "
            "or the models' interleaved step)",
            "",
            "Bucketed: p50/p99 interpolate inside Prometheus buckets. Every step's stages are in "
            "[latency/stages.csv](latency/stages.csv).",
            "",
        ]
        + _table(["step", "metric", "labels", "count", "mean", "p50", "p99", "unit"], rows)
        + [""]
    )


def _seq_row(seq: dict, route: str, target: str, c: int) -> dict | None:
    return next((r for r in seq["rows"] if (r["route"], r["target"], r["concurrency"])
                 == (route, target, c)), None)


def _sequential_headline(seq: dict | None, models: list[str], goals: dict) -> list[list]:
    """Headline rows of the closed-loop section (c=1 ratios to the floor, PLR/SASRec)."""
    if not seq:
        return []
    a, b = (models + [None, None])[:2]
    rows = []
    for model in (a, b):
        row = _seq_row(seq, "/recommend", model, 1)
        ratio = row and row["vs_floor_p50"]
        rows.append([f"{model} /recommend by user_id p50 / floor p50, closed loop c=1",
                     _f(ratio, 2), f"<= {goals['recommend_vs_floor']}",
                     _met(ratio, goals["recommend_vs_floor"])])
    for c in seq["concurrencies"]:
        ra, rb = _seq_row(seq, "/recommend", a, c), _seq_row(seq, "/recommend", b, c)
        if ra and rb and ra["p50_ms"] and rb["p50_ms"]:
            ratio = ra["p50_ms"] / rb["p50_ms"]
            rows.append([f"{a}/{b} /recommend p50 ratio, closed loop c={c}", _f(ratio, 3),
                         f"<= {goals['p50_ratio']}", _met(ratio, goals["p50_ratio"])])
    ev = _seq_row(seq, "/events", "server", 1)
    ratio = ev and ev["vs_floor_p50"]
    rows.append([f"/events (one item, stored user) p50 / floor p50, closed loop c=1, server "
                 f"with {' + '.join(m for m in (a, b) if m)} (both advance per event)",
                 _f(ratio, 2), f"<= {goals['events_vs_floor']}",
                 _met(ratio, goals["events_vs_floor"])])
    solo = seq.get("solo")
    ev = solo and _seq_row(seq, "/events", solo, 1)
    if ev:
        ratio = ev["vs_floor_p50"]
        rows.append([f"/events p50 / floor p50, closed loop c=1, a server with {a} alone",
                     _f(ratio, 2), f"<= {goals['events_vs_floor']}",
                     _met(ratio, goals["events_vs_floor"])])
    return rows


def _sequential(seq: dict | None) -> list[str]:
    if not seq:
        return []
    rows = [[r["route"], r["target"], r["concurrency"], r["n"], _f(r["rps"], 0),
             _f(r["p50_ms"], 3), _f(r["p90_ms"], 3), _f(r["p99_ms"], 3),
             _f(r["vs_floor_p50"], 2), r["errors"]] for r in seq["rows"]]
    lines = [
        "## Closed loop, sequential: each answer before the next request",
        "",
        f"`loadtest/sequential.py`: {seq['users']} stored users (real histories of max_len items, "
        "a cache and a precomputed state per model), `c` keep-alive connections each sending its "
        f"next request when the answer arrives; targets alternate, {seq['rounds']} rounds of "
        f"{seq['round_s']:g} s each, so the floor (the empty FastAPI app) is measured in the same "
        "rounds. /recommend is by user_id, k=10; /events appends one item of the user's real "
        "future (both models' caches and states advance)."
        + (f" Target `{seq['solo']}`: a second server (same core, its own embedded Redis) that "
           "serves that model alone, as a deployment of one model would: its /events advances "
           "one model. The stage table is the two-model server's." if seq.get("solo") else ""),
        "",
    ]
    lines += _table(["route", "target", "c", "n", "req/s", "p50 ms", "p90 ms", "p99 ms",
                     "p50 / floor", "errors"], rows)
    stages = seq.get("stages") or []
    if stages:
        lines += ["", "Server stages over the closed-loop run (mean ms per observation, from the "
                  "server's own histograms; `compute` is per work, one per model per event; "
                  "`store_write` runs behind the answers):", ""]
        lines += _table(["c", "series", "count", "mean ms", "p50 ms", "p99 ms"],
                        [[s["concurrency"], s["labels"], int(s["count"]), _f(s["mean"], 3),
                          _f(s["p50"], 3), _f(s["p99"], 3)] for s in stages])
    return lines + [""]


def render(results: list[dict], ctx: dict, head: dict, slo_ms: float, goals: dict) -> str:
    models = ctx["models"]
    lines = [
        "# Serving latency: PLR vs SASRec under open-loop load",
        "",
        f"Generated by `{ctx['command']}`; do not edit by hand.",
        "",
    ]
    if ctx["mode"] != "full":
        lines += [
            f"**Mode `{ctx['mode']}`: a quick validation run with short steps; publish numbers "
            "from `--mode full`.**",
            "",
        ]
    lines += _setup(ctx, slo_ms, results) + _headline(head, models, goals,
                                                      _sequential_headline(ctx.get("sequential"),
                                                                           models, goals))
    lines += _sequential(ctx.get("sequential"))
    if ctx.get("cpu_cost"):
        lines += ["## CPU per request on the serving core (loadtest/cpu_cost.py)", ""]
        lines += cpu_cost.section(ctx["cpu_cost"], models)
    if any(r["step"]["group"] in ("ladder", "floor") for r in results):
        lines += ["![latency vs rate](latency/latency_vs_rate.png)", ""]
    lines += _ladder(
        results, "ladder",
        "Ladder: both models at each rate, interleaved in 1 s turns (steady requests, ms)"
    )
    lines += _ratios(head, models) + _cache(head) + _events(results)
    lines += _ladder(results, "floor", "Floor: the empty FastAPI app, same traffic (ms)")
    lines += _stages(results, models)
    lines += [
        "## Files",
        "",
        "- [latency/steps.csv](latency/steps.csv): every step x request name (n, percentiles, "
        "errors, rates).",
        "- [latency/stages.csv](latency/stages.csv): server stage histograms per step.",
        "- Raw per-request CSVs and locust logs stay in the run directory "
        f"(`{ctx.get('run_dir', 'runs/loadtest/<mode>/')}`).",
        "",
    ]
    return "\n".join(lines)
