"""The resumable experiment queue: tuning candidates, the grid, width x depth and ablations.

`python -m model.experiments.queue --workers 2` runs every job that has no record yet, most
informative first (SASRec on ml-100k; PLR's tuning round, then PLR's ml-100k seeds; SASRec and
PLR on the other datasets; the ReaRec rounds and seeds; width x depth and the ablations on
ml-100k; the other datasets' ReaRec runs), in worker processes (one torch thread each, each its
own process group; each job trains in a child process of its worker). A job whose recipe is
not chosen yet waits; a job another worker holds (an flock under runs/locks/) is skipped. Each
finished run writes its record under docs/results/ (model/experiments/runs.py) and the reports
are rebuilt from the records; an interrupted run resumes from its last finished epoch
(runs/state/). Restart the same command on any machine with the committed records: it continues.
`--park [--commit]` copies the states of runs in flight into the repository (docs/results/parked/,
model/experiments/parked.py) before a machine goes away; the queue restores them when it starts.
`--list` prints the queue and each job's state without running anything.
Training runs on jemalloc where the machine has one (model/allocator.py; `apt-get install
libjemalloc2`): the command starts its workers (or itself) with it preloaded; PLR_JEMALLOC=""
keeps the system malloc.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

from ..allocator import exec_on_jemalloc, jemalloc_active, with_jemalloc
from ..train import load_data
from . import parked
from .recipes import TUNED, TUNING_DATASET, TUNING_SEED, candidates, chosen_candidate, recipe
from .runs import DATASETS, RESULTS_DIR, RunSpec, execute, read_record, split_facts, write_json

SEEDS = (2020, 2021, 2022)
MODELS = ("sasrec", "rearec-erl", "rearec-prl", "plr")
LOCK_DIR = Path("runs/locks")


@dataclass
class Job:
    id: str
    path: Path | None  # the record it writes; None: a placeholder for jobs not defined yet
    spec: Callable[[], RunSpec | None]  # None while the job waits for a recipe
    copy_from: Callable[[], Path | None] | None = None  # an equal run already recorded

    def done(self) -> bool:
        return self.path is not None and self.path.exists()


def grid_path(dataset: str, variant: str, seed: int) -> Path:
    return RESULTS_DIR / "runs" / dataset / variant / f"seed{seed}.json"


def grid_job(dataset: str, model: str, seed: int) -> Job:
    def spec():
        found = recipe(model)
        if found is None:
            return None
        return RunSpec(dataset, found[0], {**found[1], "seed": seed}, label=f"grid {model}")

    copy = None
    if dataset == TUNING_DATASET and seed == TUNING_SEED and model in TUNED:
        # The chosen tuning candidate IS this run (same data, config and seed): reuse it.
        def copy(model=model):
            chosen = chosen_candidate(model)
            return None if chosen is None else chosen.path
    return Job(f"{dataset}/{model}/seed{seed}", grid_path(dataset, model, seed), spec, copy)


def tuning_jobs(family: str) -> list[Job]:
    cands, complete = candidates(family)
    jobs = [Job(f"tuning/{family}/{c.id}", c.path,
                lambda c=c: RunSpec(TUNING_DATASET, c.model, {**c.train, "seed": TUNING_SEED},
                                    label=f"tuning {family} {c.id}",
                                    notes={"candidate": c.id, "based_on": c.based_on}))
            for c in cands]
    if not complete:  # round 2 starts from round 1's winner: not defined before it is known
        jobs.append(Job(f"tuning/{family}/round-2", None, lambda: None))
    return jobs


def analysis_jobs(seed: int) -> list[Job]:
    """Width x depth cells and ablations around PLR's chosen recipe on ml-100k."""
    from .analyses import analysis_cells, variant_name

    base = recipe("plr")
    if base is None:
        return [Job(f"analyses/seed{seed}", None, lambda: None)]
    jobs = []
    for fields in analysis_cells(base[0]).values():
        if fields == base[0]:
            continue  # the recipe itself: the grid's PLR run
        name = variant_name(fields)
        spec = RunSpec(TUNING_DATASET, fields, {**base[1], "seed": seed}, label=f"analysis {name}")
        jobs.append(Job(f"{TUNING_DATASET}/{name}/seed{seed}",
                        grid_path(TUNING_DATASET, name, seed), lambda spec=spec: spec))
    return list({j.id: j for j in jobs}.values())


