"""Train any model kind (via `build_model` and `model.loss` only) with validation early stopping.

Contract: `train(model_cfg, train_cfg, dataset, split)` returns the model holding its best-epoch
weights (by validation `train_cfg.metric`, unmasked) and a metrics dict with that epoch's valid
and test metrics. Under torchrun (WORLD_SIZE > 1) it runs DDP; only rank 0 evaluates, and the CLI
writes the checkpoint from rank 0 alone. `python -m model.train --help` lists every option.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from .allocator import jemalloc_active
from .batches import TrainBatches
from .checkpoint import save_checkpoint
from .config import MODEL_KINDS, ModelConfig
from .evaluate import evaluate, summarize
from .registry import build_model
from .train_state import load_state, rng_state, save_state, set_rng_state


LR_SCHEDULES = ("constant", "cosine")


def lr_factor(schedule: str, progress: float) -> float:
    """Multiplier of the base LR at `progress` in [0, 1] through the run's horizon."""
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return 1.0


@dataclass
class TrainConfig:
    seed: int = 2020
    epochs: int = 300  # upper bound; early stopping usually ends the run first
    patience: int = 10  # epochs without a validation improvement before stopping
    min_epochs: int = 0  # never stop early before this epoch (an early lucky peak is not a plateau)
    # Exponential moving average of the weights (0 = off). When on, validation, the kept best
    # state and the checkpoint all use the averaged weights; single-epoch weights are noisy.
    ema_decay: float = 0.0
    batch_size: int = 256  # training windows per step, summed over DDP ranks
    lr: float = 1e-3
    # "constant", or "cosine": per step from lr down to 0 at the end of `epochs` (the run's
    # horizon; early stopping may still end it first). Why: a decayed LR settles into a minimum
    # that constant-LR Adam keeps jittering around.
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    random_offsets: bool = True  # re-cut the training windows every epoch (model/batches.py)
    max_minutes: float = 0.0  # wall-clock budget; stop after the epoch that passes it (0 = none)
    stride: int = 0  # targets owned per training window; 0 = max_len (see model/batches.py)
    metric: str = "ndcg@10"  # validation selection metric (unmasked)
    eval_batch_size: int = 256
    device: str = "auto"  # cpu | cuda | auto
    num_threads: int = 0  # CPU intra-op threads per process; 0 = cores / processes
    progress: bool = True

    def validate(self) -> "TrainConfig":
        for name in ("epochs", "patience", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.min_epochs < 0 or not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"need min_epochs >= 0 and 0 <= ema_decay < 1, got "
                             f"{self.min_epochs}, {self.ema_decay}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"need lr > 0 and weight_decay >= 0, got {self.lr}, "
                             f"{self.weight_decay}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; one of {LR_SCHEDULES}")
        if self.metric not in summarize(np.ones(1), np.ones(1)):
            raise ValueError(f"unknown selection metric {self.metric!r}; e.g. 'ndcg@10'")
        return self

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown train config fields: {unknown}")
        return cls(**data).validate()


class LossModule(nn.Module):
    """forward() = model.loss(), so DDP's forward hook sees the training step."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, item_ids, seq_lens, targets):
        return self.model.loss(item_ids, seq_lens, targets)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name not in ("cpu", "cuda", "auto"):
        raise ValueError(f"device must be cpu, cuda or auto, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device_name: str) -> tuple[int, int, int]:
    """(rank, world_size, local_rank); joins the torchrun process group when WORLD_SIZE > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = device_name != "cpu" and torch.cuda.is_available()
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), world_size, local_rank


