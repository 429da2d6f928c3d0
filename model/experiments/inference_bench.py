"""Benchmark of the incremental inference engine; writes docs/inference.md.

Per-request compute time of (a) full recompute (no cache) and (b) cached append + recommend (the
cache covers all but the newest item), for SASRec and PLR (M=2, T=2) with random-init weights
(timing only), interleaved in one run so every ratio compares like with like. Also: bytes per user
per dtype, and (with --checkpoint) the test NDCG@10 cost of the serving window rule.

    python -m model.experiments.inference_bench [--quick] [--checkpoint DIR] [--threads 1]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from model.config import ModelConfig
from model.inference import Engine, RecRequest, cache_nbytes, window_start
import model.inference.engine as engine_module
from model.inference.compiled import build_packages, load_graphs
from model.inference.state import stored_answer
from model.experiments.hardware import cpu_model
from model.registry import build_model

LENGTHS, BATCHES = (10, 50, 100, 200), (1, 8, 32, 128)
QUICK_LENGTHS, QUICK_BATCHES = (10, 200), (1, 32)
N_ITEMS, LARGE_ITEMS, MAX_LEN = 1682, 20_000, 256
KINDS = ("sasrec", "plr")


def make_engines(n_items: int, compiled_root: Path | None = None) -> dict[str, Engine]:
    """An eager engine per kind; with compiled_root also "<kind>+aoti", the same model with its
    compiled graphs attached (built there first when missing: a minute or two per kind)."""
    engines = {}
    for kind in KINDS:
        torch.manual_seed(0)
        cfg = ModelConfig(kind=kind, n_items=n_items, d_model=64, n_layers=2, n_heads=2, d_ff=256,
                          max_len=MAX_LEN, n_streams=2, n_steps=2)
        model = build_model(cfg)
        engines[kind] = Engine(model, f"bench-{kind}")
        if compiled_root is not None:
            version = f"bench-{kind}-{n_items}"
            build_packages(model, version, compiled_root)
            compiled = Engine(model, version)
            compiled.attach_graphs(load_graphs(model, version, compiled_root))
            engines[f"{kind}+aoti"] = compiled
    return engines


def synthetic_histories(n: int, batch: int, n_items: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, n_items + 1, (batch, n), generator=g).tolist()


def timed(fn) -> tuple[float, float]:
    """(wall, cpu) seconds of one call; cpu = this thread's CPU time (robust on a shared machine)."""
    w, c = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - w, time.thread_time() - c


def measure_cell(engines: dict[str, Engine], n: int, batch: int, n_items: int,
                 budget_s: float) -> dict[tuple[str, str], dict[str, float]]:
    """Median per-request wall and CPU ms of each (kind, path), the calls interleaved."""
    histories = synthetic_histories(n, batch, n_items, seed=n * 1000 + batch)
    calls = {}
    for kind, engine in engines.items():
        prefixes = engine.extend([h[:-1] for h in histories], [None] * batch) if n > 1 else [None] * batch
        full = [RecRequest(h, None, k=10) for h in histories]
        cached = [RecRequest(h, c, k=10) for h, c in zip(histories, prefixes)]
        calls[kind, "full"] = (engine, full)
        calls[kind, "cached"] = (engine, cached)
    samples = {key: [] for key in calls}
    for engine, requests in calls.values():  # warm-up: allocator, workspace growth
        engine.recommend(requests)
    start, reps = time.perf_counter(), 0
    while reps < 3 or (time.perf_counter() - start < budget_s and reps < 200):
        for key, (engine, requests) in calls.items():
            samples[key].append(timed(lambda: engine.recommend(requests)))
        reps += 1
    return {key: {"wall_ms": 1e3 * statistics.median(w for w, _ in s) / batch,
                  "cpu_ms": 1e3 * statistics.median(c for _, c in s) / batch, "reps": len(s)}
            for key, s in samples.items()}


CROSSOVER_BATCHES = (1, 2, 4, 5, 8, 16, 32, 64)