def all_jobs() -> list[Job]:
    """Every job, most informative first (recomputed on each pick: recipes appear over time)."""
    first, *others = SEEDS
    jobs = [grid_job(TUNING_DATASET, "sasrec", s) for s in SEEDS]
    jobs += tuning_jobs("plr") + [grid_job(TUNING_DATASET, "plr", s) for s in SEEDS]
    # The question a user asks first, PLR or SASRec, answered on every dataset (every seed, the
    # first seed everywhere first) before the ReaRec baselines' tuning and seeds: hours that
    # change no PLR-vs-SASRec number.
    others_first = [grid_job(d, m, seed) for seed in SEEDS for d in DATASETS
                    if d != TUNING_DATASET for m in ("sasrec", "plr")]
    jobs += others_first
    listed = {j.id for j in others_first}
    jobs += tuning_jobs("rearec-erl") + tuning_jobs("rearec-prl")
    jobs += [grid_job(TUNING_DATASET, m, s) for m in ("rearec-erl", "rearec-prl") for s in SEEDS]
    jobs += analysis_jobs(first)
    for seed in SEEDS:
        jobs += [job for job in (grid_job(d, m, seed) for d in DATASETS if d != TUNING_DATASET
                                 for m in MODELS) if job.id not in listed]
    for seed in others:
        jobs += analysis_jobs(seed)
    return jobs


# -- one worker ------------------------------------------------------------------------------------
def try_lock(job: Job):
    """An open file holding an exclusive flock for the job, or None if another process has it.
    The kernel drops the lock when the process dies, so a crashed worker never blocks a job."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    handle = open(LOCK_DIR / (job.id.replace("/", "__") + ".lock"), "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def next_job(skip: frozenset = frozenset()) -> tuple[Job | None, object, int]:
    """(the first ready job not in `skip`, its lock, number of jobs still to run)."""
    jobs = [j for j in all_jobs() if not j.done()]
    for job in jobs:
        if job.id in skip or job.path is None or (job.spec() is None and not _copy_source(job)):
            continue
        lock = try_lock(job)
        if lock is None:
            continue
        if job.done():  # finished by another worker between the listing and the lock
            lock.close()
            continue
        return job, lock, len(jobs)
    return None, None, len(jobs)


def _copy_source(job: Job) -> Path | None:
    return job.copy_from() if job.copy_from is not None else None


class DataCache:
    """A job's dataset, loaded once, with the split's facts written beside the records the first
    time (each job now runs in its own process, so a cache lives for one job)."""

    def __init__(self):
        self.name, self.data = None, None

    def get(self, name: str):
        if name != self.name:
            self.name, self.data = name, load_data(name, k_core=DATASETS[name])
            facts = RESULTS_DIR / "runs" / name / "split.json"
            if not facts.exists():
                write_json(facts, split_facts(*self.data))
        return self.data


def run_job(job: Job, cache: DataCache, threads: int, device: str = "cpu") -> dict:
    spec = job.spec()
    source = _copy_source(job)
    if source is not None:
        record = read_record(source, spec)
        record = {**record, "label": spec.label, "copied_from": str(source)}
        write_json(job.path, record)
        return record
    return execute(spec, cache.get(spec.dataset), job.path, run_threads=threads, device=device)


# A job's process may use this share of the machine's memory (RLIMIT_DATA): over it, an
# allocation fails inside that process (a MemoryError or torch's "can't allocate memory") instead
# of the kernel's OOM killer picking a process; the worker then restarts the job, which resumes
# at its last finished epoch, exactly. Two workers' jobs fit side by side.
JOB_MEMORY_SHARE = 0.45
MEMORY_RETRIES = 20  # restarts of one job after running out of memory, per worker


def job_memory_limit() -> int | None:
    """Bytes of data segment one job's process may hold (None where it cannot be read)."""
    try:
        return int(JOB_MEMORY_SHARE * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError):
        return None