class WeightAverage:
    """EMA of a model's floating-point parameters and buffers, kept in a separate eval copy.

    The decay is warmed up as min(decay, (1 + t) / (10 + t)) at step t so the average is not
    dominated by the random initialisation during the first epochs.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.steps = decay, 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._dst = [t for t in self.model.state_dict().values() if t.is_floating_point()]
        self._src = [t for t in model.state_dict().values() if t.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        torch._foreach_lerp_(self._dst, self._src, 1.0 - decay)
        self.steps += 1


def train_epoch(step_module, optimizer, batches, epoch: int, device, progress: bool,
                average: WeightAverage | None = None, lr_at=None) -> float:
    """One pass over this rank's shard; returns the mean training loss.

    `lr_at(fraction)`, when given, is the LR for the step at `fraction` in [0, 1) of this epoch.
    """
    step_module.train()
    total, count = 0.0, 0
    steps = batches.epoch(epoch)
    bar = tqdm(steps, desc=f"epoch {epoch}", disable=not progress, leave=False, file=sys.stderr)
    for i, (item_ids, seq_lens, targets) in enumerate(bar):
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(i / len(steps))
        loss, _ = step_module(item_ids.to(device), seq_lens.to(device), targets.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if average is not None:
            average.update()
        total, count = total + loss.item(), count + 1
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return total / max(count, 1)


def _broadcast_stop(stop: bool, world_size: int, device) -> bool:
    # Rank 0 alone decides; every rank must leave the loop at the same epoch or DDP hangs.
    if world_size == 1:
        return stop
    flag = torch.tensor([int(stop)], device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it (process-wide).

    Why: a training step allocates and frees the same tens-of-MB activations every step; by
    default glibc maps each block over 32 MB (or over its adaptive threshold) fresh from the
    kernel and unmaps it on free, so every step page-faults and zero-fills its working set again
    (~15 % of a PLR step, and the (N, n_items) logits products ran at half speed). With mmap off
    and no trimming, memory stays at the peak working set, but that heap fragments as block sizes
    vary (model/allocator.py): the experiment queue starts its workers on jemalloc instead where
    the machine has it. Returns False where glibc's malloc is not the one in use.
    """
    libc = _glibc()
    if libc is None:
        return False
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4  # glibc's mallopt parameters
    return all(libc.mallopt(param, value) == 1 for param, value in (
        (m_mmap_max, 0), (m_trim_threshold, 4 * 1024**3), (m_top_pad, 256 * 1024 * 1024)))


def release_freed_memory() -> bool:
    """Hand the pages of freed heap memory back to the kernel (glibc malloc_trim), keeping the
    allocator's layout and every number; False where glibc is unavailable.

    Why, once per epoch: with `keep_freed_memory` nothing is ever returned, and a PLR run on
    ml-latest-small grew to ~13 GB resident until the OOM killer ended it (2026-12-01). After
    each trim that run's resident memory fell to ~0.3-1 GB between epochs. Its per-epoch peak
    still creeps up (~100-240 MB an epoch, with glibc's default settings too): the heap fragments
    (~130 MB in use between epochs, free chunks growing; model/allocator.py), which jemalloc
    avoids; under glibc the experiment queue's per-job memory cap and restart bound it
    (model/experiments/queue.py). The cost: the next step faults its working set in once. False
    where glibc's malloc is not the one in use (under jemalloc nothing needs handing back)."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def _glibc():
    """glibc, when its malloc is this process's (not under jemalloc, model/allocator.py)."""
    if jemalloc_active():
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: malloc is left as it is
        return None


