"""Training on the system malloc against jemalloc, side by side: CPU per epoch, memory, faults.

`python -m model.experiments.malloc_bench` trains the same run (default: PLR's recipe on
ml-latest-small, seed 2020, the run whose memory crept in the queue) for --epochs full epochs
twice at once, each in a fresh subprocess pinned to a CPU of its own: once on the system malloc
(with `model.train`'s glibc tuning, as every run before model/allocator.py), once with jemalloc
preloaded under `allocator.JEMALLOC_CONF`. After every epoch each records its CPU seconds, page
faults and resident memory (the moment `train` hands freed memory back); at the end, a digest of
the final weights. Writes docs/training-memory.md and .json with the hardware, date and load.
Run it on a quiet machine (`QUIET_PIDS_FILE=F loadtest/quiet.sh python -m ...malloc_bench`).
Both runs share the machine's drift (same minutes, one core each); an epoch's CPU time is what a
queue worker pays for it. ValueError when the machine has no jemalloc.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from ..allocator import find_jemalloc, with_jemalloc
from .hardware import hardware

# Runs in a subprocess: trains, reporting after every epoch (JSON lines on stdout).
WORKER = r"""
import hashlib, json, resource, sys, time
import model.train as training
from model.allocator import jemalloc_active
from model.config import ModelConfig
from model.train import TrainConfig
dataset_spec, k_core, fields, epochs, seed = json.loads(sys.argv[1])
release = training.release_freed_memory


def after_epoch():  # model.train calls this once per epoch on CPU
    usage = resource.getrusage(resource.RUSAGE_SELF)
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    print(json.dumps({"cpu_s": usage.ru_utime + usage.ru_stime, "minor_faults": usage.ru_minflt,
                      "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
                      "peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024,
                      "wall_s": time.perf_counter()}), flush=True)
    return release()


training.release_freed_memory = after_epoch
dataset, split = training.load_data(dataset_spec, k_core=k_core)
cfg = ModelConfig(n_items=dataset.n_items, **fields)
tc = TrainConfig(epochs=epochs, patience=epochs, min_epochs=0, batch_size=256, progress=False,
                 num_threads=1, seed=seed)
model, metrics = training.train(cfg, tc, dataset, split)
digest = hashlib.sha256()
for name, tensor in sorted(model.state_dict().items()):
    digest.update(name.encode() + tensor.detach().contiguous().numpy().tobytes())
print(json.dumps({"weights_sha256": digest.hexdigest(), "jemalloc": jemalloc_active(),
                  "valid_history": [h["valid"] for h in metrics["history"]]}), flush=True)
"""

# Runs in a subprocess: one event's engine work as the server does it (compiled graphs, one
# thread): a user with a 40-item cache gets one more item (`Engine.advance`: cache extended,
# state computed), and the append graph alone; the best of 5 repetitions of 1000 calls each, so
# a short disturbance of the machine does not count.
SERVING_WORKER = r"""
import json, sys, time, torch
from pathlib import Path
from model.allocator import jemalloc_active
from model.checkpoint import load
from model.inference import Advance, Engine
from model.inference.compiled import load_graphs
torch.set_num_threads(1)
models_dir, compiled_dir, names = sys.argv[1], sys.argv[2], sys.argv[3].split(",")


def best_us(fn, calls=1000, reps=5):
    for _ in range(200):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return min(times)


out = {"jemalloc": jemalloc_active()}
with torch.inference_mode():
    for name in names:
        checkpoint = load(Path(models_dir) / name)
        engine = Engine(checkpoint.model, checkpoint.version)
        graphs = load_graphs(checkpoint.model, checkpoint.version, Path(compiled_dir))
        engine.attach_graphs(graphs)
        ((cache, state),) = engine.advance([Advance(list(range(1, 41)))])
        step = Advance([41], cache, state.seen)
        seen = torch.arange(1, 41)
        out[name] = {"advance_us": best_us(lambda: engine.advance([step])),
                     "graph_us": best_us(lambda: graphs.run_append1(cache.rows, 41, seen))}