def crossover_rows(engines: dict[str, Engine], n: int, budget_s: float) -> list[str]:
    """Per-user CPU ms of a cached append batch run user by user through the compiled graphs vs
    as one eager batch (the engine picks by COMPILED_MAX_BATCH), interleaved, same requests."""
    rows = ["| model | B | compiled, user by user | one eager batch | eager / compiled |",
            "|---|---|---|---|---|"]
    saved = engine_module.COMPILED_MAX_BATCH
    try:
        for kind in [k for k in engines if k.endswith("+aoti")]:
            engine = engines[kind]
            for batch in CROSSOVER_BATCHES:
                histories = synthetic_histories(n, batch, N_ITEMS, seed=7000 + batch)
                prefixes = engine.extend([h[:-1] for h in histories], [None] * batch)
                requests = [RecRequest(h, c, k=10) for h, c in zip(histories, prefixes)]
                samples: dict[int, list[float]] = {10**9: [], 0: []}
                start, reps = time.perf_counter(), 0
                while reps < 4 or (time.perf_counter() - start < budget_s and reps < 100):
                    for cap, times in samples.items():
                        engine_module.COMPILED_MAX_BATCH = cap
                        if reps == 0:
                            engine.recommend(requests)  # warm-up
                        times.append(timed(lambda: engine.recommend(requests))[1])
                    reps += 1
                compiled, eager = (1e3 * statistics.median(samples[c]) / batch for c in (10**9, 0))
                rows.append(f"| {kind} | {batch} | {compiled:.3f} | {eager:.3f} | "
                            f"{eager / compiled:.2f}x |")
    finally:
        engine_module.COMPILED_MAX_BATCH = saved
    return rows


def latency_table(engines, lengths, batches, n_items, budget_s) -> dict:
    results = {}
    for n in lengths:
        for batch in batches:
            t0 = time.perf_counter()
            for (kind, path), v in measure_cell(engines, n, batch, n_items, budget_s).items():
                results[kind, path, n, batch] = v
            print(f"  n={n:4d} B={batch:4d}  {time.perf_counter() - t0:5.1f}s", file=sys.stderr)
    return results


def op_floor_us() -> tuple[float, float]:
    """Median CPU microseconds of two tiny ops: the per-op dispatch floor that batch-1 paths pay."""
    x, w = torch.randn(1, 64), torch.randn(256, 64)
    out = []
    for fn in (lambda: x + x, lambda: torch.nn.functional.linear(x, w)):
        fn()
        out.append(1e6 * statistics.median(timed(fn)[1] for _ in range(2000)))
    return out[0], out[1]


def bytes_rows(engine: Engine, lengths) -> list[str]:
    cfg = engine.model.cfg
    rows = []
    for n in lengths:
        n_ctx = n - window_start(n, cfg.max_len)
        sizes = [cache_nbytes(n_ctx, cfg.n_layers, cfg.d_model, dt) for dt in ("fp32", "fp16")]
        rows.append(f"| {n} | {n_ctx} | {sizes[0]:,} | {sizes[1]:,} |")
    return rows


def codec_times(engine: Engine, n: int) -> dict[str, float]:
    """Microseconds to encode / decode (with crc checks) one user's cache of n items."""
    cache = engine.prefill(synthetic_histories(n, 1, engine.n_items, seed=1)[0])
    out = {}
    for dt in ("fp32", "fp16"):
        data = cache.to_bytes(dt)
        enc = min(timed(lambda: cache.to_bytes(dt))[1] for _ in range(30))
        dec = min(timed(lambda: engine.load_cache(data))[1] for _ in range(30))
        tail = min(timed(lambda: cache.tail_bytes(cache.history_length - 1, dt))[1] for _ in range(30))
        out[dt] = (1e6 * enc, 1e6 * dec, 1e6 * tail)
    return out


