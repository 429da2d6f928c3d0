"""Print a dataset's size and sequence-length statistics before and after filtering.

Usage: python -m model.data.summary --dataset ml-100k [--k-core 5] [--dedupe first]
--dataset takes anything load_dataset accepts (a registry name or FORMAT:PATH[?options]).
"""

import argparse

from model.data.loaders import load_dataset
from model.data.preprocess import DEDUPE_POLICIES, build_dataset


def format_stats(stats: dict) -> str:
    lines = []
    for key, value in stats.items():
        if key == "density":
            shown = f"{value:.6f}"
        else:
            shown = f"{value:,.2f}" if isinstance(value, float) else f"{value:,}"
        lines.append(f"  {key:<16}{shown}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="registry name or FORMAT:PATH[?options]")
    parser.add_argument(
        "--k-core", type=int, default=0, help="min events per user and item (0 = off)"
    )
    parser.add_argument("--dedupe", choices=DEDUPE_POLICIES, default="keep_all")
    args = parser.parse_args(argv)
    log = load_dataset(args.dataset)
    raw = build_dataset(log)
    print(f"{log.name}: raw rows {len(log):,}")
    print(format_stats(raw.stats()))
    if args.k_core or args.dedupe != "keep_all":
        dataset = build_dataset(log, k_core=args.k_core, dedupe=args.dedupe)
        print(f"after dedupe={args.dedupe}, k_core={args.k_core}:")
        print(format_stats(dataset.stats()))


if __name__ == "__main__":
    main()
