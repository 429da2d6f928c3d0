"""What to send next: the request mix and arrival schedule of one load-test step (no I/O).

Contract: Traffic.next_request() picks /events vs /recommend by `events_share`, a user by Zipf
rank, and returns a session-start request on a user's first touch (cache on: /recommend with the
full history; cache off: /events seeding the history), so steady requests meet warm server state.
Request names ending in "]" (sessions, seeds, cleanup) are setup traffic, reported separately.
Interleaving(n, slice_s) says which of n traffic streams (one per model) owns a scheduled arrival.
"""

import random
from dataclasses import dataclass, field

from loadtest.workload import ZipfChooser

RECOMMEND, EVENTS = "/recommend", "/events"
SESSION, SEED = "/recommend [session]", "/events [seed]"
MAX_EVENT_ITEMS = 1000  # contract limit on item_ids per /events request


@dataclass
class Request:
    name: str  # stats key
    path: str
    body: dict
    user_key: int  # pool index of the user
    setup: bool = False  # session start or seed: gates later requests of the same user


@dataclass
class _UserState:
    history: list  # what the client believes the server stores (cache off sends it)
    future_pos: int = 0
    started: bool = False


@dataclass
class Traffic:
    pool: dict
    events_share: float = 0.5
    use_cache: bool = True
    model: str | None = None
    k: int = 10
    namespace: str = "lt"
    seed: int = 0
    n_users: int | None = None  # use only the pool's first n users (None: all)
    prime: bool = False  # first n requests start users 0..n-1 in order (warm-up covers every user)
    _states: dict = field(default_factory=dict, init=False)

    def __post_init__(self):
        n = (
            len(self.pool["users"])
            if self.n_users is None
            else min(self.n_users, len(self.pool["users"]))
        )
        self._chooser = ZipfChooser(n, self.pool.get("zipf_s", 1.0), self.seed)
        self._rng = random.Random(f"mix:{self.seed}")
        self._to_prime = list(range(n)) if self.prime else []

    def user_id(self, user_key: int) -> str:
        return f"{self.namespace}:{self.pool['users'][user_key]['id']}"

    def touched_users(self) -> list[str]:
        return [self.user_id(key) for key, state in self._states.items() if state.started]

    def next_request(self) -> Request:
        user_key = self._to_prime.pop(0) if self._to_prime else self._chooser.choose()
        state = self._states.get(user_key)
        if state is None:
            state = self._states[user_key] = _UserState(
                list(self.pool["users"][user_key]["history"])
            )
        is_event = self._rng.random() < self.events_share
        if not state.started and (self.use_cache or is_event or self.prime):
            state.started = True
            return self._session(user_key, state)
        return self._event(user_key, state) if is_event else self._recommend(user_key, state)

    def _session(self, user_key: int, state: _UserState) -> Request:
        user_id = self.user_id(user_key)
        if self.use_cache:
            body = self._recommend_body(user_id) | {"history": list(state.history)}
            return Request(SESSION, RECOMMEND, body, user_key, setup=True)
        items = state.history[-MAX_EVENT_ITEMS:]
        return Request(SEED, EVENTS, {"user_id": user_id, "item_ids": items}, user_key, setup=True)

    def _event(self, user_key: int, state: _UserState) -> Request:
        item = self._next_item(user_key, state)
        state.history.append(item)
        body = {"user_id": self.user_id(user_key), "item_ids": [item]}
        return Request(EVENTS, EVENTS, body, user_key)

    def _recommend(self, user_key: int, state: _UserState) -> Request:
        body = self._recommend_body(self.user_id(user_key))
        if not self.use_cache:
            # the parity path: full recompute from the history the request carries
            body |= {"history": list(state.history), "use_cache": False}
        return Request(RECOMMEND, RECOMMEND, body, user_key)

    def _recommend_body(self, user_id: str) -> dict:
        body = {"user_id": user_id, "k": self.k}
        if self.model:
            body["model"] = self.model
        return body

    def _next_item(self, user_key: int, state: _UserState) -> str:
        # the user's real next items; once used up, replay their history (still real item ids)
        user = self.pool["users"][user_key]
        source = user["future"] + user["history"]
        item = source[state.future_pos % len(source)]
        state.future_pos += 1
        return item


class Interleaving:
    """Which of `n` streams owns the arrival scheduled at `offset` s: time is cut into slices of
    `slice_s`, and each block of n consecutive slices gives every stream one slice, in a seeded
    random order per block. Streams measured this way share the machine's drift on every scale
    above ~n slices, and a periodic disturbance cannot line up with one stream's slices (a fixed
    ABBA order could alias one). n = 1: every arrival is stream 0."""

    def __init__(self, n: int, slice_s: float = 1.0, seed: int = 0):
        if n < 1:
            raise ValueError(f"need at least one stream, got {n}")
        if slice_s <= 0:
            raise ValueError(f"slice_s must be > 0, got {slice_s}")
        self.n, self.slice_s = n, slice_s
        self._rng = random.Random(f"interleave:{seed}")
        self._order: list[int] = []  # stream of each slice so far, blocks appended as needed

    def __call__(self, offset: float) -> int:
        if self.n == 1:
            return 0
        slot = int(offset // self.slice_s)
        while len(self._order) <= slot:
            block = list(range(self.n))
            self._rng.shuffle(block)
            self._order += block
        return self._order[slot]


def arrival_offsets(rate: float, duration_s: float, kind: str = "constant", seed: int = 0):
    """Scheduled send times (s from start) of an open-loop stream; they never wait for responses.
    constant: evenly spaced (exact rate unless the generator lags); poisson: exponential gaps."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    if kind not in ("constant", "poisson"):
        raise ValueError(f"arrivals must be constant or poisson, got {kind!r}")
    rng, t, i = random.Random(f"arrivals:{seed}"), 0.0, 0
    while True:
        t = i / rate if kind == "constant" else t + rng.expovariate(rate)
        if t >= duration_s:
            return
        yield t
        i += 1
