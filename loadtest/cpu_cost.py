"""CPU per request on the serving core, per model and route, side by side: what one core serves.

Latency near capacity is queueing, and queueing follows the CPU each request costs the one core
the server and its embedded Redis share. This measures that cost directly: the CPU time (user +
system, from /proc/<pid>/stat) the server process and the Redis it started spend per request,
while a closed-loop client on the other core drives one target at a time.

Contract: `measure(server_url, server_pid, empty_url, empty_pid, workload, models, ...)` stores
`N_USERS` real users per model (the workload's `near_max` pool, the same histories for every
model), each cached by that model alone, so a user's /events advances one model, as on a server
that serves that model only. Then, in `rounds` rounds, targets in turn: the empty FastAPI app's
/recommend (the floor), and per model /recommend by user_id (the stored state answers) and
/events (one item of the user's real future). Returns one row per (target, route) with the
medians over rounds of server, Redis and total CPU microseconds per request and of the p50
latency; per round, the first model's total CPU per event and per recommend over each other
model's (their quartiles: the median is the comparison, a round's pair runs back to back);
and the requests per second one core sustains at events:recommend 1:1, 2 / (event + recommend
CPU): an upper bound that ignores idle gaps and the load generator.
Run: python -m loadtest.cpu_cost (writes docs/cpu-cost.md and docs/cpu-cost.json; the load-test
runner runs the same measurement as its `cpu` section).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

from loadtest import cpu_profile, procs, sequential
from loadtest.closed_loop import Target, measure as closed_loop, percentile

N_USERS = 64
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_ns(pids: list[int]) -> int:
    """CPU time so far (user + system) of these processes, threads that have ended included, in
    ns at the kernel's clock-tick resolution (10 ms: ~1 % of a 1 s round of a busy server, which
    the medians over rounds average out); 0 for a process that is gone. Per-thread schedstat
    would be finer, but loses a thread's time once it ends."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total * 1_000_000_000 // TICKS


