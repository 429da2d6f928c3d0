"""PNG plots of the analyses summary (matplotlib, Agg): one file per analysis that has data.

`write_plots(summary, out_dir, grid)` writes robustness.png, streams.png, width_depth.png and
ablations.png into out_dir; a plot whose analysis has no data is deleted rather than left stale.
Plots only show numbers that are in the summary (and so in the markdown tables).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LABELS = {"ndcg@10": "NDCG@10", "recall@10": "Recall@10", "recall@20": "Recall@20"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def plot_robustness(summary: dict, path: Path) -> None:
    plt = _pyplot()
    rows = summary["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    x = np.arange(len(rows))
    for ax, metric in zip(axes, ("ndcg@10", "recall@10")):
        clean = [r[f"clean_{metric}"] for r in rows]
        corrupted = [r[f"corrupted_{metric}"] for r in rows]
        ax.bar(x - 0.2, clean, 0.4, label="clean")
        ax.bar(x + 0.2, [c[0] for c in corrupted], 0.4, yerr=[c[1] for c in corrupted],
               label=f"{100 * summary['drop_fraction']:.0f} % dropped")
        ax.set_xticks(x, [r["model"] for r in rows])
        ax.set_title(f"test {LABELS[metric]}")
    axes[0].legend(loc="lower center")
    _save(fig, path)


def plot_streams(streams: dict, trained: list[dict], path: Path) -> None:
    """Stream distances against depth (t = 0 is the start h0 + tau_m), log scale: each
    checkpoint solid, each trained variant (mean over seeds) dashed."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    keys = (("cosine", "cosine distance"), ("l2", "L2 distance"), ("kl", "KL"))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for name, s in (streams or {}).get("models", {}).items():
        points = [s["start"], *s["steps"]]
        for ax, (key, _) in zip(axes, keys):
            ax.plot(range(len(points)), [p[key] for p in points], "o-", label=f"{name} checkpoint")
    for row in trained:
        for ax, (key, _) in zip(axes, keys):
            ax.plot(range(len(row[key])), row[key], "s--", label=row["name"])
    for ax, (_, title) in zip(axes, keys):
        ax.set_xlabel("reasoning step t (0 = start)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{title} between streams")
        if all(v > 0 for line in ax.get_lines() for v in line.get_ydata()):
            ax.set_yscale("log")  # a collapse spans orders of magnitude
    axes[0].legend(fontsize=7)
    _save(fig, path)


def plot_width_depth(rows: dict, grid, path: Path) -> None:
    """Heatmaps of valid and test NDCG@10 over M x T; cells without a run are grey, 'not run'."""
    plt = _pyplot()
    streams, steps = grid
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, metric, title in zip(axes, ("valid_ndcg@10", "ndcg@10"),
                                 ("valid NDCG@10", "test NDCG@10")):
        values = np.full((len(streams), len(steps)), np.nan)
        for i, m in enumerate(streams):
            for j, t in enumerate(steps):
                row = rows[f"M={m}, T={t}"]
                values[i, j] = row[metric][0] if row["n"] else np.nan
        ax.set_facecolor("lightgrey")
        image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis")
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, "not run" if np.isnan(v) else f"{v:.4f}", ha="center", va="center",
                    color="black" if np.isnan(v) else "white", fontsize=8)
        ax.set_xticks(range(len(steps)), [f"T={t}" for t in steps])
        ax.set_yticks(range(len(streams)), [f"M={m}" for m in streams])
        ax.set_title(title)
        fig.colorbar(image, ax=ax, shrink=0.8)
    _save(fig, path)


def plot_ablations(rows: dict, path: Path) -> None:
    plt = _pyplot()
    done = {name: r for name, r in rows.items() if r["n"]}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, metric in zip(axes, ("ndcg@10", "recall@20")):
        ax.bar(range(len(done)), [r[metric][0] for r in done.values()],
               yerr=[r[metric][1] for r in done.values()])
        ax.set_xticks(range(len(done)), list(done), rotation=20, ha="right", fontsize=8)
        ax.set_title(f"test {LABELS[metric]}")
    _save(fig, path)


def write_plots(summary: dict, out_dir: Path, grid) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {
        "robustness.png": (summary["robustness"] is not None,
                           lambda p: plot_robustness(summary["robustness"], p)),
        "streams.png": (summary["streams"] is not None or bool(summary["trained_streams"]),
                        lambda p: plot_streams(summary["streams"], summary["trained_streams"], p)),
        "width_depth.png": (any(r["n"] for r in summary["width_depth"].values()),
                            lambda p: plot_width_depth(summary["width_depth"], grid, p)),
        "ablations.png": (any(r["n"] for r in summary["ablations"].values()),
                          lambda p: plot_ablations(summary["ablations"], p)),
    }
    for name, (has_data, draw) in plots.items():
        if has_data:
            draw(out_dir / name)
        else:
            (out_dir / name).unlink(missing_ok=True)