def out_of_memory(failure: Exception) -> bool:
    """Whether a job failed for memory (its process killed, or an allocation refused)."""
    text = str(failure)
    return ("killed, e.g. out of memory" in text or "MemoryError" in text
            or "can't allocate memory" in text.lower() or "cannot allocate memory" in text.lower())


def run_isolated(job: Job, threads: int, device: str = "cpu",
                 memory_limit: int | None = None) -> dict:
    """`run_job` in a forked child process; returns the record the child wrote at `job.path`.
    RuntimeError (with the child's traceback) when the job failed or its process was killed.

    Why a child: training keeps its freed memory for reuse (`model.train.keep_freed_memory`), so
    a worker that trained job after job in one process kept every job's peak working set, and
    datasets of different shapes fragmented it further, until the kernel's OOM killer ended the
    worker (2026-12-01: two workers at ~13 GB each on a 23 GB machine, one killed). A child gives
    all of it back when it exits. It stays in the worker's process group, so pausing the group
    (loadtest/quiet.sh) pauses the training too, and it inherits the worker's niceness."""
    context = multiprocessing.get_context("fork")  # the job (closures) goes over as it is
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_run_child, args=(job, threads, device, send, memory_limit))
    child.start()
    send.close()
    try:
        failure = receive.recv()  # "" when the job finished
    except EOFError:  # the child died without a word: killed (out of memory, a signal)
        failure = None
    child.join()
    receive.close()
    if failure or child.exitcode != 0:
        raise RuntimeError(f"job {job.id} failed in its process (exit code {child.exitcode})"
                           + (f":\n{failure}" if failure else ": killed, e.g. out of memory"))
    return json.loads(job.path.read_text())


def _run_child(job: Job, threads: int, device: str, send, memory_limit: int | None) -> None:
    failure = ""
    try:
        if memory_limit is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (memory_limit, memory_limit))
        run_job(job, DataCache(), threads, device)
    except BaseException:  # noqa: BLE001 - reported to the worker, which logs and skips the job
        failure = traceback.format_exc()
    send.send(failure)
    send.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if failure else 0)  # no atexit handlers of the worker (or of a test runner)


def rebuild_reports() -> list[Path]:
    """Rebuild every report from the records; returns the paths written. A failing report is
    logged with its traceback and skipped: the training queue must not stop for a report."""
    from . import analyses, results, tuning

    written = []
    for name, build in (("results", results.build_report), ("tuning", tuning.build_report),
                        ("analyses", analyses.build_report)):
        try:
            written += build()
        except Exception:  # noqa: BLE001 (logged in full, the queue goes on)
            log(f"report {name} failed:\n{traceback.format_exc()}")
    return written


def commit(paths: list[Path], message: str) -> None:
    """Commit exactly these paths (other work in the tree is left alone): the files that exist,
    and the removal of tracked ones that no longer do; failures are logged."""
    existing = [str(p) for p in paths if Path(p).exists()]
    removed = [str(p) for p in paths if not Path(p).exists() and _tracked(p)]
    if not existing and not removed:
        return
    cmds = [["git", "add", "--", *existing]] if existing else []
    cmds += [["git", "rm", "-q", "--cached", "--", *removed]] if removed else []
    for cmd in (*cmds, ["git", "commit", "-q", "-m", message, "--", *existing, *removed]):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            log(f"{' '.join(cmd[:3])} failed: {done.stderr.strip() or done.stdout.strip()}")
            return