def _setup(model_cfg: ModelConfig, tc: TrainConfig, dataset):
    rank, world_size, local_rank = init_distributed(tc.device)
    device = resolve_device(tc.device, local_rank)
    if device.type == "cpu":
        torch.set_num_threads(tc.num_threads or max(1, (os.cpu_count() or 1) // world_size))
        keep_freed_memory()
    if model_cfg.n_items == 0:
        model_cfg = replace(model_cfg, n_items=dataset.n_items)
    if model_cfg.n_items != dataset.n_items:
        raise ValueError(f"model n_items={model_cfg.n_items} but the dataset has {dataset.n_items}")
    seed_everything(tc.seed)
    model = build_model(model_cfg).to(device)  # same init on every rank (DDP also broadcasts)
    torch.manual_seed(tc.seed + rank)  # but independent dropout per rank
    step_module = LossModule(model)
    if world_size > 1:
        ddp_ids = [device.index] if device.type == "cuda" else None
        # find_unused_parameters: some kinds leave parameters out of some losses.
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=ddp_ids, find_unused_parameters=True)
    return model, step_module, device, rank, world_size


def _validate(model, split, tc: TrainConfig, epoch, loss, best, history, start,
              start_cpu: float = 0.0) -> bool:
    """Rank 0 after each epoch: score validation, keep the best weights; True = stop now.
    History entries carry the wall and CPU seconds since the run began (both cumulative)."""
    valid = evaluate(model, split.valid, batch_size=tc.eval_batch_size).metrics
    elapsed = time.perf_counter() - start
    history.append({"epoch": epoch, "loss": loss, "valid": valid[tc.metric], "elapsed_s": elapsed,
                    "cpu_s": time.process_time() - start_cpu,
                    "valid_metrics": {k: v for k, v in valid.items() if not k.startswith("masked")}})
    if valid[tc.metric] > best["score"]:
        best.update(score=valid[tc.metric], epoch=epoch, valid=valid, time=elapsed,
                    state=copy.deepcopy(model.state_dict()))
    tqdm.write(f"epoch {epoch}: loss {loss:.4f} valid {tc.metric} {valid[tc.metric]:.4f} "
               f"(best {best['score']:.4f} @ {best['epoch']}) {elapsed:.0f}s", file=sys.stderr)
    return epoch >= tc.min_epochs and epoch - best["epoch"] >= tc.patience


# TrainConfig fields that change how a run executes, not what it computes: a saved training
# state may be resumed under other values of these.
RUN_ONLY_FIELDS = ("progress", "num_threads", "device", "eval_batch_size")


def state_fingerprint(model_cfg: ModelConfig, tc: TrainConfig) -> dict:
    """What a saved training state must match to be resumed: the complete configuration."""
    return {"model": model_cfg.to_dict(),
            "train": {k: v for k, v in asdict(tc).items() if k not in RUN_ONLY_FIELDS}}


def _snapshot(model, optimizer, average, run: dict, fingerprint: dict) -> dict:
    return {"fingerprint": fingerprint, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "average": None if average is None else {"model": average.model.state_dict(),
                                                     "steps": average.steps},
            "rng": rng_state(), **run}


def _restore(saved: dict, model, optimizer, average) -> dict:
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if average is not None:
        average.model.load_state_dict(saved["average"]["model"])
        average.steps = saved["average"]["steps"]
    set_rng_state(saved["rng"])
    return {k: saved[k] for k in ("epoch", "best", "history", "elapsed_s", "cpu_s", "stopped")}


def train(model_cfg: ModelConfig, train_cfg, dataset, split,
          state_path: str | os.PathLike | None = None) -> tuple[nn.Module, dict]:
    """Fit with early stopping; returns (model at its best validation epoch, metrics).

    metrics (rank 0; other ranks get {}): valid, test (each with unmasked and masked_ keys),
    best_epoch, epochs_run, train_s, cpu_s, time_to_best_s, s_per_epoch, history, test_ranks,
    resumed_from (the epoch a saved state was resumed after, 0 = a fresh run).

    state_path: when given (one process only), the whole training state is saved there after
    every epoch and a run finds and resumes it, so an interrupted run loses at most the epoch in
    progress and ends exactly as an uninterrupted one (same seed, same machine and thread count).
    Wall and CPU times add up over the resumed pieces. The caller deletes the file when done.
    """
    tc = train_cfg if isinstance(train_cfg, TrainConfig) else TrainConfig.from_dict(train_cfg)
    tc.validate()
    model, step_module, device, rank, world_size = _setup(model_cfg, tc, dataset)
    if state_path is not None and world_size > 1:
        raise ValueError("state_path (resumable training) needs a single process, not DDP")
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    batches = TrainBatches(split.train, model.cfg.max_len, tc.batch_size, tc.seed,
                           tc.random_offsets, rank, world_size, tc.stride or None)
    average = WeightAverage(model, tc.ema_decay) if tc.ema_decay > 0 else None
    scored = average.model if average is not None else model  # what validation and test see
    fingerprint = state_fingerprint(model.cfg, tc)
    run = {"epoch": 0, "best": {"score": -1.0, "epoch": 0, "state": None, "valid": None,
                                "time": 0.0},
           "history": [], "elapsed_s": 0.0, "cpu_s": 0.0, "stopped": False}
    saved = load_state(state_path, fingerprint) if state_path is not None else None
    if saved is not None:
        run = _restore(saved, model, optimizer, average)
    resumed_from = run["epoch"]
    best, history = run["best"], run["history"]
    start = time.perf_counter() - run["elapsed_s"]
    start_cpu = time.process_time() - run["cpu_s"]
    show = tc.progress and rank == 0
    for epoch in range(run["epoch"] + 1, tc.epochs + 1):
        if run["stopped"]:
            break
        lr_at = None if tc.lr_schedule == "constant" else (  # noqa: E731 (epoch bound per loop)
            lambda f, e=epoch: tc.lr * lr_factor(tc.lr_schedule, (e - 1 + f) / tc.epochs))
        loss = train_epoch(step_module, optimizer, batches, epoch, device, show, average, lr_at)
        stop = rank == 0 and _validate(scored, split, tc, epoch, loss, best, history, start,
                                       start_cpu)
        # The budget is checked on rank 0 only and broadcast, like early stopping.
        stop = stop or (rank == 0 and tc.max_minutes > 0
                        and time.perf_counter() - start > 60 * tc.max_minutes)
        stop = _broadcast_stop(stop, world_size, device)
        run.update(epoch=epoch, elapsed_s=time.perf_counter() - start,
                   cpu_s=time.process_time() - start_cpu, stopped=stop or epoch == tc.epochs)
        if state_path is not None:
            save_state(state_path, _snapshot(model, optimizer, average, run, fingerprint))
        if device.type == "cpu":
            release_freed_memory()
        if stop:
            break
    train_s, cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
    if rank != 0:
        return model, {}
    epochs_run = run["epoch"]
    model.load_state_dict(best["state"])
    test = evaluate(model, split.test, batch_size=tc.eval_batch_size)
    return model.eval(), {
        "valid": best["valid"], "test": test.metrics, "best_epoch": best["epoch"],
        "epochs_run": epochs_run, "train_s": train_s, "cpu_s": cpu_s,
        "time_to_best_s": best["time"], "s_per_epoch": train_s / max(epochs_run, 1),
        "world_size": world_size, "device": str(device), "history": history,
        "test_ranks": test.ranks.tolist(), "test_masked_ranks": test.masked_ranks.tolist(),
        "resumed_from": resumed_from,
    }


# -- command line -------------------------------------------------------------------------------
def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1", "yes")


def _add_fields(group, cls, skip=()) -> None:
    """One --kebab-case option per dataclass field, defaulting to None (= the dataclass default)."""
    for f in fields(cls):
        if f.name in skip:
            continue
        kind = {bool: _bool, "bool": _bool, int: int, "int": int, float: float, "float": float}
        group.add_argument("--" + f.name.replace("_", "-"), type=kind.get(f.type, str),
                           default=None, help=f"default {f.default}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model.train", description=__doc__)
    parser.add_argument("--dataset", required=True,
                        help="name (ml-100k) or FORMAT:PATH, see model.data.load_dataset")
    parser.add_argument("--model", required=True, choices=MODEL_KINDS, help="model kind")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--k-core", type=int, default=0)
    parser.add_argument("--dedupe", default="keep_all", choices=("keep_all", "first", "last"))
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _add_fields(parser.add_argument_group("training"), TrainConfig, skip=("progress",))
    _add_fields(parser.add_argument_group("model"), ModelConfig, skip=("kind", "n_items"))
    return parser


def configs_from_args(args) -> tuple[ModelConfig, TrainConfig]:
    given = {k: v for k, v in vars(args).items() if v is not None}
    model_cfg = ModelConfig(kind=args.model, n_items=0, **{
        f.name: given[f.name] for f in fields(ModelConfig) if f.name in given})
    train_cfg = TrainConfig(progress=not args.no_progress, **{
        f.name: given[f.name] for f in fields(TrainConfig) if f.name in given})
    return model_cfg, train_cfg  # n_items = 0: filled in from the dataset


def load_data(spec: str, k_core: int = 0, dedupe: str = "keep_all"):
    """(dataset, split) by the reference protocol: stable time order, leave-one-out."""
    from .data import build_dataset, leave_one_out, load_dataset

    dataset = build_dataset(load_dataset(spec), k_core=k_core, dedupe=dedupe)
    return dataset, leave_one_out(dataset)


def main(argv=None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        model_cfg, train_cfg = configs_from_args(args)
        replace(model_cfg, n_items=1).validate()  # fail on a bad option before loading data
        train_cfg.validate()
        resolve_device(train_cfg.device)
        dataset, split = load_data(args.dataset, args.k_core, args.dedupe)
    except ValueError as err:
        parser.error(str(err))
    model, metrics = train(model_cfg, train_cfg, dataset, split)
    if metrics:  # rank 0 only
        provenance = {"dataset": args.dataset, "k_core": args.k_core, "dedupe": args.dedupe,
                      "world_size": metrics["world_size"], "torch": torch.__version__}
        version = save_checkpoint(args.out, model, dataset.vocab, dataset.titles,
                                  dataset.popularity, {**asdict(train_cfg), **provenance}, metrics)
        summary = {k: metrics[k] for k in ("best_epoch", "epochs_run", "time_to_best_s", "train_s")}
        print(json.dumps({"out": args.out, "version": version, "test": metrics["test"], **summary},
                         indent=2))
    if dist.is_initialized():
        # Every rank waits for rank 0's evaluation and checkpoint: a rank that tore its process
        # group down while rank 0 still held it open aborted at exit now and then (gloo).
        dist.barrier()
        dist.destroy_process_group()
    return metrics


if __name__ == "__main__":
    main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A torchrun worker whose run is done (checkpoint written, process group destroyed):
        # leave without the interpreter's teardown, where gloo's threads now and then still
        # abort the process (std::terminate, exit code -6) after a finished run.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
