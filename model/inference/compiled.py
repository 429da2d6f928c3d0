"""Ahead-of-time compiled engine graphs (AOTInductor) for the one-user paths of `Engine`.

At serving batch sizes the eager engine pays a per-op floor (~5-10 us) hundreds of times per
user; PLR's T x L reasoning passes double it. Two graphs, exported with `torch.export` (dynamic
lengths) and compiled by `torch._inductor.aoti_compile_and_package`, do the same math in one call:

- `append1`: one user's cached window rows (1, P, W), P in [2, max_len - 1], plus one new item
  -> the new row (1, W), the scoring vector (1, D), the stored answer (the best `top` unseen
  items and their scores; `seen` is an input) and the model's explain details;
- `prefill`: one user's window items (1, N), N in [2, max_len] -> rows (N, W), vector, answer,
  details. (Length 1 is left to the eager path: export specialises size-1 dimensions.)

Packages are built once per (model version, torch version, CPU) into `<root>/<key>/` with a
manifest, never per request (`build_packages`, or `python -m model.inference.compiled`), and
loaded by `load_graphs`, which raises `CompiledUnavailable` saying why when a package is missing,
stale or does not load; the engine then stays eager. Compiled and eager agree to float rounding
(tests check 1e-5 relative on every output).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..base import SequentialRecommender
from ..encoder import broadcast_readout, broadcast_scores, causal_mask

log = logging.getLogger(__name__)

GRAPH_NAMES = ("append1", "prefill")
MANIFEST = "manifest.json"
FORMAT = 5  # bump when the graphs' inputs or outputs change, or how they are compiled


class CompiledUnavailable(RuntimeError):
    """No usable compiled graphs (missing, built for another model/torch/CPU, failed to load)."""


def _detail_names(model: SequentialRecommender) -> list[str]:
    """The explain details a model reports, in a fixed order (graph outputs are a tuple)."""
    with torch.inference_mode():
        h0 = torch.zeros(1, model.cfg.d_model)
        kv = [(torch.zeros(1, model.cfg.n_heads, 1 + model.scratch_slots,
                           model.cfg.d_model // model.cfg.n_heads),) * 2
              for _ in range(model.cfg.n_layers)]
        _, details = model.user_vectors(h0, kv, torch.ones(1, dtype=torch.long), explain=True)
    return sorted(details)


def _answer(model: SequentialRecommender, vector: Tensor, seen: Tensor, top: int):
    """The stored answer, as `ranking.with_top` ranks it: the best `top` items with `seen` (and
    padding) at -inf; the caller drops -inf entries when fewer than `top` are left."""
    scores = model.score(vector)[0].index_fill(0, seen, float("-inf"))  # (n_items + 1,)
    return scores.topk(top)


def _rows(kv: list[tuple[Tensor, Tensor]], hidden: Tensor) -> Tensor:
    """Per-layer K/V (1, H, S, Dh) and hidden (1, S, D) -> cache rows (S, W): [K_0 V_0 ... h]."""
    parts = []
    for k, v in kv:
        parts += [k.transpose(1, 2).flatten(2), v.transpose(1, 2).flatten(2)]
    return torch.cat(parts + [hidden], dim=-1)[0]


class Append1(nn.Module):
    """One new item on top of one user's cached rows; same math as the eager engine."""

    def __init__(self, model: SequentialRecommender, details: list[str], top: int):
        super().__init__()
        self.model, self.details, self.top = model, details, top

    def forward(self, past: Tensor, item: Tensor, seen: Tensor):  # (1, P, W), (1, 1), (S,)
        enc, cfg = self.model.encoder, self.model.cfg
        d, h = cfg.d_model, cfg.n_heads
        position = torch.zeros_like(item) + past.shape[1]  # window positions count from 0
        x = enc.embed_items(item, position)  # (1, 1, D)
        kv, new = [], []
        for layer, block in enumerate(enc.blocks):
            q, k, v = block.project(x)  # (1, H, 1, Dh)
            keys = torch.cat([_heads(past, 2 * layer * d, d, h), k], dim=2)
            values = torch.cat([_heads(past, (2 * layer + 1) * d, d, h), v], dim=2)
            kv.append((keys, values))
            new.append((k, v))
            # One query: broadcast products, fused by inductor, instead of an SDPA call.
            weights = torch.softmax(broadcast_scores(q, keys), dim=-1)
            x = block.finish(x, broadcast_readout(weights, values))
        h0 = x[:, -1]  # (1, D)
        lens = torch.zeros(1, dtype=torch.long) + past.shape[1] + 1
        vector, details = self.model.user_vectors(h0, kv, lens, explain=True)
        values, indices = _answer(self.model, vector, seen, self.top)
        return (_rows(new, x), vector, values, indices) + tuple(details[n] for n in self.details)