def _tracked(path) -> bool:
    done = subprocess.run(["git", "ls-files", "--", str(path)], capture_output=True, text=True)
    return done.returncode == 0 and bool(done.stdout.strip())


def log(message: str) -> None:
    print(f"[{datetime.now().isoformat(timespec='seconds')} pid {os.getpid()}] {message}",
          flush=True)


def lower_priority(nice: int) -> None:
    """Nice this process, and its autogroup when it leads its own session (a worker does: it is
    started in a new session so that it can be paused as a group). Linux shares the CPU fairly
    between autogroups (one per session) before nice values count, so a nice-19 process alone in
    its session would still take an equal share against the server or the tests run from a
    shell; the autogroup's nice makes it yield to them. A process in someone else's session
    leaves that session's autogroup alone."""
    os.nice(nice)
    if os.getsid(0) == os.getpid():
        try:
            Path("/proc/self/autogroup").write_text(str(nice))
        except OSError:  # not Linux, or autogroups off: the plain nice is what there is
            pass


def work(args) -> None:
    if args.nice:
        lower_priority(args.nice)
    log(f"malloc: {'jemalloc' if jemalloc_active() else 'the system malloc (no jemalloc found)'}")
    failed = set()
    while True:
        job, lock, pending = next_job(frozenset(failed))
        if job is None:
            if pending <= len(failed):
                log(f"queue done: every job has its record, except failed ones {sorted(failed)}")
                return
            log(f"{pending} jobs left, none ready (waiting for recipes or other workers)")
            time.sleep(args.poll)
            continue
        log(f"start {job.id} -> {job.path}")
        try:
            record = _run_with_restarts(job, args)
        except Exception:  # noqa: BLE001 (logged in full; this worker skips the job from now on)
            log(f"FAILED {job.id} (skipped by this worker; its saved state is kept):\n"
                f"{traceback.format_exc()}")
            failed.add(job.id)
            continue
        finally:
            lock.close()
        log(f"done {job.id}: best epoch {record['best_epoch']}, valid ndcg@10 "
            f"{record['valid']['ndcg@10']:.4f}, {record['train_s'] / 60:.1f} min")
        written = rebuild_reports() + parked.drop(job.path, RESULTS_DIR, RESULTS_DIR / "parked")
        if args.commit:
            commit([job.path, job.path.parent.parent / "split.json", *written],
                   f"Run record: {job.id} (valid NDCG@10 {record['valid']['ndcg@10']:.4f})")


def _run_with_restarts(job: Job, args) -> dict:
    """run_isolated, restarted (from the job's last finished epoch) when it ran out of memory."""
    limit = job_memory_limit()
    for attempt in range(MEMORY_RETRIES + 1):
        try:
            return run_isolated(job, args.threads, getattr(args, "device", "cpu"), limit)
        except RuntimeError as exc:
            if attempt == MEMORY_RETRIES or not out_of_memory(exc):
                raise
            cap = f"limit {limit / 1024**3:.1f} GB" if limit is not None else "no limit"
            log(f"{job.id} ran out of memory ({cap}); restarting it from its last finished "
                f"epoch ({attempt + 1} of {MEMORY_RETRIES})")
    raise AssertionError("unreachable")


# -- the supervisor --------------------------------------------------------------------------------
def supervise(args) -> None:
    """Start `--workers` worker processes, each in its own process group (so a benchmark can
    pause it: kill -STOP -PGID), record the groups in --pids-file, and wait for them."""
    argv = [sys.executable, "-m", "model.experiments.queue", "--worker", "--device", args.device,
            "--threads", str(args.threads), "--nice", str(args.nice), "--poll", str(args.poll)]
    argv += ["--commit"] if args.commit else []
    # No idle thread pools; jemalloc where the machine has it (model/allocator.py: faster
    # epochs, and memory that does not creep as glibc's fragmented heap did).
    env = with_jemalloc({**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    workers = []
    for i in range(args.workers):
        out = open(Path(args.log_dir) / f"queue-worker{i + 1}.log", "a")
        workers.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True))
        _pids(args.pids_file, add=workers[-1].pid)
        log(f"worker {i + 1}: process group {workers[-1].pid}, log {out.name}")
    for worker in workers:
        worker.wait()
        _pids(args.pids_file, remove=worker.pid)


