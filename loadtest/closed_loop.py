"""Closed-loop sequential latency: `c` keep-alive connections, each sending its next request as
soon as the previous answer arrives, against several targets in alternating rounds.

Contract: `measure(targets, concurrency, ...)` cycles target by target for `rounds` rounds of
`round_s` seconds each (so slow drift of a noisy machine hits every target alike), and returns per
target the latencies in seconds and the non-2xx count. The client is raw asyncio HTTP/1.1 over
keep-alive sockets (~20 us a request on one core), so it adds far less than the server's own
floor. Bodies are prepared once per target (a list cycled in order), never built in the loop.
Run: python -m loadtest.closed_loop --help
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Target:
    """One thing to measure: a method + path on a server, with bodies sent in turn."""

    name: str
    url: str  # base, e.g. http://127.0.0.1:8000
    path: str
    bodies: list[bytes] = field(default_factory=lambda: [b""])
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)

    def requests(self) -> list[bytes]:
        host = urlsplit(self.url).netloc
        extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        out = []
        for body in self.bodies:
            head = (f"{self.method} {self.path} HTTP/1.1\r\nHost: {host}\r\n{extra}"
                    f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n")
            out.append(head.encode() + body)
        return out


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)  # seconds, every 2xx and non-2xx answer
    errors: int = 0  # non-2xx answers
    statuses: dict[int, int] = field(default_factory=dict)


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response with Content-Length; return its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    if length:
        await reader.readexactly(length)
    return status


async def _connection(target: Target, payloads, until: float, result: Result) -> None:
    parts = urlsplit(target.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        clock = time.perf_counter
        while clock() < until:
            payload = next(payloads)
            started = clock()
            writer.write(payload)
            status = await _read_response(reader)
            result.latencies.append(clock() - started)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if not 200 <= status < 300:
                result.errors += 1
    finally:
        writer.close()


async def _run(target: Target, concurrency: int, seconds: float, result: Result) -> None:
    payloads = itertools.cycle(target.requests())  # shared: connections take turns through it
    until = time.perf_counter() + seconds
    await asyncio.gather(*(_connection(target, payloads, until, result)
                           for _ in range(concurrency)))


def measure(targets: list[Target], concurrency: int, rounds: int, round_s: float,
            warmup_s: float = 1.0) -> dict[str, Result]:
    """Alternate targets for `rounds` rounds; a short unrecorded warm-up precedes each slot."""
    results = {t.name: Result() for t in targets}

    async def main():
        for _ in range(rounds):
            for t in targets:
                if warmup_s > 0:
                    await _run(t, concurrency, warmup_s, Result())
                await _run(t, concurrency, round_s, results[t.name])

    asyncio.run(main())
    return results


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def summary(result: Result, seconds: float) -> dict:
    lat = result.latencies
    if not lat:
        return {"n": 0, "errors": result.errors}
    return {"n": len(lat), "errors": result.errors, "rps": len(lat) / seconds,
            "p50_ms": 1000 * percentile(lat, 50), "p90_ms": 1000 * percentile(lat, 90),
            "p99_ms": 1000 * percentile(lat, 99), "statuses": result.statuses}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", action="append", required=True,
                   help="NAME=URL PATH JSON_BODY (repeatable), e.g. "
                        "'plr=http://127.0.0.1:8000 /recommend {\"user_id\":\"u1\"}'")
    p.add_argument("-c", "--concurrency", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--round-s", type=float, default=3.0)
    args = p.parse_args(argv)
    targets = []
    for spec in args.target:
        name, rest = spec.split("=", 1)
        url, path, body = rest.split(" ", 2)
        targets.append(Target(name, url, path, [body.encode()]))
    results = measure(targets, args.concurrency, args.rounds, args.round_s)
    for name, r in results.items():
        print(name, json.dumps(summary(r, args.rounds * args.round_s)))


if __name__ == "__main__":
    main()
