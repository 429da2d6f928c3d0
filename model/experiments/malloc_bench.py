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
import subprocess
import sys
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


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--out", type=Path, default=Path("docs/training-memory.md"))
    args = parser.parse_args(argv)
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