def _pids(path: str | None, add: int | None = None, remove: int | None = None) -> None:
    """Add or remove one process group in the pids file (shared with other jobs: locked), and
    drop the groups that no longer exist: a supervisor that died without cleaning up (a machine
    that went away, a kill -9) leaves its numbers behind, and once the kernel reuses one, a
    benchmark pausing "the background jobs" (loadtest/quiet.sh) would stop a stranger."""
    if not path:
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        lines = [x.strip() for x in handle.read().splitlines()]
        lines = [x for x in lines if x and x != str(remove) and _group_exists(x)]
        lines += [str(add)] if add is not None else []
        handle.seek(0)
        handle.truncate()
        handle.write("".join(f"{x}\n" for x in lines))


def _group_exists(line: str) -> bool:
    """Whether a pids-file line names a live process group (lines that are not numbers stay)."""
    if not line.isdigit():
        return True
    try:
        os.killpg(int(line), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live group
        return True
    return True


def describe() -> list[dict]:
    """Every job with its state: done, ready, waiting (no recipe yet) or placeholder."""
    rows = []
    for job in all_jobs():
        if job.path is None:
            state = "waiting (not defined until an earlier round finishes)"
        elif job.done():
            state = "done"
        elif job.spec() is None and not _copy_source(job):
            state = "waiting for a recipe"
        else:
            state = "ready" + (" (copy of the chosen candidate)" if _copy_source(job) else "")
        rows.append({"job": job.id, "state": state})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model.experiments.queue",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1,
                        help="1: run the queue in this process; N > 1 (or --pids-file): start N "
                             "worker processes, each its own process group")
    parser.add_argument("--worker", action="store_true", help="be one worker (internal)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                        help="where runs train (records stay comparable across devices)")
    parser.add_argument("--nice", type=int, default=0, help="niceness of the workers")
    parser.add_argument("--poll", type=float, default=120.0, help="seconds between checks")
    parser.add_argument("--commit", action="store_true",
                        help="git-commit each finished record and the rebuilt reports")
    parser.add_argument("--pids-file", help="append each worker's process group id here")
    parser.add_argument("--log-dir", default="runs", help="worker logs: queue-worker<i>.log")
    parser.add_argument("--list", action="store_true", help="print the jobs and their states")
    parser.add_argument("--park", action="store_true",
                        help="copy the states of unfinished runs into docs/results/parked/ "
                             "(with --commit: commit them) and exit")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.threads < 1:
        parser.error("--workers and --threads must be >= 1")
    if args.list:
        for row in describe():
            print(f"{row['job']:48s} {row['state']}")
        return
    if args.park:
        changed = parked.park()
        for path in changed:
            print(("parked " if path.exists() else "removed ") + str(path))
        if args.commit and changed:
            commit(changed, f"Parked training states of {sum(p.exists() for p in changed)} "
                            "unfinished runs (resumed by the queue on the next machine)")
        return
    if not args.worker:  # once, before any worker starts
        for path in parked.unpark():
            log(f"restored parked state {path}")
    if args.worker or (args.workers == 1 and not args.pids_file):
        work(args)  # in this process, logging to the terminal
        return
    Path(args.log_dir).mkdir(parents=True, exist_ok=True)
    supervise(args)


if __name__ == "__main__":
    exec_on_jemalloc("model.experiments.queue", sys.argv[1:])
    main()