def children(pid: int) -> list[int]:
    """Direct child processes of pid (the server's embedded redis-server)."""
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            out += [int(c) for c in
                    Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return out


def _targets(server_url: str, empty_url: str, users: dict[str, list[dict]]) -> dict:
    """{(name, route): Target}: the floor's /recommend, then each model's two routes."""
    first = next(iter(users.values()))
    out = {("floor", "/recommend"): Target("floor", empty_url, "/recommend",
                                          sequential.request_bodies(first, "recommend"))}
    for model, own in users.items():
        out[(model, "/recommend")] = Target(f"{model}-recommend", server_url, "/recommend",
                                            sequential.request_bodies(own, "recommend", model))
        out[(model, "/events")] = Target(f"{model}-events", server_url, "/events",
                                         sequential.request_bodies(own, "events"))
    return out


def check_plan(rounds: int, round_s: float, concurrency: int) -> None:
    """ValueError naming the first setting that leaves nothing to measure."""
    for name, value, ok in (("rounds", rounds, rounds >= 1), ("round_s", round_s, round_s > 0),
                            ("concurrency", concurrency, concurrency >= 1)):
        if not ok:
            raise ValueError(f"{name} must be positive, got {value}")


def round_order(models: list[str], r: int) -> list[tuple[str, str]]:
    """Round r's (target, route) order: the floor, then per route the models back to back (a
    pair compared is measured seconds apart: the VM drifts by tens of percent within minutes),
    their order turning from round to round so no model always goes first."""
    turned = models[r % len(models):] + models[:r % len(models)]
    return [("floor", "/recommend")] + [(m, route) for route in ("/recommend", "/events")
                                        for m in turned]


def measure(server_url: str, server_pid: int, empty_url: str, empty_pid: int, workload: dict,
            models: list[str], rounds: int = 30, round_s: float = 1.0, concurrency: int = 4,
            warmup_s: float = 0.2, profile_dir: Path | None = None) -> dict:
    check_plan(rounds, round_s, concurrency)
    pool = workload["pools"]["near_max"]
    users = {m: sequential.prepare_users(server_url, pool, [m], f"cpu-{m}-") for m in models}
    redis = children(server_pid)
    targets = _targets(server_url, empty_url, users)
    samples: dict[tuple[str, str], list[dict]] = {}
    for r in range(rounds):
        for key in round_order(models, r):
            target, floor = targets[key], key[0] == "floor"
            watched = [empty_pid] if floor else [server_pid]
            closed_loop([target], concurrency, 1, warmup_s, warmup_s=0)  # not counted
            before = (cpu_ns(watched), cpu_ns(redis))
            result = closed_loop([target], concurrency, 1, round_s, warmup_s=0)[target.name]
            spent = (cpu_ns(watched) - before[0], 0 if floor else cpu_ns(redis) - before[1])
            n = len(result.latencies)
            if not n:
                raise RuntimeError(f"{target.name}: no answer in {round_s} s")
            samples.setdefault(key, []).append({
                "n": n, "errors": result.errors, "server_us": spent[0] / n / 1e3,
                "redis_us": spent[1] / n / 1e3, "total_us": (spent[0] + spent[1]) / n / 1e3,
                "p50_ms": 1e3 * percentile(result.latencies, 50)})
    out = summarize(samples, models, rounds, round_s, concurrency)
    if profile_dir is not None:
        out["profile"] = _profiles(targets, round_order(models, 0), server_pid, empty_pid,
                                   concurrency, profile_dir)
    return out


def _profiles(targets: dict, order: list[tuple[str, str]], server_pid: int, empty_pid: int,
              concurrency: int, profile_dir: Path, seconds: float = 3.0) -> dict | None:
    """One more round per target, not counted above, under `perf`: {"target route": {part:
    percent of the process's samples}} (loadtest/cpu_profile.py); None where perf cannot run."""
    out = {}
    for name, route in order:
        target = targets[(name, route)]
        pid = empty_pid if name == "floor" else server_pid
        closed_loop([target], concurrency, 1, 0.2, warmup_s=0)
        holder: dict = {}
        sampler = threading.Thread(target=lambda: holder.update(text=cpu_profile.record(
            pid, seconds, profile_dir / f"{name}{route.replace('/', '-')}.data")))
        sampler.start()
        closed_loop([target], concurrency, 1, seconds + 0.3, warmup_s=0)  # covers the sampling
        sampler.join()
        if holder.get("text") is None:
            return None
        out[f"{name} {route}"] = cpu_profile.breakdown(holder["text"])
    return out


def _quartiles(values: list[float]) -> list[float]:
    """[25th percentile, median, 75th percentile] (the median alone with fewer than 4 values;
    NaN with none)."""
    if not values:
        return [math.nan] * 3
    if len(values) < 4:
        return [statistics.median(values)] * 3
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return [q1, q2, q3]


def summarize(samples: dict[tuple[str, str], list[dict]], models: list[str], rounds: int,
              round_s: float, concurrency: int) -> dict:
    """Medians over rounds per (target, route); per-round ratios to models[0]; capacity."""
    rows = []
    for (name, route), per_round in samples.items():
        row = {"target": name, "route": route, "n": sum(s["n"] for s in per_round),
               "errors": sum(s["errors"] for s in per_round)}
        for key in ("server_us", "redis_us", "total_us", "p50_ms"):
            row[key] = statistics.median(s[key] for s in per_round)
        row["total_us_rounds"] = [round(s["total_us"], 1) for s in per_round]
        row["total_us_quartiles"] = _quartiles([s["total_us"] for s in per_round])
        rows.append(row)

    def per_round(model: str, route: str) -> list[float]:
        return [s["total_us"] for s in samples[(model, route)]]

    # A round whose CPU read 0 ticks (a very short round) has no ratio and no rate: left out.
    capacity = {m: _quartiles([2e6 / (e + r) for e, r in zip(per_round(m, "/events"),
                                                             per_round(m, "/recommend"))
                               if e + r > 0])[1] for m in models}
    floor = samples.get(("floor", "/recommend"))
    if floor:
        capacity["floor"] = _quartiles([1e6 / s["total_us"] for s in floor
                                        if s["total_us"] > 0])[1]
    ratios = {}
    for other in models[1:]:
        ratios[f"{models[0]}/{other}"] = {
            route: _quartiles([a / b for a, b in zip(per_round(models[0], route),
                                                     per_round(other, route)) if b > 0])
            for route in ("/events", "/recommend")}
    return {"rows": rows, "ratios": ratios, "capacity_rps": capacity, "rounds": rounds,
            "round_s": round_s, "concurrency": concurrency, "users_per_model": N_USERS}


# --- report -------------------------------------------------------------------------------------


def section(result: dict | None, models: list[str]) -> list[str]:
    """The measurement as markdown lines (method, table, comparison), for this module's page and
    for docs/latency.md's; nothing when it was not measured."""
    if not result:
        return []
    lines = [
        f"Each model's {result['users_per_model']} stored users (real histories of max_len "
        "items, the same for every model) are cached by that model alone: a user's /events "
        "advances one model, as on a server that serves only that model. The closed-loop client "
        f"({result['concurrency']} keep-alive connections) drives one target at a time, "
        f"{result['rounds']} rounds of {result['round_s']:g} s per target after a short warm-up "
        "that is not counted: the empty app's /recommend, then per route the models back to "
        "back, their order turning from round to round. CPU: user + system time of the server "
        "process and of its embedded Redis (/proc/<pid>/stat, 10 ms ticks) over the target's "
        "round, per answered request; each cell is the median round."
        + (" Load average before / after: {} / {}.".format(*result["loadavg_1m"])
           if result.get("loadavg_1m") else ""),
        "",
        "| target | route | requests | server CPU us / request | Redis CPU us / request | "
        "total us / request | rounds' middle half (total) | p50 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        q1, _, q3 = r["total_us_quartiles"]
        lines.append(f"| {r['target']} | {r['route']} | {r['n']} | {r['server_us']:.1f} | "
                     f"{r['redis_us']:.1f} | **{r['total_us']:.1f}** | {q1:.0f}-{q3:.0f} | "
                     f"{r['p50_ms']:.3f} |")
    lines += ["", "Side by side (each round's own ratio: median, and the middle half of the "
              "rounds):", ""]
    for pair, by_route in result["ratios"].items():
        ev, rec = by_route["/events"], by_route["/recommend"]
        lines.append(f"- {pair} CPU per `/events`: **{ev[1]:.3f}** ({ev[0]:.3f}-{ev[2]:.3f}); "
                     f"per stored user's `/recommend`: **{rec[1]:.3f}** ({rec[0]:.3f}-"
                     f"{rec[2]:.3f}).")
    cap = result["capacity_rps"]
    lines.append("- Requests per second one core sustains at events:recommend 1:1, "
                 "2 / (event + recommend CPU), a bound that leaves out idle gaps: "
                 + ", ".join(f"{m} **{cap[m]:.0f}**" for m in models)
                 + (f"; the empty app's /recommend alone {cap['floor']:.0f}." if "floor" in cap
                    else "."))
    lines += _profile_lines(result)
    lines += ["", "Why it matters: near capacity a request's latency is queueing on the one "
              "core, and the queue grows as 1 / (1 - load): the model whose events cost more "
              "CPU reaches a given load at a lower rate, and its stored users' `/recommend` "
              "(which runs no model) waits longer there. Errors: "
              f"{sum(r['errors'] for r in result['rows'])} non-2xx answers in all.", ""]
    return lines


def _profile_lines(result: dict) -> list[str]:
    """The `perf` breakdown as a table: parts x targets, percent and us per request."""
    profile = result.get("profile")
    if not profile:
        return []
    server_us = {f"{r['target']} {r['route']}": r["server_us"] for r in result["rows"]}
    columns = list(profile)
    parts = [part for part in next(iter(profile.values()))
             if any(profile[c][part] >= 0.5 for c in columns)]
    lines = ["", "Where the server process's CPU goes (`perf record` at 999 Hz during one more "
             "round of 3 s per target, not counted above; percent of the process's samples, and "
             "that share of the table's server CPU per request; the empty app's column is its own "
             "process; parts under 0.5 % everywhere left out; loadtest/cpu_profile.py says which "
             "libraries make each part):", "",
             "| part | " + " | ".join(f"{c} % (us)" for c in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for part in parts:
        lines.append(f"| {part} | " + " | ".join(
            f"{profile[c][part]:.1f} ({profile[c][part] * server_us[c] / 100:.0f})"
            for c in columns) + " |")
    return lines


def render(result: dict, ctx: dict) -> str:
    """docs/cpu-cost.md: where and how it ran, then `section`."""
    lines = [
        "# CPU per request on the serving core",
        "",
        f"Written by `{ctx['command']}` on {ctx['date']}. Hardware: {ctx['cpu']}, "
        f"{ctx['cores']} cores; Python {ctx['python']}, torch {ctx['torch']}; the server on "
        f"{ctx['malloc']} malloc, compiled engine graphs: {ctx['engines']}. Load average before / "
        f"after: {ctx['loadavg'][0]} / {ctx['loadavg'][1]}.",
        "",
        f"The server (`python -m server`, models {', '.join(ctx['versions'])}) and its embedded "
        f"Redis on CPU {ctx['server_cpus']}, the empty FastAPI app (loadtest/empty_app.py) on the "
        f"same CPU, the closed-loop client on CPU {ctx['client_cpus']}. Latency near capacity "
        "(docs/latency.md, ladder) follows from these costs.",
        "",
    ]
    return "\n".join(lines + section(result, ctx["models"]))


def main(argv=None) -> None:
    from loadtest import plan, runner  # the runner's server handling and workload, reused

    p = argparse.ArgumentParser(prog="python -m loadtest.cpu_cost",
                                description=__doc__.splitlines()[0])
    p.add_argument("--models", default="plr,sasrec")
    p.add_argument("--models-dir", type=Path, default=procs.REPO / "artifacts" / "models")
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--compiled-dir", type=Path, default=procs.REPO / "artifacts" / "compiled")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--round-s", type=float, default=1.0)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--server-cpus", default="0")
    p.add_argument("--client-cpus", default="1")
    p.add_argument("--server-cmd", default=f"{sys.executable} -m server")
    p.add_argument("--run-dir", type=Path, default=procs.REPO / "runs" / "cpu-cost")
    p.add_argument("--docs", type=Path, default=procs.REPO / "docs")
    p.add_argument("--profile", action="store_true",
                   help="also break each target's server CPU down by library with Linux perf")
    p.add_argument("--rerender", action="store_true",
                   help="rebuild docs/cpu-cost.md from docs/cpu-cost.json, measuring nothing")
    args = p.parse_args(argv)
    if args.rerender:
        saved = json.loads((args.docs / "cpu-cost.json").read_text())
        ctx = saved.pop("context")
        (args.docs / "cpu-cost.md").write_text(render(saved, ctx))
        return
    models = [m for m in args.models.split(",") if m]
    try:
        check_plan(args.rounds, args.round_s, args.concurrency)
    except ValueError as exc:
        p.error(str(exc).replace("round_s", "--round-s").replace("rounds", "--rounds"))
    if args.client_cpus:
        os.sched_setaffinity(0, {int(c) for c in args.client_cpus.split(",")})
    facts = runner.checkpoint_facts(args.models_dir, models)
    runner.prepare_run_dir(args.run_dir, False, facts["versions"])
    workload = json.loads(runner.ensure_workload(args.run_dir, args, plan.MODES["short"],
                                                 facts).read_text())
    servers = runner.Servers(args, args.run_dir, models)
    runner.stop_on_term()
    load_before = os.getloadavg()[0]
    try:
        runner.build_graphs(args, servers.models_dir)
        servers.start()
        served, malloc = servers.models(), servers.malloc()
        result = measure(servers.url("server"), servers.server.pid, servers.url("empty"),
                         servers.empty.pid, workload, models, args.rounds, args.round_s,
                         args.concurrency,
                         profile_dir=args.run_dir / "perf" if args.profile else None)
    finally:
        servers.stop()
    from model.experiments.hardware import hardware

    hw = hardware()
    ctx = {"models": models, "command": " ".join(
               ["python -m loadtest.cpu_cost", *(argv if argv is not None else sys.argv[1:])]),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": hw["cpu"],
           "cores": hw["cores"], "python": platform.python_version(), "torch": hw["torch"],
           "malloc": malloc, "server_cpus": args.server_cpus, "client_cpus": args.client_cpus,
           "engines": ", ".join(f"{m['name']} {(m.get('engine') or {}).get('mode', 'eager')}"
                                for m in served.get("models", [])),
           "versions": [f"{m['name']} {m['version']}" for m in served.get("models", [])],
           "loadavg": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / "cpu-cost.json").write_text(json.dumps({"context": ctx, **result}, indent=1))
    (args.docs / "cpu-cost.md").write_text(render(result, ctx))
    print(render(result, ctx))


if __name__ == "__main__":
    main()