def fp16_parity(engine: Engine, histories: list[list[int]]) -> tuple[float, float]:
    """(max relative score difference, mean top-10 overlap) of fp16-stored vs fp32 caches."""
    caches = engine.extend([h[:-1] for h in histories], [None] * len(histories))
    half = [engine.load_cache(c.to_bytes("fp16")) for c in caches]
    k = engine.n_items
    exact = engine.recommend([RecRequest(h, c, k=k, exclude_seen=False) for h, c in zip(histories, caches)])
    approx = engine.recommend([RecRequest(h, c, k=k, exclude_seen=False) for h, c in zip(histories, half)])
    worst, overlap = 0.0, []
    for a, b in zip(exact, approx):
        sa, sb = dict(zip(a.item_indices, a.scores)), dict(zip(b.item_indices, b.scores))
        scale = max(abs(v) for v in sa.values())
        worst = max(worst, max(abs(sa[i] - sb[i]) for i in sa) / scale)
        overlap.append(len(set(a.item_indices[:10]) & set(b.item_indices[:10])) / 10)
    return worst, sum(overlap) / len(overlap)


def window_accuracy(checkpoint_dir: str) -> list[str]:
    """Test NDCG@10 / Recall@10 with the protocol's last-max_len truncation vs the serving window."""
    from model.checkpoint import load
    from model.evaluate import evaluate
    from model.train import load_data

    ckpt = load(checkpoint_dir)
    spec = ckpt.train_config.get("dataset", "ml-100k")
    _, split = load_data(spec, ckpt.train_config.get("k_core", 0), ckpt.train_config.get("dedupe", "keep_all"))
    max_len = ckpt.config.max_len
    protocol = evaluate(ckpt.model, split.test, max_len=max_len)
    served = [(p[window_start(len(p), max_len):], t) for p, t in split.test]
    serving = evaluate(ckpt.model, served, max_len=max_len)
    longer = sum(len(p) > max_len for p, _ in split.test)
    engine = Engine(ckpt.model, ckpt.version)
    worst, overlap = fp16_parity(engine, [list(map(int, p)) for p, _ in split.test[:256] if len(p) > 1])
    lines = [f"Checkpoint `{checkpoint_dir}` (kind {ckpt.config.kind}, version {ckpt.version}, "
             f"max_len {max_len}), dataset {spec}, {len(split.test)} test users, {longer} of them with "
             f"histories longer than max_len (the only ones the rule can change).", "",
             "| metric | protocol (last max_len) | serving window | relative change |", "|---|---|---|---|"]
    for name in ("ndcg@10", "recall@10", "ndcg@20", "recall@20"):
        a, b = protocol.metrics[name], serving.metrics[name]
        diff = serving.per_user(name) - protocol.per_user(name)  # paired, per user
        se = diff.std(ddof=1) / len(diff) ** 0.5
        lines.append(f"| {name} | {a:.4f} | {b:.4f} | {100 * (b - a) / a:+.2f} % "
                     f"(paired diff {diff.mean():+.4f} +- {se:.4f} s.e.) |")
    return lines + ["", f"fp16 cache bytes on this checkpoint (256 test users, real histories): max "
                        f"relative score difference {worst:.1e}, mean top-10 overlap with fp32 {overlap:.3f}."]


def fmt_latency(results, kinds, lengths, batches, n_items) -> list[str]:
    lines = [f"Catalogue {n_items:,} items. Per-request CPU ms (median); wall ms in parentheses.", "",
             "| model | n | B | full recompute | cached append | full / cached |", "|---|---|---|---|---|---|"]
    for kind in kinds:
        for n in lengths:
            for b in batches:
                f, c = results[kind, "full", n, b], results[kind, "cached", n, b]
                lines.append(f"| {kind} | {n} | {b} | {f['cpu_ms']:.3f} ({f['wall_ms']:.3f}) | "
                             f"{c['cpu_ms']:.3f} ({c['wall_ms']:.3f}) | {f['cpu_ms'] / c['cpu_ms']:.2f}x |")
    return lines


