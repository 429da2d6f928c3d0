"""Workload file: pools of simulated users whose histories come from a real dataset.

Contract: a pool lists users most popular first (rank 0 = hottest under Zipf), each with a
`history` (sent at session start) and a `future` (items its events append, in order); item ids are
the dataset's external ids. The file is plain JSON so locust processes never load the dataset.
"""

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

FORMAT_VERSION = 1


@dataclass
class PoolSpec:
    name: str
    length: int | None  # None: each user's own history; else every history cut to this length
    n_users: int | None = None  # fixed-length pools replicate real users up to this count
    n_future: int = 32
    zipf_s: float = 1.0


def zipf_cum_weights(n: int, s: float) -> list[float]:
    """Cumulative weights of P(rank i) ~ 1 / (i + 1)^s; s = 0 is uniform."""
    total, cum = 0.0, []
    for rank in range(n):
        total += 1.0 / (rank + 1) ** s
        cum.append(total)
    return cum


class ZipfChooser:
    """Draws pool indices (ranks) with Zipf popularity; bisect over cumulative weights, O(log n)."""

    def __init__(self, n: int, s: float, seed: int = 0):
        if n <= 0:
            raise ValueError("ZipfChooser needs at least one user")
        self._ranks = range(n)
        self._cum = zipf_cum_weights(n, s)
        self._rng = random.Random(seed)

    def choose(self) -> int:
        return self._rng.choices(self._ranks, cum_weights=self._cum)[0]


def _split_user(items: list[str], n_future: int) -> tuple[list[str], list[str]]:
    # at least half of each real sequence stays history, so short users still start with context
    n_future = min(n_future, len(items) // 2)
    return items[: len(items) - n_future], items[len(items) - n_future :]


def session_pool(sequences: dict[str, list[str]], spec: PoolSpec, rng: random.Random) -> list[dict]:
    """Every user with their own history; popularity rank is a seeded shuffle, not by length."""
    user_ids = sorted(sequences)
    rng.shuffle(user_ids)
    users = []
    for user_id in user_ids:
        history, future = _split_user(sequences[user_id], spec.n_future)
        if history:
            users.append({"id": user_id, "history": history, "future": future})
    return users


def fixed_length_pool(
    sequences: dict[str, list[str]], spec: PoolSpec, rng: random.Random
) -> list[dict]:
    """Users whose history is exactly spec.length items; real users are replicated ("id.replica2") when
    fewer than spec.n_users are long enough, so each pool user still has a real sequence."""
    need = spec.length + 1
    eligible = sorted(u for u, items in sequences.items() if len(items) >= need)
    if not eligible:
        raise ValueError(f"pool {spec.name!r}: no user has {need}+ items")
    rng.shuffle(eligible)
    n_users = spec.n_users or len(eligible)
    users = []
    for i in range(n_users):
        user_id = eligible[i % len(eligible)]
        items = sequences[user_id]
        replica = i // len(eligible)
        future = items[spec.length : spec.length + spec.n_future]
        users.append({
            # The suffix must be legal in the API's user ids ([A-Za-z0-9._:@-]; "~" got 422s).
            "id": user_id if replica == 0 else f"{user_id}.replica{replica + 1}",
            "history": items[: spec.length],
            "future": future,
        })
    return users


def build_workload(
    sequences: dict[str, list[str]],
    specs: list[PoolSpec],
    source: str,
    synthetic: bool,
    seed: int = 0,
) -> dict:
    """sequences: user id -> external item ids, oldest first."""
    pools = {}
    for spec in specs:
        rng = random.Random(f"{seed}:{spec.name}")
        build = session_pool if spec.length is None else fixed_length_pool
        pools[spec.name] = {
            "zipf_s": spec.zipf_s,
            "length": spec.length,
            "users": build(sequences, spec, rng),
        }
    return {
        "format": FORMAT_VERSION,
        "source": source,
        "synthetic": synthetic,
        "seed": seed,
        "pools": pools,
    }


def dataset_sequences(dataset, allowed_items: set[str] | None = None) -> dict[str, list[str]]:
    """SequenceDataset -> user id -> external ids, dropping items a checkpoint cannot score
    (its vocabulary may come from a filtered copy of the data; unknown ids would be 422s)."""
    out = {}
    for user_id, seq in zip(dataset.user_ids, dataset.sequences):
        items = dataset.vocab.to_external(seq)
        if allowed_items is not None:
            items = [item for item in items if item in allowed_items]
        if items:
            out[user_id] = items
    return out


def default_specs(max_len: int, n_users: int = 300) -> list[PoolSpec]:
    """main: all users, Zipf; len10/len190: /events at two history lengths (the long one may pass
    max_len: the serving window is part of what is measured); near_max: cache on vs off."""
    return [
        PoolSpec("main", None, zipf_s=1.0),
        PoolSpec("len10", 10, n_users=n_users, n_future=16, zipf_s=0.0),
        PoolSpec("len190", 190, n_users=n_users, n_future=16, zipf_s=0.0),
        PoolSpec("near_max", max_len, n_users=n_users, n_future=16, zipf_s=0.0),
    ]


def save_workload(workload: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(workload, separators=(",", ":")))


def load_workload(path) -> dict:
    workload = json.loads(Path(path).read_text())
    if workload.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: workload format {workload.get('format')}, expected {FORMAT_VERSION}"
        )
    return workload


def main(argv=None):
    from model.data import build_dataset, load_dataset  # the runner and tests avoid this import

    parser = argparse.ArgumentParser(
        description="Precompute a load-test workload file from a dataset"
    )
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--max-len", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    sequences = dataset_sequences(build_dataset(load_dataset(args.dataset)))
    workload = build_workload(
        sequences, default_specs(args.max_len), args.dataset, False, args.seed
    )
    save_workload(workload, args.out)
    print({name: len(pool["users"]) for name, pool in workload["pools"].items()})


if __name__ == "__main__":
    main()
