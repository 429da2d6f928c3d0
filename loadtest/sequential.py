"""Closed-loop sequential latency, side by side: each model's /recommend and /events against the
empty FastAPI floor, at concurrency 1 and 4, the targets alternating round by round.

Contract: `run(servers, workload, models, ...)` stores real users (the workload's `near_max`
pool: histories of max_len items, 50 for the default models) with a cache and state for every
model, then measures with `loadtest.closed_loop` (c keep-alive connections, next request as soon
as the answer is back) and returns one row per (route, target, concurrency) with p50/p90/p99,
throughput and the ratio to the floor measured in the same rounds, plus the server's stage
waterfall per route (its GET /metrics histograms, diffed). /recommend is by user_id (the stored
state answers); /events appends one item of the user's real future to a stored user. With
`solo_url`, a server serving the first model alone is measured in the same rounds too.
"""

from __future__ import annotations

import json
import urllib.request

from loadtest import prom
from loadtest.closed_loop import Target, measure, percentile

N_USERS = 64  # cycled in order: at c=4 no two in-flight requests share a user


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def prepare_users(server_url: str, pool: dict, models: list[str], prefix: str) -> list[dict]:
    """Store N_USERS real histories (authoritative /recommend per model: cache + state each)."""
    users = []
    for i, user in enumerate(pool["users"][:N_USERS]):
        user_id = f"{prefix}{i}"
        for model in models:
            _post(server_url + "/recommend", {"user_id": user_id, "history": user["history"],
                                              "model": model})
        users.append({"user_id": user_id, "future": user["future"] or user["history"][-1:]})
    return users


def request_bodies(users: list[dict], kind: str, model: str | None = None) -> list[bytes]:
    out = []
    rounds = max(len(u["future"]) for u in users)
    for r in range(rounds):  # user by user, then the next future item of each
        for u in users:
            if kind == "recommend":
                body = {"user_id": u["user_id"], "k": 10}
                if model:
                    body["model"] = model
            else:
                body = {"user_id": u["user_id"], "item_ids": [u["future"][r % len(u["future"])]]}
            out.append(json.dumps(body).encode())
    return out


def _row(route: str, target: str, c: int, result, seconds: float, floor) -> dict:
    lat = result.latencies
    p50 = 1000 * percentile(lat, 50) if lat else None
    floor_p50 = 1000 * percentile(floor.latencies, 50) if floor and floor.latencies else None
    return {
        "route": route, "target": target, "concurrency": c, "n": len(lat),
        "errors": result.errors, "rps": len(lat) / seconds if seconds else None,
        "p50_ms": p50, "p90_ms": 1000 * percentile(lat, 90) if lat else None,
        "p99_ms": 1000 * percentile(lat, 99) if lat else None,
        "vs_floor_p50": p50 / floor_p50 if p50 and floor_p50 else None,
    }


def solo_name(model: str) -> str:
    """The target name of the server that serves `model` alone."""
    return f"{model}-alone"


def run(server_url: str, empty_url: str, workload: dict, models: list[str],
        concurrencies=(1, 4), rounds: int = 5, round_s: float = 4.0,
        metrics=lambda: "", solo_url: str | None = None) -> dict:
    """`solo_url`: a second server serving models[0] alone, measured in the same rounds (its
    /events advances one model instead of every compared one)."""
    pool = workload["pools"]["near_max"]
    users = prepare_users(server_url, pool, models, "seq")
    solo = solo_name(models[0])
    if solo_url:
        prepare_users(solo_url, pool, models[:1], "seq")
    rows, stages = [], []
    for c in concurrencies:
        before = metrics()
        targets = [Target("floor", empty_url, "/recommend", request_bodies(users, "recommend"))]
        targets += [Target(m, server_url, "/recommend", request_bodies(users, "recommend", m))
                    for m in models]
        if solo_url:
            targets.append(Target(solo, solo_url, "/recommend",
                                  request_bodies(users, "recommend", models[0])))
        results = measure(targets, c, rounds, round_s)
        seconds = rounds * round_s
        for t in targets:
            rows.append(_row("/recommend", t.name, c, results[t.name], seconds, results["floor"]))
        events = [Target("floor", empty_url, "/events", request_bodies(users, "events")),
                  Target("server", server_url, "/events", request_bodies(users, "events"))]
        if solo_url:
            events.append(Target(solo, solo_url, "/events", request_bodies(users, "events")))
        ev = measure(events, c, rounds, round_s)
        for t in events:
            rows.append(_row("/events", t.name, c, ev[t.name], seconds, ev["floor"]))
        after = metrics()
        if before and after:
            stages += [{**s, "concurrency": c} for s in prom.stage_table(before, after)
                       if s["metric"] == "plr_stage_seconds"]
    return {"rows": rows, "stages": stages, "users": len(users), "rounds": rounds,
            "round_s": round_s, "concurrencies": list(concurrencies),
            "solo": solo if solo_url else None}