def fmt_ratios(results, lengths, batches) -> list[str]:
    lines = ["| n | B | PLR / SASRec, cached | PLR / SASRec, full |", "|---|---|---|---|"]
    for n in lengths:
        for b in batches:
            rc = results["plr", "cached", n, b]["cpu_ms"] / results["sasrec", "cached", n, b]["cpu_ms"]
            rf = results["plr", "full", n, b]["cpu_ms"] / results["sasrec", "full", n, b]["cpu_ms"]
            lines.append(f"| {n} | {b} | {rc:.2f}x | {rf:.2f}x |")
    if 1 in batches and 32 in batches:
        lines += ["", "Per-request time at batch 32 / batch 1 (cached append):", "",
                  "| n | SASRec | PLR |", "|---|---|---|"]
        for n in lengths:
            r = [results[k, "cached", n, 32]["cpu_ms"] / results[k, "cached", n, 1]["cpu_ms"] for k in KINDS]
            lines.append(f"| {n} | {r[0]:.2f} | {r[1]:.2f} |")
    return lines


def targets(results, lengths, stored_us: dict) -> list[str]:
    n = max(lengths)
    speedup = results["plr", "full", n, 1]["cpu_ms"] / results["plr", "cached", n, 1]["cpu_ms"]
    ratio = results["plr", "cached", n, 32]["cpu_ms"] / results["sasrec", "cached", n, 32]["cpu_ms"]
    batching = results["plr", "cached", n, 32]["cpu_ms"] / results["plr", "cached", n, 1]["cpu_ms"]
    rows = [f"| PLR full recompute / cached append, n={n}, B=1, eager | >= 3x | {speedup:.2f}x |"]
    if ("plr+aoti", "full", n, 1) in results:
        compiled = (results["plr+aoti", "full", n, 1]["cpu_ms"]
                    / results["plr+aoti", "cached", n, 1]["cpu_ms"])
        rows.append(f"| PLR full recompute / cached append, n={n}, B=1, compiled graphs (what the "
                    f"server runs) | >= 3x | {compiled:.2f}x |")
    full_ms = results.get(("plr+aoti", "full", n, 1), results["plr", "full", n, 1])["cpu_ms"]
    rows += [f"| PLR full recompute / precomputed answer (stored state, k=10), n={n}, B=1 | - | "
             f"{1000 * full_ms / stored_us['plr']:.0f}x ({stored_us['plr']:.1f} us) |",
             f"| PLR / SASRec per request, cached append, n={n}, B=32 | <= 2x (goal 1.5x) | {ratio:.2f}x |",
             f"| PLR per request, B=32 / B=1, cached append, n={n} | well below 1 | {batching:.2f} |"]
    return rows


def stored_answer_us(engine: Engine, n: int) -> float:
    """CPU microseconds to answer k=10 from a user's stored state bytes (the precomputed path)."""
    history = synthetic_histories(n, 1, engine.n_items, seed=3)[0]
    data = engine.recommend([RecRequest(history, None, k=10)])[0].state.to_bytes()
    version, n_items = engine.model_version, engine.n_items
    stored_answer(data, version, n_items, 10)
    return 1e6 * statistics.median(
        timed(lambda: stored_answer(data, version, n_items, 10))[1] for _ in range(2000))


