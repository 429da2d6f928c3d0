"""Run the load-test plan end to end: `python -m loadtest.runner --mode short|full [--fresh]`.

Contract: starts the real server (`python -m server`, embedded Redis, models from --models-dir)
and the empty floor app, each pinned to the server core, runs locust pinned to the other core,
one subprocess per step, and writes docs/latency.md + docs/latency/*.csv|png. Each step's result
is saved under --run-dir/steps/ as it finishes; a rerun skips those steps unless --fresh.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from loadtest import cpu_cost, plan, procs, prom, report, sequential
from loadtest.plan import MODES, Step
from loadtest.stats import (interleaved_blocks, parse_locust_stats, passes_slo, ratio_ci,
                            read_request_rows, summarize_step)
from loadtest.workload import build_workload, dataset_sequences, default_specs, save_workload

DRAIN_S = 10.0
SPEED_UNITS = 15  # work units per machine speed stamp (~0.2-0.3 s)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=sorted(MODES), default="short")
    p.add_argument("--fresh", action="store_true", help="rerun every step, even those with results")
    p.add_argument("--models", default="plr,sasrec", help="comma list, as GET /models names them")
    p.add_argument("--models-dir", type=Path, default=procs.REPO / "artifacts" / "models")
    p.add_argument("--dataset", default="ml-100k", help="model.data spec the workload comes from")
    p.add_argument("--slo-ms", type=float, default=25.0)
    p.add_argument("--run-dir", type=Path, default=None, help="default runs/loadtest/<mode>")
    p.add_argument("--docs", type=Path, default=procs.REPO / "docs", help="writes latency.md there")
    p.add_argument("--groups", default="sequential,cpu,ladder,cache,length,floor",
                   help="subset of step groups")
    p.add_argument("--compiled-dir", type=Path, default=procs.REPO / "artifacts" / "compiled",
                   help="compiled engine graphs; built first if missing (the server only loads)")
    p.add_argument("--server-cpus", default="0", help="'' = no pinning")
    p.add_argument("--locust-cpus", default="1")
    p.add_argument(
        "--server-cmd", default=f"{sys.executable} -m server", help="how to start the server"
    )
    p.add_argument("--max-floor-ms", type=float, default=None,
                   help="stop after the closed-loop section, writing no report, when the empty "
                        "app's c=1 /recommend p50 is above this (a slow phase of the machine)")
    return p.parse_args(argv)


class SlowMachine(RuntimeError):
    """The closed-loop floor says the machine is slower than the run asked for."""


def check_floor(seq: dict, max_ms: float | None) -> float:
    """The closed-loop floor (the empty app, c=1, /recommend) p50 in ms; raises SlowMachine above
    max_ms. Why: the VM this project measures on has phases where every round trip through the
    kernel costs ~2x (the floor read 0.126 ms on 2026-12-01, 0.23-0.34 ms all of 2026-12-02)
    while the CPU probe's compute reads normal; a ~50-minute run in such a phase measures the
    machine, and its report would replace a comparable one."""
    p50 = next(r["p50_ms"] for r in seq["rows"]
               if r["target"] == "floor" and r["route"] == "/recommend" and r["concurrency"] == 1)
    if max_ms is not None and p50 > max_ms:
        raise SlowMachine(f"the closed-loop floor's p50 is {p50:.3f} ms, above --max-floor-ms "
                          f"{max_ms:g}: the machine is in a slow phase; no report written")
    return p50


def _cpus(text: str) -> list[int]:
    return [int(c) for c in text.split(",") if c.strip()]


# --- workload -----------------------------------------------------------------------------------


def checkpoint_facts(models_dir: Path, models: list[str]) -> dict:
    """max_len and the item ids every model knows, read from the checkpoints themselves."""
    from model.checkpoint import load  # torch: only the runner pays for it, never locust

    max_lens, vocab, versions = [], None, {}
    for name in models:
        ckpt = load(models_dir / name)
        max_lens.append(int(ckpt.config.max_len))
        versions[name] = ckpt.version
        known = set(ckpt.vocab.external_ids)
        vocab = known if vocab is None else vocab & known
    return {"max_len": min(max_lens), "items": vocab, "versions": versions}


def prepare_run_dir(run_dir: Path, fresh: bool, versions: dict) -> None:
    """Saved steps are reused only for the same checkpoints: new versions start the run afresh."""
    stamp = run_dir / "checkpoints.json"
    if run_dir.exists() and not fresh and stamp.exists():
        if json.loads(stamp.read_text()) != versions:
            print(f"{run_dir}: checkpoints changed since the saved steps; starting afresh")
            fresh = True
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(versions))


def ensure_workload(run_dir: Path, args, mode, facts: dict) -> Path:
    path = run_dir / "workload.json"
    if path.exists():
        return path
    from model.data import build_dataset, load_dataset

    sequences = dataset_sequences(build_dataset(load_dataset(args.dataset)), facts["items"])
    specs = default_specs(facts["max_len"], plan.users_needed(mode))
    save_workload(build_workload(sequences, specs, args.dataset, synthetic=False), path)
    return path


# --- servers ------------------------------------------------------------------------------------


def served_models_dir(run_dir: Path, models_dir: Path, models: list[str],
                      name: str = "served_models") -> Path:
    """A directory of links to just the compared checkpoints: the server loads every checkpoint
    it finds and /events extends a cache per loaded model, so extra models would skew /events."""
    served = run_dir / name
    shutil.rmtree(served, ignore_errors=True)
    served.mkdir(parents=True)
    for name in models:
        (served / name).symlink_to((models_dir / name).resolve(), target_is_directory=True)
    return served


class Servers:
    """The real server and the empty floor app, started once for the whole run."""

    def __init__(self, args, run_dir: Path, models: list[str]):
        self.args, self.logs = args, run_dir / "logs"
        self.models_dir = served_models_dir(run_dir, args.models_dir, models)
        self.default_model = models[0]
        self.server_port, self.empty_port = procs.free_port(), procs.free_port()
        self.server = self.empty = self.solo = None
        self.run_dir, self.solo_port = run_dir, procs.free_port()

    def url(self, target: str) -> str:
        port = {"server": self.server_port, "solo": self.solo_port}.get(target, self.empty_port)
        return f"http://127.0.0.1:{port}"

    def _spawn_server(self, models_dir: Path, default_model: str, port: int, log_name: str):
        env = procs.single_thread_env({
            "PLR_MODELS_DIR": str(models_dir),
            "PLR_DEFAULT_MODEL": default_model,
            "PLR_TORCH_THREADS": "1",
            "PLR_DEVICE": "cpu",
            "PLR_HOST": "127.0.0.1",
            "PLR_PORT": str(port),
            "PLR_LOG_LEVEL": "warning",
            # Built before the run (build_graphs): a build during a step would compete for the core.
            "PLR_COMPILE": "load",
            "PLR_COMPILED_DIR": str(self.args.compiled_dir),
        })
        env.pop("REDIS_URL", None)  # the embedded Redis, started by the server on its core
        return procs.spawn(self.args.server_cmd.split(), self.logs / log_name, env,
                           _cpus(self.args.server_cpus))

    def start(self):
        cpus = _cpus(self.args.server_cpus)
        self.server = self._spawn_server(self.models_dir, self.default_model, self.server_port,
                                         "server.log")
        empty_cmd = procs.uvicorn_cmd("loadtest.empty_app:app", self.empty_port)
        self.empty = procs.spawn(
            empty_cmd, self.logs / "empty.log", procs.single_thread_env(), cpus
        )
        procs.wait_ready(self.url("server") + "/readyz", self.server, self.logs / "server.log")
        procs.wait_ready(self.url("empty") + "/readyz", self.empty, self.logs / "empty.log")

    def start_solo(self, model: str) -> str:
        """A second server that serves `model` alone (a deployment of just that model: /events
        advances one model, not every compared one), on the same CPUs; its URL."""
        models_dir = served_models_dir(self.run_dir, self.args.models_dir, [model], "served_solo")
        self.solo = self._spawn_server(models_dir, model, self.solo_port, "server_solo.log")
        procs.wait_ready(self.url("solo") + "/readyz", self.solo, self.logs / "server_solo.log")
        return self.url("solo")

    def stop_solo(self):
        if self.solo is not None:
            procs.stop(self.solo)
            self.solo = None

    def check_alive(self):
        for name, proc in (("server", self.server), ("empty", self.empty)):
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.logs}")

    def stop(self):
        self.stop_solo()
        procs.stop(self.server)
        procs.stop(self.empty)

    def metrics(self) -> str:
        status, text = procs.http_get(self.url("server") + "/metrics")
        return text if status == 200 else ""

    def models(self) -> dict:
        status, text = procs.http_get(self.url("server") + "/models")
        return json.loads(text) if status == 200 else {}

    def malloc(self) -> str:
        """The server process's malloc: `python -m server` restarts itself on jemalloc where
        the machine has it (model/allocator.py), and the report says which one ran."""
        try:
            maps = Path(f"/proc/{self.server.pid}/maps").read_text()
        except OSError:
            return "unknown"
        return "jemalloc" if "libjemalloc" in maps else "system"


# --- steps --------------------------------------------------------------------------------------


def run_step(
    step: Step, servers: Servers, workload: Path, run_dir: Path, args, run_id: str
) -> dict:
    raw = run_dir / "raw" / step.name
    raw.parent.mkdir(parents=True, exist_ok=True)
    lt_args = {
        "workload": workload,
        "pool": step.pool,
        "model": step.model or "",
        "rate": step.rate,
        "warmup": step.warmup_s,
        "measure": step.measure_s,
        "drain": DRAIN_S,
        "events_share": step.events_share,
        "cache": step.cache,
        "users": step.users,
        "prime": "on" if step.prime else "off",
        # user ids must match the API's pattern: an interleaved step's "+" becomes "."
        "namespace": f"{run_id}-{step.name}".replace("+", "."),
        "out": f"{raw}_requests.csv",
        "alternate": ",".join(step.alternate),
        "slice": step.slice_s,
    }
    run_time = step.warmup_s + step.measure_s + DRAIN_S + 60  # backstop; the user quits itself
    cmd = procs.locust_cmd(servers.url(step.target), raw, run_time, lt_args)
    before = servers.metrics() if step.target == "server" else ""
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    proc = procs.spawn(
        cmd, Path(f"{raw}_locust.log"), procs.single_thread_env(), _cpus(args.locust_cpus)
    )
    procs.wait_or_stop(proc, run_time + 30)  # a timeout: the requests CSV check reports it
    servers.check_alive()
    after = servers.metrics() if step.target == "server" else ""
    if before and after:  # kept with the raw requests: what the step's tables were made of
        Path(f"{raw}_metrics_before.prom").write_text(before)
        Path(f"{raw}_metrics_after.prom").write_text(after)
    if not Path(f"{raw}_requests.csv").exists():
        raise RuntimeError(f"step {step.name}: locust wrote no results; see {raw}_locust.log")
    rows = read_request_rows(f"{raw}_requests.csv")
    summary = summarize_step(rows, step.rate, step.measure_s, step.warmup_s)
    return {
        "step": step.to_dict(),
        "summary": summary,
        "wall_s": round(time.monotonic() - started, 2),
        "loadavg_1m": [load_before, os.getloadavg()[0]],  # other processes competing for the cores
        "passes_slo": passes_slo(summary, args.slo_ms),
        "locust": parse_locust_stats(f"{raw}_stats.csv"),
        "stages": prom.stage_table(before, after) if before and after else [],
        "counters": prom.counter_deltas(before, after) if before and after else [],
    }


class StepRunner:
    """Runs a step or loads its saved result (resumable runs)."""

    def __init__(self, servers, workload, run_dir, args, run_id):
        self.servers, self.workload, self.run_dir, self.args = servers, workload, run_dir, args
        self.run_id, self.results, self.reused = run_id, [], 0

    def __call__(self, step: Step) -> dict:
        """Run (or load) a step."""
        path = self.run_dir / "steps" / f"{step.name}.json"
        if path.exists():
            result = json.loads(path.read_text())
            self.reused += 1
        else:
            result = run_step(
                step, self.servers, self.workload, self.run_dir, self.args, self.run_id
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=1))
        self.results.append(result)
        _progress(result)
        return result

    def interleave(self, steps: list[Step]) -> list[dict]:
        """`steps` (one rate, several models) run as one interleaved step (plan.interleaved) and
        split back into one result per model; each is loaded instead where already saved.

        Where any model fails the SLO, the rate is measured again one model at a time
        (plan.alone) and those results count: a model that falls behind carries its backlog into
        the others' turns (2026-12-01, 1280 req/s: SASRec's p99 165 ms in turns with an
        overloaded PLR; it had passed that rate in the run before, ABBA in halves)."""
        paths = [self.run_dir / "steps" / f"{step.name}.json" for step in steps]
        loaded = all(path.exists() for path in paths)
        if loaded:
            results = [json.loads(path.read_text()) for path in paths]
        else:
            joint = plan.interleaved(steps)
            joint_path = self.run_dir / "steps" / f"{joint.name}.json"
            if joint_path.exists():  # run, but stopped before its split was saved
                joint_result = json.loads(joint_path.read_text())
            else:
                joint_result = run_step(
                    joint, self.servers, self.workload, self.run_dir, self.args, self.run_id
                )
                joint_path.parent.mkdir(parents=True, exist_ok=True)
                joint_path.write_text(json.dumps(joint_result, indent=1))
            results = split_interleaved(joint, steps, joint_result, self.run_dir,
                                        self.args.slo_ms)
            for path, result in zip(paths, results):
                path.write_text(json.dumps(result, indent=1))
        if not all(result["passes_slo"] for result in results):
            for result in results:
                _progress(result, "interleaved, not counted: ")
            return [self(plan.alone(step)) for step in steps]
        self.reused += len(results) if loaded else 0
        self.results += results
        for result in results:
            _progress(result)
        return results


def split_interleaved(joint: Step, steps: list[Step], joint_result: dict, run_dir: Path,
                      slo_ms: float) -> list[dict]:
    """One result per model of an interleaved step: that model's requests (the CSV's model
    column), its rates per second of its own slices, and the server's stage and counter rows
    of the shared window less those labelled with another of the models."""
    rows = read_request_rows(run_dir / "raw" / f"{joint.name}_requests.csv")
    share = 1 / len(steps)
    names = [step.model for step in steps]
    blocks = interleaved_blocks(rows, names, "/recommend", joint.slice_s)
    out = []
    for step in steps:
        others = {f"model={s.model}" for s in steps if s.model != step.model}

        def mine(table: list[dict]) -> list[dict]:
            return [row for row in table if not others & set(row["labels"].split(","))]

        summary = summarize_step([r for r in rows if r["model"] == step.model], step.rate,
                                 joint.measure_s, joint.warmup_s, share)
        out.append({
            "step": step.to_dict() | {"interleaved": joint.name},
            "summary": summary,
            "wall_s": round(joint_result["wall_s"] * share, 2),
            "loadavg_1m": joint_result["loadavg_1m"],
            "passes_slo": passes_slo(summary, slo_ms),
            "locust": joint_result["locust"],  # the whole step's (a cross-check of the totals)
            "stages": mine(joint_result["stages"]),
            "counters": mine(joint_result["counters"]),
            # this model's /recommend p50 over each other's: 95 % bootstrap interval over turns
            "ratio_ci": {other: {"/recommend_p50": ratio_ci(blocks, step.model, other)}
                         for other in names if other != step.model},
        })
    return out


def _progress(result: dict, prefix: str = ""):
    s, steady = result["summary"], result["summary"]["by_name"].get("steady", {})
    print(
        f"{prefix}{result['step']['name']:<34} offered {s['offered_rate']:>6g}/s achieved "
        f"{s['achieved_rate'] or 0:>7.1f}/s p50 {_ms(steady.get('p50'))} "
        f"p99 {_ms(steady.get('p99'))} "
        f"errors {s['errors']} {'PASS' if result['passes_slo'] else 'fail'}",
        flush=True,
    )


def _ms(value) -> str:
    return f"{value:7.2f}ms" if value is not None else "      -  "


def run_ladder(run, mode, models: list[str], target: str, rates, interleave=None) -> None:
    """Every model still on the ladder runs each rate; a model leaves it after two failures in a
    row (one hiccup in a short step does not end it; goodput still stops at the first failure).

    With `interleave` (the runner's), two or more models still on the ladder run a rate as one
    interleaved step, `interleave(steps) -> results` (plan.interleaved): the models' ratio at a
    rate then does not ride on whichever ran while the machine drifted."""
    failures = dict.fromkeys(models, 0)
    for rate in rates:
        active = [m for m in models if failures[m] < 2]
        steps = [plan.ladder_step(mode, model, rate, target) for model in active]
        if interleave is not None and len(steps) > 1:
            results = interleave(steps)
        else:
            results = [run(step) for step in steps]
        for model, result in zip(active, results):
            failures[model] = 0 if result["passes_slo"] else failures[model] + 1
        if all(count >= 2 for count in failures.values()):
            return


def machine_speed(args) -> dict | None:
    """`loadtest.cpu_probe`'s speed stamp on the server's first CPU (None if it fails: a report
    says "not recorded" rather than the run dying for a diagnostic)."""
    cpus = _cpus(args.server_cpus)
    cmd = [sys.executable, "-m", "loadtest.cpu_probe", "--stamp", str(SPEED_UNITS),
           "--cpu", str(cpus[0] if cpus else 0)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=procs.REPO,
                          env=procs.single_thread_env(), check=False)
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        print(f"machine speed stamp failed: {done.stderr[-500:]}", file=sys.stderr)
        return None


def build_graphs(args, models_dir: Path) -> None:
    """Compiled graphs of the served models, built now (minutes, once per model version)."""
    cmd = [sys.executable, "-m", "model.inference.compiled", "--models-dir", str(models_dir),
           "--out", str(args.compiled_dir)]
    print("building compiled graphs (skipped where present):", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=procs.REPO, env=procs.single_thread_env(),
                   stdout=subprocess.DEVNULL)


def saved_section(run_dir: Path, name: str, measure) -> dict:
    """A section saved like a step: `measure()` once, its result kept in run_dir/steps/<name>.json
    and reused by a rerun of the same plan and checkpoints (unless --fresh)."""
    path = run_dir / "steps" / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    result = measure()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


def run_sequential(servers: Servers, workload: dict, models: list[str], mode,
                   run_dir: Path) -> dict:
    """The closed-loop section."""
    def measure() -> dict:
        rounds, round_s = (5, 4.0) if mode.measure_s >= 30 else (2, 2.0)
        load_before = os.getloadavg()[0]
        solo = servers.start_solo(models[0]) if len(models) > 1 else None
        try:
            result = sequential.run(servers.url("server"), servers.url("empty"), workload,
                                    models, rounds=rounds, round_s=round_s,
                                    metrics=servers.metrics, solo_url=solo)
        finally:
            servers.stop_solo()  # the ladder and the other steps run against the one server
        result["loadavg_1m"] = [load_before, os.getloadavg()[0]]
        for row in result["rows"]:
            print(f"sequential c={row['concurrency']} {row['route']:<10} {row['target']:<8} "
                  f"p50 {_ms(row['p50_ms'])} p99 {_ms(row['p99_ms'])} "
                  f"x floor {row['vs_floor_p50'] or 0:5.2f}", flush=True)
        return result

    return saved_section(run_dir, "sequential", measure)


def run_cpu_cost(servers: Servers, workload: dict, models: list[str], mode,
                 run_dir: Path) -> dict:
    """CPU per request per model and route (loadtest/cpu_cost.py)."""
    def measure() -> dict:
        rounds, round_s = (30, 1.0) if mode.measure_s >= 30 else (6, 0.5)
        load_before = os.getloadavg()[0]
        result = cpu_cost.measure(servers.url("server"), servers.server.pid,
                                  servers.url("empty"), servers.empty.pid, workload, models,
                                  rounds, round_s)
        result["loadavg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        for pair, by_route in result["ratios"].items():
            print(f"cpu per request {pair}: events {by_route['/events'][1]:.3f}, recommend "
                  f"{by_route['/recommend'][1]:.3f}", flush=True)
        return result

    return saved_section(run_dir, "cpu_cost", measure)


def run_plan(run: StepRunner, mode, models: list[str], groups: set[str]) -> None:
    if "ladder" in groups:
        run_ladder(run, mode, models, "server", mode.ladder, interleave=run.interleave)
    if "cache" in groups:
        for step in plan.cache_steps(mode, models):
            run(step)
    if "length" in groups:
        for step in plan.length_steps(mode, models[0], "len10", "len190"):
            run(step)
    if "floor" in groups:
        run_ladder(run, mode, [None], "empty", mode.floor)


def stop_on_term() -> None:
    """SIGTERM (quiet.sh passing on its own, `timeout`, a session that ends) exits through the
    `finally` below, so the server, its Redis and the floor app stop with the run instead of
    outliving it on the benchmark's CPUs. Once: a second SIGTERM (`pkill` reaching both quiet.sh,
    which passes its own on, and the runner) arrived while the cleanup was stopping the server
    and cut it short, and the floor app outlived the run (2026-12-02)."""

    def leave(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the cleanup runs to its end
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, leave)


def main(argv=None):
    args = parse_args(argv)
    mode = MODES[args.mode]
    models = [m for m in args.models.split(",") if m]
    run_dir = args.run_dir or procs.REPO / "runs" / "loadtest" / args.mode
    facts = checkpoint_facts(args.models_dir, models)
    prepare_run_dir(run_dir, args.fresh, facts["versions"])
    workload_path = ensure_workload(run_dir, args, mode, facts)
    workload = json.loads(workload_path.read_text())
    run_id = time.strftime("%H%M%S")
    servers = Servers(args, run_dir, models)
    stop_on_term()
    started = time.monotonic()
    groups = set(args.groups.split(","))
    seq = cpu = None
    try:
        build_graphs(args, servers.models_dir)
        speed = {"before": machine_speed(args)}
        servers.start()
        server_models = servers.models()
        server_malloc = servers.malloc()
        if "sequential" in groups:
            seq = run_sequential(servers, workload, models, mode, run_dir)
            try:
                check_floor(seq, args.max_floor_ms)
            except SlowMachine as slow:
                (run_dir / "steps" / "sequential.json").unlink()  # a rerun measures again
                sys.exit(f"stopped: {slow}")
        if "cpu" in groups:
            cpu = run_cpu_cost(servers, workload, models, mode, run_dir)
        run = StepRunner(servers, workload_path, run_dir, args, run_id)
        run_plan(run, mode, models, groups)
    finally:
        servers.stop()
    speed["after"] = machine_speed(args)
    context = report.run_context(
        args,
        mode,
        models,
        facts["max_len"],
        workload,
        server_models,
        time.monotonic() - started,
        argv if argv is not None else sys.argv[1:],
        run_dir,
    )
    context["steps"] = {"run": len(run.results) - run.reused, "reused": run.reused,
                        "steps_wall_s": round(sum(r.get("wall_s", 0) for r in run.results), 1)}
    context["sequential"] = seq
    context["cpu_cost"] = cpu
    context["server_malloc"] = server_malloc
    context["machine_speed"] = speed
    out = report.write_report(run.results, context, args.docs, args.slo_ms)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
