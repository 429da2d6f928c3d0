"""PNG plots of the results summary (matplotlib, Agg): the grid and the "where PLR helps" buckets.

`write_plots(summary, out_dir)` writes grid.png and buckets-<dataset>.png and returns their paths;
a plot without data is deleted rather than left stale. Plots show only numbers that are in the
summary (and so in docs/results.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .analyses_plots import _pyplot, _save


def plot_grid(summary: dict, path: Path) -> bool:
    datasets = [d for d, data in summary.items() if data["rows"]]
    if not datasets:
        return False
    plt = _pyplot()
    models = ["sasrec", "rearec-erl", "rearec-prl", "plr"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        means, stds = [], []
        for d in datasets:
            row = next((r for r in summary[d]["rows"] if r["model"] == model), None)
            means.append(row["ndcg@10"][0] if row else np.nan)
            stds.append(row["ndcg@10"][1] if row else 0.0)
        ax.bar(np.arange(len(datasets)) + (i - 1.5) * width, means, width, yerr=stds,
               label=model, capsize=2)
    ax.set_xticks(np.arange(len(datasets)), datasets)
    ax.set_ylabel("test NDCG@10 (mean +- std over seeds)")
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def plot_buckets(name: str, buckets: dict, path: Path) -> bool:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(buckets), figsize=(5 * len(buckets), 3.6))
    for ax, part in zip(np.atleast_1d(axes), buckets.values()):
        rows = part["rows"]
        x = np.arange(len(rows))
        for model in rows[0]["ndcg@10"]:
            ax.plot(x, [r["ndcg@10"][model] for r in rows], marker="o", label=model)
        ax.set_xticks(x, [f"{r['bucket']}\n(n={r['users']})" for r in rows], fontsize=7)
        ax.set_xlabel(part["label"], fontsize=8)
        ax.set_ylabel("test NDCG@10")
        ax.legend(fontsize=7)
    fig.suptitle(name)
    _save(fig, path)
    return True


def write_plots(summary: dict, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    plans = [("grid.png", lambda p: plot_grid(summary, p))]
    plans += [(f"buckets-{name}.png", lambda p, n=name, d=data: bool(d["buckets"])
               and plot_buckets(n, d["buckets"], p)) for name, data in summary.items()]
    for file, plot in plans:
        path = out_dir / file
        if plot(path):
            written.append(path)
        else:
            path.unlink(missing_ok=True)
    return written