class Prefill(nn.Module):
    """One user's whole window from scratch; same math as the eager engine."""

    def __init__(self, model: SequentialRecommender, details: list[str], top: int):
        super().__init__()
        self.model, self.details, self.top = model, details, top

    def forward(self, items: Tensor, seen: Tensor):  # (1, N) long, (S,) long
        enc = self.model.encoder
        n = items.shape[1]
        positions = torch.arange(n).unsqueeze(0)
        lens = torch.zeros(1, dtype=torch.long) + n
        hidden, kv = enc.forward_layers(enc.embed_items(items, positions), causal_mask(lens, n))
        h0 = hidden[:, -1]
        vector, details = self.model.user_vectors(h0, kv, lens, explain=True)
        values, indices = _answer(self.model, vector, seen, self.top)
        return (_rows(kv, hidden), vector, values, indices) + tuple(details[n] for n in self.details)


# Every matmul of a one-new-item graph is a (1..M) x d x d product: as an ATen call each costs a
# dispatch (~2-5 us) for ~0.1 us of arithmetic. Autotuning with Inductor's C++ GEMM template in
# the running lets the build inline the ones where it wins: PLR's append graph went from 196 to
# 98 us per call here, for a minute or two more of build. Only the append graph: a prefill's
# matmuls have up to max_len rows, where the template picked at the export's small example size
# lost to ATen (make bench, 2026-11-30: PLR prefill of 200 items 1.6 -> 2.3 ms).
INDUCTOR_CONFIGS = {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}
AUTOTUNED = ("append1",)