DESIGN = """## What is measured against what

- Serving window (`model.inference.window_start`): the whole history while it fits max_len; past
  it the window restarts every s = max_len - max_len // 2 appends (contexts hold max_len // 2 + 1
  to max_len items), so a full prefill happens once per s events. Cached and uncached paths use the
  same rule, so they agree to float tolerance (tests/inference: 1e-5 relative, every model kind).
- Cache bytes (`UserCache.to_bytes`, layout version 1, little endian): a 40-byte header (magic
  `PLRK`, layout u16, dtype u8 (1 = fp32, 2 = fp16), flags u8, sha256(model_version)[:16],
  window_start u32, n_layers u16, n_heads u16, d_model u32, crc32 of those 36 bytes), then one
  self-contained row per window item: item index u32, [K_0 | V_0 | ... | K_{L-1} | V_{L-1} |
  hidden] (each d_model values of the dtype), crc32 of the row. history_length = window_start +
  rows; the last row's hidden is h0. An append within a window is `tail_bytes` (Redis APPEND).
- fp32 bytes round-trip bit for bit. fp16 bytes halve the size; the tests assert a mean top-10
  overlap with fp32 of at least 0.9 (tiny synthetic models); measured below on the bench models
  and, with --checkpoint, on the trained model's real test histories.
- Why eager batch 1 is far from the 3x target: at d=64 a batch-1 request is a few hundred tiny
  ops (~170 for SASRec's cached path, about twice that for PLR), so it costs the per-op floor
  times the op count; PLR's reasoning (T x L block passes over the cached K/V) is the same work in
  both paths, and a 200-item prefill adds little real arithmetic. Batching amortises the floor;
  the compiled graphs (`+aoti` rows) remove it: there the real arithmetic of a 200-item prefill
  shows, and the cached path is mostly the reasoning and the ranking.
- The server goes one step further for a stored user: the state computed when the history
  changed holds the scoring vector and the ranked top 100, so a `/recommend` by user_id reads it
  and slices it (the "precomputed answer" row): no model pass at request time at all.
- What the reasoning costs (`model.reasoning.reason`): each of the T x L block passes is one
  fused attention call over the context K/V plus one slot per (step, stream), the chain tokens
  written into free slots after the context in the engine's workspace (`user_vectors(...,
  n_ctx=)`, no copy of the items; stream isolation is a mask), with an additive float mask built
  once per batch. At batch 32 the passes are bound by reading the item K/V (T x L reads against
  SASRec's L), which is what keeps PLR above SASRec per request.
- Compiled graphs: `torch.export` with dynamic lengths + `aoti_compile_and_package`, built once
  per model version, torch version and CPU (a few minutes per kind here) and loaded in ms;
  `torch.compile` in-process was not adopted (compile cost paid by every process at start). The
  build autotunes the append graph's matmuls between an ATen call and Inductor's C++ GEMM
  template (`INDUCTOR_CONFIGS`): there every matmul is a (1..M) x 64 x 64 product, where a
  dispatched ATen call costs more than the arithmetic, so the template wins and PLR's cached
  append graph halved (196 -> 98 us in a side-by-side probe). The prefill graph keeps ATen
  matmuls: with up to max_len rows the template lost (PLR n=200 1.6 -> 2.3 ms in a first run).
  Attention with few queries (the append's one new item, the reasoning's M chain tokens) is
  written as broadcast products (`model.encoder.broadcast_scores` / `broadcast_readout`) in
  both graphs: Inductor fuses them into its loops, where a matmul stayed an ATen bmm or SDPA
  call whose dispatch outweighed the arithmetic (8 bmm + 2 SDPA calls per PLR append; the
  compiled rows above are with them gone).
  Each package is checked against its eager module before it is kept.
"""