print(json.dumps(out))
"""

RUN = {"dataset": "ml-latest-small", "k_core": 5,
       "model": {"kind": "plr", "dropout": 0.2, "n_streams": 2, "n_steps": 2, "rcl_weight": 0.1}}
ALLOCATORS = ("system", "jemalloc")


def start(allocator: str, args, cpu: int | None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    env = {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    env = with_jemalloc(env) if allocator == "jemalloc" else {**env, "PLR_JEMALLOC": ""}
    argv = [sys.executable, "-c", WORKER,
            json.dumps([RUN["dataset"], RUN["k_core"], RUN["model"], args.epochs, args.seed])]
    pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, preexec_fn=pin)


def collect(proc: subprocess.Popen, name: str) -> dict:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the {name} run failed:\n{err[-3000:]}")
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    epochs, final = lines[:-1], lines[-1]
    previous = {"cpu_s": 0.0, "minor_faults": 0}
    rows = []
    for i, e in enumerate(epochs, start=1):
        rows.append({"epoch": i, "cpu_s": e["cpu_s"] - previous["cpu_s"],
                     "minor_faults": e["minor_faults"] - previous["minor_faults"],
                     "rss_mb": e["rss_mb"], "peak_rss_mb": e["peak_rss_mb"]})
        previous = e
    return {"epochs": rows, **final}


def summarize(runs: dict) -> dict:
    """Per allocator: mean CPU s and faults per epoch after the first (its start-up and first
    touch of every page differ from the steady state), peak and last resident memory."""
    out = {}
    for name, run in runs.items():
        steady = run["epochs"][1:] or run["epochs"]
        out[name] = {
            "cpu_s_per_epoch": sum(e["cpu_s"] for e in steady) / len(steady),
            "faults_per_epoch": sum(e["minor_faults"] for e in steady) / len(steady),
            "rss_first_mb": run["epochs"][0]["rss_mb"], "rss_last_mb": run["epochs"][-1]["rss_mb"],
            "peak_rss_mb": run["epochs"][-1]["peak_rss_mb"],
        }
    s, j = out["system"], out["jemalloc"]
    out["cpu_ratio"] = j["cpu_s_per_epoch"] / s["cpu_s_per_epoch"]
    out["same_weights"] = runs["system"]["weights_sha256"] == runs["jemalloc"]["weights_sha256"]
    return out


def render(report: dict) -> str:
    s, hw, runs = report["summary"], report["hardware"], report["runs"]
    model = ", ".join(f"{k} {v}" for k, v in RUN["model"].items())
    lines = [
        "# Training memory and CPU: the system malloc against jemalloc", "",
        f"Written by `{report['command']}` on {report['date']}. Hardware: {hw['cpu']}, "
        f"{hw['cores']} cores, torch {hw['torch']}, Python {hw['python']}; the two runs at once, "
        "each pinned to a CPU of its own, one torch thread each. Load average before / after: "
        f"{' '.join(f'{x:.2f}' for x in report['loadavg_before'])} / "
        f"{' '.join(f'{x:.2f}' for x in report['loadavg_after'])}.", "",
        f"Run: {RUN['dataset']} (k-core {RUN['k_core']}), {model}, batch 256, seed "
        f"{report['seed']}, {report['epochs']} full epochs. *system*: glibc's malloc with "
        "`model.train.keep_freed_memory` (no mmap, no trim inside an epoch) and "
        "`release_freed_memory` after each epoch, as every run before model/allocator.py; "
        f"*jemalloc*: `{report['jemalloc']}` preloaded, `MALLOC_CONF={report['malloc_conf']}`.",
        "",
        "| malloc | CPU s / epoch | page faults / epoch | resident after epoch 1 | resident "
        "after the last | peak resident |",
        "|---|---|---|---|---|---|",
    ]
    for name in ALLOCATORS:
        r = s[name]
        lines.append(f"| {name} | {r['cpu_s_per_epoch']:.1f} | {r['faults_per_epoch'] / 1e6:.2f} M "
                     f"| {r['rss_first_mb'] / 1024:.2f} GB | {r['rss_last_mb'] / 1024:.2f} GB | "
                     f"{r['peak_rss_mb'] / 1024:.2f} GB |")
    lines += [
        "", f"jemalloc / system CPU per epoch: **{s['cpu_ratio']:.2f}** (epochs 2 to "
        f"{report['epochs']}; the first holds start-up). Final weights "
        + ("**identical** bit for bit (sha256 of every tensor)" if s["same_weights"]
           else "**differ** (sha256 of every tensor)") + ".", "",
        "Per epoch (resident memory at the end of the epoch, just before `train` hands freed "
        "memory back: *system* trims there; peak: the most resident so far):", "",
        "| epoch | system CPU s | jemalloc CPU s | system faults | jemalloc faults | system "
        "resident | jemalloc resident | system peak | jemalloc peak |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for a, b in zip(runs["system"]["epochs"], runs["jemalloc"]["epochs"]):
        lines.append(f"| {a['epoch']} | {a['cpu_s']:.1f} | {b['cpu_s']:.1f} | "
                     f"{a['minor_faults'] / 1e6:.2f} M | {b['minor_faults'] / 1e6:.2f} M | "
                     f"{a['rss_mb'] / 1024:.2f} GB | {b['rss_mb'] / 1024:.2f} GB | "
                     f"{a['peak_rss_mb'] / 1024:.2f} GB | {b['peak_rss_mb'] / 1024:.2f} GB |")
    lines += [
        "", "Why (model/allocator.py): a step frees and reallocates large activations whose sizes "
        "vary from batch to batch; glibc's heap fragments around them, so its peak grows epoch "
        "after epoch and each epoch faults pages in again after the trim; jemalloc's size "
        "classes reuse freed extents. The experiment queue starts its workers on jemalloc "
        "where the machine has one.", "",
    ]
    return "\n".join(lines)


def serving_env(allocator: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    env = {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    return with_jemalloc(env, conf=None) if allocator == "jemalloc" else {**env, "PLR_JEMALLOC": ""}


def time_serving(args, cpu: int | None) -> list[dict]:
    """`args.rounds` rounds, each one fresh process per allocator in ABBA order (so neither
    always runs first), one at a time on `cpu`; one row per process."""
    rows = []
    for r in range(args.rounds):
        for allocator in (ALLOCATORS if r % 2 == 0 else ALLOCATORS[::-1]):
            pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
            done = subprocess.run([sys.executable, "-c", SERVING_WORKER, str(args.models_dir),
                                   str(args.compiled_dir), ",".join(args.models)],
                                  capture_output=True, text=True, env=serving_env(allocator),
                                  preexec_fn=pin, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"serving timing on {allocator} failed:\n{done.stderr[-3000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            if row.pop("jemalloc") != (allocator == "jemalloc"):
                raise RuntimeError(f"a {allocator} process did not get that malloc")
            rows.append({"round": r + 1, "malloc": allocator, **row})
    return rows


def summarize_serving(rows: list[dict], models: list[str]) -> dict:
    """Median over processes of each timing, per model and allocator; jemalloc / system."""
    out = {}
    for model in models:
        for measure in ("advance_us", "graph_us"):
            med = {a: statistics.median(r[model][measure] for r in rows if r["malloc"] == a)
                   for a in ALLOCATORS}
            out[f"{model}/{measure}"] = {**med, "ratio": med["jemalloc"] / med["system"]}
    return out


def render_serving(report: dict) -> str:
    s, hw = report["summary"], report["hardware"]
    lines = [
        "# Serving: the system malloc against jemalloc", "",
        f"Written by `{report['command']}` on {report['date']}. Hardware: {hw['cpu']}, "
        f"{hw['cores']} cores, torch {hw['torch']}, Python {hw['python']}; one process at a time "
        "pinned to one CPU, one torch thread. Load average before / after: "
        f"{' '.join(f'{x:.2f}' for x in report['loadavg_before'])} / "
        f"{' '.join(f'{x:.2f}' for x in report['loadavg_after'])}.", "",
        "## The engine alone", "",
        "One event's engine work as the server does it, on the default checkpoints "
        f"({', '.join(f'{m} {v}' for m, v in report['versions'].items())}) and their compiled "
        "graphs: a user whose cache holds 40 items gets one more (`Engine.advance`: the cache "
        "extended and the precomputed state made, the compiled append graph inside), and the "
        "append graph alone. Each process: the best of 5 repetitions of 1000 calls, in "
        f"microseconds per call; {report['rounds']} rounds, each a fresh process per malloc in "
        f"ABBA order. *jemalloc*: `{report['jemalloc']}` preloaded (its default settings, as "
        "`python -m server` starts it); *system*: glibc's malloc.", "",
        "| model | measure | system (median) | jemalloc (median) | jemalloc / system |",
        "|---|---|---|---|---|",
    ]
    for key, v in s.items():
        model, measure = key.split("/")
        label = {"advance_us": "Engine.advance, one event", "graph_us": "append graph"}[measure]
        lines.append(f"| {model} | {label} | {v['system']:.1f} | {v['jemalloc']:.1f} | "
                     f"**{v['ratio']:.2f}** |")
    lines += ["", "Every process:", "", "| round | malloc | "
              + " | ".join(f"{m} advance | {m} graph" for m in report["models"]) + " |",
              "|---|---|" + "---|---|" * len(report["models"])]
    for r in report["rows"]:
        lines.append(f"| {r['round']} | {r['malloc']} | " + " | ".join(
            f"{r[m]['advance_us']:.1f} | {r[m]['graph_us']:.1f}" for m in report["models"]) + " |")
    if report.get("http"):
        lines += ["", "## Over HTTP, both servers in the same run", "",
                  "Two `python -m server` processes at once, each with its own embedded Redis, all "
                  "pinned to one CPU; the closed-loop client on the other. One on the system "
                  "malloc (`PLR_JEMALLOC=\"\"`), one on jemalloc (the default where installed); "
                  f"each holds {report['http_users']} stored users with real ml-100k histories of "
                  "max_len items and a cache and state per model. /events appends one item of the "
                  "user's real future (every served model advances); /recommend is by user_id "
                  f"({report['models'][0]}, answered from the stored state). The four targets take "
                  f"turns, {report['http_rounds']} rounds of 4 s each per concurrency.", "",
                  "| route | c | system p50 ms | jemalloc p50 ms | jemalloc / system p50 | system "
                  "p99 ms | jemalloc p99 ms | requests (system, jemalloc) | errors |",
                  "|---|---|---|---|---|---|---|---|---|"]
        by = {(r["route"], r["concurrency"], r["malloc"]): r for r in report["http"]}
        for route, c in dict.fromkeys((r["route"], r["concurrency"]) for r in report["http"]):
            a, b = by[(route, c, "system")], by[(route, c, "jemalloc")]
            lines.append(f"| {route} | {c} | {a['p50_ms']:.3f} | {b['p50_ms']:.3f} | "
                         f"**{b['p50_ms'] / a['p50_ms']:.2f}** | {a['p99_ms']:.3f} | "
                         f"{b['p99_ms']:.3f} | {a['n']}, {b['n']} | {a['errors'] + b['errors']} |")
    lines += ["", "Why: see model/allocator.py. The engine rows are a request's model work on an "
              "otherwise idle core; the HTTP rows are the whole request path, side by side (the "
              "VM's speed drifts: compare within a table, not with other reports).", ""]
    return "\n".join(lines)


def http_ab(args) -> list[dict]:
    """Both servers at once (`python -m server`, each with its own embedded Redis, both pinned
    to the first CPU with their Redis; this client on the last): one on the system malloc
    (PLR_JEMALLOC=""), one on jemalloc; stored users with real histories of max_len items
    (ml-100k) on each, then closed-loop /events (one item of the user's real future; every
    served model advances) and /recommend by user_id (the first model), the four targets taking
    turns round by round (`loadtest.closed_loop.measure`). One row per (route, malloc, c)."""
    from loadtest import procs  # the load-test harness: only this measurement needs it
    from loadtest.closed_loop import Target, measure, percentile
    from loadtest.runner import checkpoint_facts
    from loadtest.sequential import N_USERS, _bodies, prepare_users
    from loadtest.workload import PoolSpec, build_workload, dataset_sequences

    from ..data import build_dataset, load_dataset

    cpus = sorted(os.sched_getaffinity(0))
    facts = checkpoint_facts(Path(args.models_dir), args.models)
    sequences = dataset_sequences(build_dataset(load_dataset("ml-100k")), facts["items"])
    pool = build_workload(sequences, [PoolSpec("near_max", facts["max_len"], n_users=N_USERS,
                                               n_future=16, zipf_s=0.0)],
                          "ml-100k", synthetic=False)["pools"]["near_max"]
    servers, rows = {}, []
    with tempfile.TemporaryDirectory() as logs:
        try:
            for allocator in ALLOCATORS:
                port = procs.free_port()
                env = procs.single_thread_env({
                    "PLR_MODELS_DIR": str(args.models_dir), "PLR_DEFAULT_MODEL": args.models[0],
                    "PLR_TORCH_THREADS": "1", "PLR_DEVICE": "cpu", "PLR_HOST": "127.0.0.1",
                    "PLR_PORT": str(port), "PLR_LOG_LEVEL": "warning", "PLR_COMPILE": "load",
                    "PLR_COMPILED_DIR": str(args.compiled_dir),
                    **({"PLR_JEMALLOC": ""} if allocator == "system" else {})})
                for key in ("REDIS_URL", "LD_PRELOAD", "MALLOC_CONF"):
                    env.pop(key, None)
                log = Path(logs) / f"{allocator}.log"
                server = procs.spawn([sys.executable, "-m", "server"], log, env, cpus[:1])
                servers[allocator] = (server, f"http://127.0.0.1:{port}")
                procs.wait_ready(servers[allocator][1] + "/readyz", server, log)
                maps = Path(f"/proc/{server.pid}/maps").read_text()
                if ("libjemalloc" in maps) != (allocator == "jemalloc"):
                    raise RuntimeError(f"the {allocator} server did not get that malloc")
            targets = []
            for allocator, (_, url) in servers.items():
                users = prepare_users(url, pool, args.models, "malloc")
                targets += [Target(f"/events|{allocator}", url, "/events",
                                   _bodies(users, "events")),
                            Target(f"/recommend|{allocator}", url, "/recommend",
                                   _bodies(users, "recommend", args.models[0]))]
            if len(cpus) >= 2:
                os.sched_setaffinity(0, {cpus[-1]})
            for c in args.concurrency:
                results = measure(targets, c, args.http_rounds, 4.0)
                for t in targets:
                    route, allocator = t.name.split("|")
                    lat = results[t.name].latencies
                    rows.append({"route": route, "malloc": allocator, "concurrency": c,
                                 "n": len(lat), "errors": results[t.name].errors,
                                 **{f"p{q}_ms": 1000 * percentile(lat, q) for q in (50, 90, 99)}})
        finally:
            os.sched_setaffinity(0, set(cpus))
            for server, _ in servers.values():
                procs.stop(server)
    return rows


def _http_users() -> int:
    from loadtest.sequential import N_USERS

    return N_USERS


def main_serving(args, argv) -> dict:
    library = find_jemalloc()
    if library is None:
        raise ValueError("no jemalloc on this machine (apt-get install libjemalloc2, or "
                         "PLR_JEMALLOC=/path/to/libjemalloc.so)")
    from ..checkpoint import load

    versions = {m: load(Path(args.models_dir) / m).version for m in args.models}
    loadavg_before = list(os.getloadavg())
    rows = time_serving(args, sorted(os.sched_getaffinity(0))[0])
    http = http_ab(args) if args.http_rounds > 0 else []
    report = {
        "command": "python -m model.experiments.malloc_bench "
                   + shlex.join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "hardware": hardware(), "rounds": args.rounds, "models": args.models,
        "versions": versions, "jemalloc": library, "http_rounds": args.http_rounds,
        "http_users": _http_users(), "loadavg_before": loadavg_before,
        "loadavg_after": list(os.getloadavg()), "rows": rows,
        "summary": summarize_serving(rows, args.models), "http": http,
    }
    out = args.out or Path("docs/serving-malloc.md")
    out.write_text(render_serving(report))
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    return report


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--serving", action="store_true",
                        help="time the serving engine instead (-> docs/serving-malloc.md)")
    parser.add_argument("--rounds", type=int, default=6, help="--serving: processes per malloc")
    parser.add_argument("--http-rounds", type=int, default=5,
                        help="--serving: rounds of 4 s per target of the HTTP side by side (0: skip)")
    parser.add_argument("--concurrency", type=lambda t: [int(c) for c in t.split(",")],
                        default=[1, 4], help="--serving: closed-loop connections, comma list")
    parser.add_argument("--models", type=lambda t: t.split(","), default=["plr", "sasrec"])
    parser.add_argument("--models-dir", type=Path, default=Path("artifacts/models"))
    parser.add_argument("--compiled-dir", type=Path, default=Path("artifacts/compiled"))
    parser.add_argument("--out", type=Path, default=None,
                        help="default docs/training-memory.md (docs/serving-malloc.md)")
    args = parser.parse_args(argv)
    if args.serving:
        return main_serving(args, argv)
    args.out = args.out or Path("docs/training-memory.md")
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is reported apart)")
    library = find_jemalloc()
    if library is None:
        raise ValueError("no jemalloc on this machine (apt-get install libjemalloc2, or "
                         "PLR_JEMALLOC=/path/to/libjemalloc.so)")
    cpus = sorted(os.sched_getaffinity(0))
    loadavg_before = list(os.getloadavg())
    # jemalloc's run gets the last CPU, where quiet.sh parks every other process: a disturbance
    # there slows the candidate, never the baseline it is compared with.
    pins = {"system": cpus[0], "jemalloc": cpus[-1]} if len(cpus) >= 2 else {}
    procs = {name: start(name, args, pins.get(name)) for name in ALLOCATORS}
    runs = {name: collect(proc, name) for name, proc in procs.items()}
    report = {
        "command": "python -m model.experiments.malloc_bench "
                   + shlex.join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "hardware": hardware(), "epochs": args.epochs, "seed": args.seed, "run": RUN,
        "jemalloc": library, "malloc_conf": with_jemalloc(dict(os.environ))["MALLOC_CONF"],
        "loadavg_before": loadavg_before, "loadavg_after": list(os.getloadavg()),
        "runs": runs,
    }
    if not runs["jemalloc"]["jemalloc"] or runs["system"]["jemalloc"]:
        raise RuntimeError("a run did not get the malloc it was started with")
    report["summary"] = summarize(runs)
    args.out.write_text(render(report))
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