def _heads(rows: Tensor, offset: int, d: int, n_heads: int) -> Tensor:
    return rows[..., offset : offset + d].unflatten(-1, (n_heads, d // n_heads)).transpose(1, 2)


def package_key(model_version: str) -> str:
    """Directory name of a model's packages: model version, torch version and CPU."""
    cpu = _cpu_signature()
    digest = hashlib.sha256(f"{FORMAT}|{torch.__version__}|{cpu}".encode()).hexdigest()[:12]
    return f"{model_version}-{digest}"


def _cpu_signature() -> str:
    """CPU model and ISA flags: a package built with AVX-512 must not load on a CPU without it."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        name = next((line.split(":", 1)[1].strip() for line in info
                     if line.startswith("model name")), "")
        flags = next((line.split(":", 1)[1].strip() for line in info
                      if line.startswith("flags")), "")
        return f"{name}|{hashlib.sha256(flags.encode()).hexdigest()[:12]}"
    except OSError:
        return platform.machine()


def build_packages(model: SequentialRecommender, model_version: str, root: Path,
                   top: int = 100, autotune: bool = True) -> Path:
    """Export and compile both graphs for this model into root/<key>/ (atomically: a temporary
    directory renamed into place, so a reader never sees half a build). Minutes of CPU. `top`:
    the stored answer's length (the engine's), at most the catalogue. `autotune`: pick each
    matmul kernel of the append graph by timing (INDUCTOR_CONFIGS, AUTOTUNED; what serving
    builds); False compiles faster with ATen matmuls only (tests). Each package is checked against the eager module before it is
    kept (`_verify`): a build whose outputs differ raises CompiledUnavailable."""
    target = Path(root) / package_key(model_version)
    if (target / MANIFEST).exists():
        return target
    model = model.cpu().eval()
    cfg, details = model.cfg, _detail_names(model)
    top = min(top, cfg.n_items)
    seen = torch.tensor([1, 2])
    dyn_seen = torch.export.Dim("S", min=2, max=cfg.n_items + 1)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    width = (2 * cfg.n_layers + 1) * cfg.d_model
    timings = {}
    with torch.inference_mode(False), torch.no_grad():
        graphs = {
            "append1": (Append1(model, details, top),
                        (torch.zeros(1, 3, width), torch.ones(1, 1, dtype=torch.long), seen),
                        {"past": {1: torch.export.Dim("P", min=2, max=max(3, cfg.max_len - 1))},
                         "item": None, "seen": {0: dyn_seen}}),
            "prefill": (Prefill(model, details, top), (torch.ones(1, 3, dtype=torch.long), seen),
                        {"items": {1: torch.export.Dim("N", min=2, max=max(3, cfg.max_len))},
                         "seen": {0: dyn_seen}}),
        }
        for name, (module, args, dynamic) in graphs.items():
            started = time.perf_counter()
            exported = torch.export.export(module.eval(), args, dynamic_shapes=dynamic)
            package = str(tmp / f"{name}.pt2")
            torch._inductor.aoti_compile_and_package(
                exported, package_path=package,
                inductor_configs=INDUCTOR_CONFIGS if autotune and name in AUTOTUNED else {})
            timings[name] = round(time.perf_counter() - started, 1)
            _verify(name, module, package, cfg)
    manifest = {"format": FORMAT, "model_version": model_version, "torch": torch.__version__,
                "cpu": _cpu_signature(), "details": details, "max_len": cfg.max_len, "top": top,
                "autotune": autotune, "compile_s": timings}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    tmp.rename(target)
    log.info("compiled graphs for %s in %s (%s)", model_version, target, timings)
    return target


def _verify(name: str, module: nn.Module, package: str, cfg, rtol: float = 1e-4,
            atol: float = 1e-5) -> None:
    """Run a fresh package and its eager module on a few random inputs (shortest, middle and
    longest length) and raise CompiledUnavailable unless every output agrees. The ranked
    answer is compared by its scores (equal scores may come in either order)."""
    runner = torch._inductor.aoti_load_package(package)
    gen = torch.Generator().manual_seed(0)
    width = (2 * cfg.n_layers + 1) * cfg.d_model
    longest = max(2, cfg.max_len - 1)  # of an append's past (a prefill gets one item more)
    for length in sorted({2, (2 + longest) // 2, longest}):
        seen = torch.randperm(cfg.n_items, generator=gen)[:3].sort().values + 1
        if name == "append1":
            args = (torch.randn(1, length, width, generator=gen),
                    torch.randint(1, cfg.n_items + 1, (1, 1), generator=gen), seen)
        else:
            args = (torch.randint(1, cfg.n_items + 1, (1, length + 1), generator=gen), seen)
        with torch.inference_mode():
            want, got = module(*args), runner(*args)
        for i, (a, b) in enumerate(zip(want, got)):
            if i == 3:  # top indices: their scores (output 2) are compared
                continue
            finite = torch.isfinite(a)
            if not (torch.equal(finite, torch.isfinite(b))
                    and torch.allclose(a[finite], b[finite], rtol=rtol, atol=atol)):
                raise CompiledUnavailable(
                    f"compiled {name} differs from eager (output {i}, length {length}): "
                    f"max difference {(a[finite] - b[finite]).abs().max().item():.2e}")


@dataclass
class CompiledGraphs:
    """Loaded runners of one model; call from one thread at a time (the engine's). The runs
    return (rows, vector (D,), answer (top item indices, scores), details {name: tensor})."""

    append1: object
    prefill: object
    details: list[str]
    max_len: int
    top: int
    n_items: int
    path: Path

    def covers(self, n_past: int, n_new: int) -> bool:
        """Whether a job of this shape has a compiled graph (else it runs eager)."""
        if n_past == 0:
            return 2 <= n_new <= self.max_len
        return n_new == 1 and 2 <= n_past <= self.max_len - 1

    def run_append1(self, past: Tensor, item: int, seen: Tensor):
        # The loader itself, not AOTICompiledModel.__call__: that re-parses the call's pytree
        # spec on every call (~40 us); the graphs take and return flat tensor lists.
        return self._unpack(self.append1.loader.boxed_run(
            [past.unsqueeze(0), torch.tensor([[item]]), _at_least_two(seen)]), seen)

    def run_prefill(self, items: list[int], seen: Tensor):
        return self._unpack(self.prefill.loader.boxed_run(
            [torch.tensor([items]), _at_least_two(seen)]), seen)

    def _unpack(self, out: list[Tensor], seen: Tensor):
        """(rows, vector, (top indices uint32, top scores float32) numpy, details)."""
        values, indices = out[2], out[3]
        available = self.n_items - seen.numel()  # unseen real items: the rest of the list is -inf
        if available < values.numel():
            values, indices = values[:available], indices[:available]
        return (out[0], out[1][0], (indices.numpy().astype(np.uint32), values.numpy()),
                {n: t[0] for n, t in zip(self.details, out[4:])})


def _at_least_two(seen: Tensor) -> Tensor:
    """The graphs' `seen` has >= 2 entries (export specialises size 1): repeat one if needed."""
    return seen if seen.numel() >= 2 else seen.repeat(2)


def load_graphs(model: SequentialRecommender, model_version: str, root: Path) -> CompiledGraphs:
    """The compiled graphs of this model on this machine, or CompiledUnavailable saying why."""
    path = Path(root) / package_key(model_version)
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise CompiledUnavailable(f"no compiled graphs at {path} (build: python -m "
                                  f"model.inference.compiled)")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("model_version") != model_version or manifest.get("format") != FORMAT:
        raise CompiledUnavailable(f"{path} holds graphs of another model or format")
    if manifest.get("details") != _detail_names(model):
        raise CompiledUnavailable(f"{path}: explain outputs differ from the model's")
    try:
        runners = {name: torch._inductor.aoti_load_package(str(path / f"{name}.pt2"))
                   for name in GRAPH_NAMES}
    except Exception as exc:  # noqa: BLE001 - any load failure means: stay eager, say why
        raise CompiledUnavailable(f"{path}: {type(exc).__name__}: {exc}") from exc
    return CompiledGraphs(runners["append1"], runners["prefill"], manifest["details"],
                          int(manifest["max_len"]), int(manifest["top"]), model.cfg.n_items, path)


def main(argv=None) -> None:
    """Build the packages of every checkpoint under --models-dir (skips those already built)."""
    from ..checkpoint import checkpoint_dirs, load  # checkpoint imports this package

    parser = argparse.ArgumentParser(prog="python -m model.inference.compiled",
                                     description=main.__doc__)
    parser.add_argument("--models-dir", type=Path, default=Path("artifacts/models"))
    parser.add_argument("--out", type=Path, default=Path("artifacts/compiled"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-autotune", dest="autotune", action="store_false",
                        help="ATen matmuls instead of timing each kernel choice (faster build, "
                             "slower graphs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    for path in checkpoint_dirs(args.models_dir):
        ckpt = load(path)
        started = time.perf_counter()
        target = build_packages(ckpt.model, ckpt.version, args.out, autotune=args.autotune)
        print(json.dumps({"model": path.name, "version": ckpt.version, "packages": str(target),
                          "seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