def header(args, elapsed_hint: str, floor: tuple[float, float]) -> list[str]:
    cpu = cpu_model()
    return [
        "# Incremental inference: benchmark", "",
        "Written by `python -m model.experiments.inference_bench" + (" --quick" if args.quick else "")
        + (f" --checkpoint {args.checkpoint}" if args.checkpoint else "") + "`"
        + f" on {datetime.date.today().isoformat()}. {elapsed_hint}", "",
        f"- Hardware: {cpu}, {torch.get_num_threads()} torch thread(s) of {__import__('os').cpu_count()} "
        f"visible cores, CPU only. Torch {torch.__version__}, Python {platform.python_version()}. "
        f"Per-op floor on this machine during the run: a (1, 64) add {floor[0]:.1f} us, a "
        f"(1, 64) x (64, 256) linear {floor[1]:.1f} us (median CPU time); batch-1 paths are "
        "hundreds of such ops, so their times scale with this floor.",
        "- Models (random init, timing only): d=64, 2 layers, 2 heads, d_ff=256, max_len=256; "
        "PLR M=2 streams, T=2 steps. Synthetic uniform-random histories.",
        "- (a) full recompute = `recommend` with no cache (encode the window, reason, score); "
        "(b) cached append = `recommend` with a cache of all but the newest item (encode 1 item, "
        "reason over the cached K/V, score). Both return top-10 excluding seen items.",
        "- Time = median over interleaved repetitions, divided by the batch size. CPU ms is the "
        "calling thread's CPU time (with 1 torch thread it is the whole compute and it is not "
        "inflated by other processes on a shared machine); wall ms beside it.",
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cells, shorter timing")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--checkpoint", help="trained checkpoint dir for the window-rule accuracy")
    parser.add_argument("--out", default="docs/inference.md")
    parser.add_argument("--compiled-dir", default="artifacts/compiled",
                        help="where the bench models' compiled graphs are built and loaded")
    parser.add_argument("--no-compiled", action="store_true", help="eager engines only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    floor = op_floor_us()
    lengths, batches = (QUICK_LENGTHS, QUICK_BATCHES) if args.quick else (LENGTHS, BATCHES)
    budget = 0.5 if args.quick else 4.0  # seconds of interleaved repetitions per (n, B) cell
    engines = make_engines(N_ITEMS, None if args.no_compiled else Path(args.compiled_dir))
    print("latency, 1,682 items", file=sys.stderr)
    results = latency_table(engines, lengths, batches, N_ITEMS, budget)
    stored_us = {kind: stored_answer_us(engines[kind], max(lengths)) for kind in KINDS}
    large_batches = (1, 32)
    print("latency, 20,000 items", file=sys.stderr)
    large = latency_table(make_engines(LARGE_ITEMS), (200,), large_batches, LARGE_ITEMS, budget)
    crossover = crossover_rows(engines, 50, budget) if not args.no_compiled else []
    codec = codec_times(engines["plr"], 200)
    parity = {kind: fp16_parity(e, synthetic_histories(200, 32, N_ITEMS, seed=5)) for kind, e in engines.items()}
    accuracy = window_accuracy(args.checkpoint) if args.checkpoint else [
        "Pending: needs a trained checkpoint. Run with `--checkpoint DIR` (any kind trained on "
        "ml-100k by `python -m model.train`); it evaluates test NDCG@10 with the protocol's "
        "last-max_len truncation and with the serving window rule."]
    elapsed = f"The run took {time.perf_counter() - began:.0f} s."
    doc = header(args, elapsed, floor) + [
        "", DESIGN, "## Targets", "", "| target | goal | measured |", "|---|---|---|",
        *targets(results, lengths, stored_us),
        "", "## Per-request compute time", "",
        "`+aoti`: the same model with its AOTInductor graphs attached (model/inference/compiled.py: "
        f"batches of up to {engine_module.COMPILED_MAX_BATCH} users run through them one by "
        "one, larger ones stay eager, so its B = 128 rows are the eager engine's).", "",
        *fmt_latency(results, list(engines), lengths, batches, N_ITEMS),
        "", "Larger catalogue (scoring and top-k grow with it):", "",
        *fmt_latency(large, KINDS, (200,), large_batches, LARGE_ITEMS)[2:],
        "", "## PLR against SASRec, and batching", "", *fmt_ratios(results, lengths, batches),
        "", "## Compiled user by user or one eager batch", "",
        f"Cached append, n=50, per-user CPU ms (median, interleaved): the engine runs batches of "
        f"up to COMPILED_MAX_BATCH = {engine_module.COMPILED_MAX_BATCH} users through the "
        "compiled graphs one by one, larger ones as one eager batch.", "",
        *crossover,
        "", "## Bytes per user (d=64, 2 layers; header 40 B + one row per window item)", "",
        "Row = item (4 B) + K and V of every layer + final hidden (5 x 64 values) + crc32 (4 B).", "",
        "| history length | window items | fp32 bytes | fp16 bytes |", "|---|---|---|---|",
        *bytes_rows(engines["plr"], (10, 50, 100, 200, 256, 300, 1000)), "",
        "Encode / decode (with every crc32 checked) / one-row tail, microseconds, n=200: "
        + "; ".join(f"{dt}: {e:.0f} / {d:.0f} / {t:.0f}" for dt, (e, d, t) in codec.items()) + ".",
        "", "fp16 against fp32 caches, 32 synthetic users, n=200 (random-init bench models): "
        + "; ".join(f"{k}: max relative score difference {w:.1e}, mean top-10 overlap {o:.3f}"
                    for k, (w, o) in parity.items()) + ".",
        "", "## Accuracy cost of the serving window rule", "", *accuracy, "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(doc))
    print("\n".join(doc))


if __name__ == "__main__":
    main()
