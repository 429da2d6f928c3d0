"""The steps of a load-test run, per mode. A step = one locust run at one offered rate.

Contract: every model on the ladder runs each rate (plr@r1, sasrec@r1, plr@r2, ...); while two or
more are on it, their steps at a rate run as one interleaved step (plan.interleaved: the models
take turns in 1 s slices, so a drift of the machine weighs on all of them alike), and a target's
ladder stops after two SLO failures in a row (the runner decides);
the floor ladder runs the same traffic against the empty app; cache and length steps are fixed.
Step names are unique and stable, so a rerun can skip steps whose result file exists.
"""

import math
from dataclasses import asdict, dataclass, replace

MAX_EVENTS_PER_USER = 4  # length steps: keep each history within a few items of its start


@dataclass(frozen=True)
class Step:
    name: str
    group: str  # ladder | floor | cache | length
    target: str  # server | empty
    model: str | None
    rate: float
    pool: str
    events_share: float
    cache: str = "on"
    users: int = 0  # 0 = the whole pool
    prime: bool = False
    warmup_s: float = 3.0
    measure_s: float = 8.0
    alternate: tuple[str, ...] = ()  # more models, interleaved with `model` (plan.interleaved)
    slice_s: float = 1.0  # seconds per model turn when interleaved

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Mode:
    warmup_s: float
    measure_s: float
    ladder: tuple[float, ...]  # model rates, ascending
    floor: tuple[float, ...]  # empty-endpoint rates, ascending
    cache_rates: tuple[float, ...]
    length_rate: float
    length_repeats: int
    # A ladder step measures at least this many requests (longer windows at low rates): a p50 of
    # ~300 requests (30 s at 10 req/s, ~180 of them steady) moved the PLR/SASRec ratio by ~10 %
    # between runs of the same code, more than the 6 % it is judged by.
    min_requests: int = 0


# short: ~5 min smoke of every measurement; full: ~50 min (2026-12-01), the published numbers.
# The full ladders reach past 1280 req/s: on a faster 2-core VM of the same kind both models
# still passed 1920 req/s (p99 ~6 ms), and a ladder that stops below capacity measures none.
MODES = {
    "short": Mode(
        warmup_s=3.0, measure_s=6.0, ladder=(25, 50, 100, 200, 400),
        floor=(100, 200, 400, 800, 1600), cache_rates=(20,), length_rate=40, length_repeats=1,
    ),
    "full": Mode(
        warmup_s=10.0, measure_s=30.0,
        ladder=(10, 20, 40, 60, 80, 120, 160, 240, 320, 480, 640, 800, 960, 1280, 1600, 1920,
                2560),
        floor=(40, 80, 160, 320, 480, 640, 960, 1280, 1920, 2560, 3200), cache_rates=(20, 40),
        length_rate=40, length_repeats=2, min_requests=900,
    ),
}


def _rate_tag(rate: float) -> str:
    return f"{rate:g}".replace(".", "p")


def ladder_step(mode: Mode, model: str | None, rate: float, target: str = "server") -> Step:
    group = "ladder" if target == "server" else "floor"
    label = model if target == "server" else "empty"
    return Step(
        f"{group}-{label}-r{_rate_tag(rate)}",
        group,
        target,
        model,
        rate,
        "main",
        0.5,
        warmup_s=mode.warmup_s,
        measure_s=max(mode.measure_s, mode.min_requests / rate),
    )


def interleaved(steps: list[Step]) -> Step:
    """One step running `steps` (the same rate and traffic for different models) interleaved in
    time: the models take turns in slices of `slice_s` (traffic.Interleaving), each with its own
    users, and each still gets its own step's warm-up and measured seconds (the step lasts n times
    as long). The runner splits its requests back into one result per model.

    Why: in the full run of 2026-12-01 10:11 (each model's step in two halves, ABBA), one
    model's p50 at a rate moved by up to 19 % between its halves, tens of seconds apart: more
    than the 6 % the PLR/SASRec ratio is judged by. Turns of 1 s share every slower drift."""
    first, n = steps[0], len(steps)
    if n < 2 or any((s.rate, s.pool, s.target, s.group) != (first.rate, first.pool, first.target,
                                                           first.group) for s in steps):
        raise ValueError("interleave two or more steps of one rate, pool and target")
    models = [s.model for s in steps]
    if None in models or len(set(models)) != n:
        raise ValueError(f"interleaved steps need distinct named models, got {models}")
    return replace(first, name=f"{first.group}-{'+'.join(models)}-r{_rate_tag(first.rate)}",
                   alternate=tuple(models[1:]), warmup_s=first.warmup_s * n,
                   measure_s=first.measure_s * n)


def alone(step: Step) -> Step:
    """`step` run by itself: the rate of an interleaved step where a model failed, again."""
    return replace(step, name=f"{step.name}-alone")


def cache_steps(mode: Mode, models: list[str]) -> list[Step]:
    """Recommend-only at histories of max_len, cache on vs off, models alternating."""
    steps = []
    for rate in mode.cache_rates:
        users = int(rate * mode.warmup_s)  # every user's session falls inside warm-up
        for cache in ("on", "off"):
            for model in models:
                steps.append(
                    Step(
                        f"cache-{model}-{cache}-r{_rate_tag(rate)}",
                        "cache",
                        "server",
                        model,
                        rate,
                        "near_max",
                        0.0,
                        cache,
                        users=users,
                        prime=cache == "on",
                        warmup_s=mode.warmup_s,
                        measure_s=mode.measure_s,
                    )
                )
    return steps


def length_steps(mode: Mode, model: str, short_pool: str, long_pool: str) -> list[Step]:
    """/events only at two history lengths, alternating; enough users that each gets only
    MAX_EVENTS_PER_USER events, and a warm-up long enough to start every one of them."""
    rate = mode.length_rate
    users = math.ceil(rate * mode.measure_s / MAX_EVENTS_PER_USER)
    warmup = max(mode.warmup_s, users / rate + 1.0)
    steps = []
    for rep in range(mode.length_repeats):
        for pool in (short_pool, long_pool):
            steps.append(
                Step(
                    f"length-{pool}-rep{rep}",
                    "length",
                    "server",
                    model,
                    rate,
                    pool,
                    1.0,
                    users=users,
                    prime=True,
                    warmup_s=warmup,
                    measure_s=mode.measure_s,
                )
            )
    return steps


def users_needed(mode: Mode) -> int:
    """Pool size the fixed-length pools need for this mode's length and cache steps."""
    length_users = math.ceil(mode.length_rate * mode.measure_s / MAX_EVENTS_PER_USER)
    cache_users = int(max(mode.cache_rates) * mode.warmup_s)
    return max(length_users, cache_users)
