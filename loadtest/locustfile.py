"""Open-loop locust driver: one scheduler user fires requests at fixed arrival times (--lt-rate),
each in its own greenlet, so slow responses never delay later sends (no coordinated omission).

Contract: latency is measured from the *scheduled* send time to the end of the response and
written per request to --lt-out (CSV: phase, name, t_sched_s, latency_ms, lateness_ms, status,
cache, model); warm-up requests are phase "warmup" and locust's own stats are reset when warm-up ends.
The run quits itself after the measured window plus drain and cleanup (DELETE of touched users).
With --lt-alternate MODEL[,MODEL...] one run drives several models interleaved in time (slices
of --lt-slice s, traffic.Interleaving): each model has its own users (namespace NS-MODEL) and sees
the full --lt-rate during its slices; the CSV's model column says which model a row belongs to.
Run: locust -f loadtest/locustfile.py --headless -u 1 -r 1 --host URL --lt-workload FILE ...
"""

import csv
import time

import gevent
from gevent.event import Event
from gevent.pool import Pool
from locust import FastHttpUser, events, task

from loadtest.traffic import Interleaving, Traffic, arrival_offsets
from loadtest.workload import load_workload

MAX_IN_FLIGHT = 2000  # beyond this the generator drops arrivals (recorded as status -1)


@events.init_command_line_parser.add_listener
def _add_options(parser):
    parser.add_argument("--lt-workload", env_var="LT_WORKLOAD", default="", help="workload JSON")
    parser.add_argument("--lt-pool", env_var="LT_POOL", default="main")
    parser.add_argument(
        "--lt-model", env_var="LT_MODEL", default="", help="model name; empty = server default"
    )
    parser.add_argument(
        "--lt-alternate", env_var="LT_ALTERNATE", default="",
        help="more models, comma-separated: interleaved with --lt-model in time slices",
    )
    parser.add_argument(
        "--lt-slice", env_var="LT_SLICE", type=float, default=1.0,
        help="seconds per slice when models are interleaved",
    )
    parser.add_argument(
        "--lt-rate", env_var="LT_RATE", type=float, default=20.0, help="offered requests/s"
    )
    parser.add_argument("--lt-warmup", env_var="LT_WARMUP", type=float, default=3.0)
    parser.add_argument("--lt-measure", env_var="LT_MEASURE", type=float, default=10.0)
    parser.add_argument("--lt-drain", env_var="LT_DRAIN", type=float, default=10.0)
    parser.add_argument("--lt-events-share", env_var="LT_EVENTS_SHARE", type=float, default=0.5)
    parser.add_argument("--lt-cache", env_var="LT_CACHE", choices=["on", "off"], default="on")
    parser.add_argument(
        "--lt-arrivals", env_var="LT_ARRIVALS", choices=["constant", "poisson"], default="constant"
    )
    parser.add_argument("--lt-namespace", env_var="LT_NAMESPACE", default="lt")
    parser.add_argument("--lt-seed", env_var="LT_SEED", type=int, default=0)
    parser.add_argument("--lt-cleanup", env_var="LT_CLEANUP", choices=["on", "off"], default="on")
    parser.add_argument(
        "--lt-users", env_var="LT_USERS", type=int, default=0, help="0 = the whole pool"
    )
    parser.add_argument("--lt-prime", env_var="LT_PRIME", choices=["on", "off"], default="off")
    parser.add_argument("--lt-out", env_var="LT_OUT", default="", help="per-request CSV path")


class OpenLoopUser(FastHttpUser):
    # connection pool size: requests beyond it wait for a connection and that wait is counted
    concurrency = 256
    network_timeout = 10.0
    connection_timeout = 5.0

    @task
    def run_step(self):
        opts = self.environment.parsed_options
        workload = load_workload(opts.lt_workload)
        models = [opts.lt_model or None] + [m for m in opts.lt_alternate.split(",") if m]
        if len(models) > 1 and (None in models or len(set(models)) != len(models)):
            raise ValueError(f"--lt-alternate needs --lt-model and distinct models: {models}")
        traffics = [
            Traffic(
                workload["pools"][opts.lt_pool],
                opts.lt_events_share,
                opts.lt_cache == "on",
                model,
                # interleaved models never share a user: each one's events extend only its cache
                namespace=opts.lt_namespace if len(models) == 1 else f"{opts.lt_namespace}-{model}",
                seed=opts.lt_seed,
                n_users=opts.lt_users or None,
                prime=opts.lt_prime == "on",
            )
            for model in models
        ]
        rows = self._drive(traffics, Interleaving(len(traffics), opts.lt_slice, opts.lt_seed),
                           opts)
        if opts.lt_cleanup == "on":
            self._cleanup([user for traffic in traffics for user in traffic.touched_users()])
        if opts.lt_out:
            _write_rows(opts.lt_out, rows)
        self.environment.runner.quit()

    def _drive(self, traffics: list[Traffic], owner: Interleaving, opts) -> list:
        rows, pool, ready = [], Pool(MAX_IN_FLIGHT), {}
        duration = opts.lt_warmup + opts.lt_measure
        start = time.perf_counter() + 0.05
        in_warmup = opts.lt_warmup > 0
        for offset in arrival_offsets(opts.lt_rate, duration, opts.lt_arrivals, opts.lt_seed):
            delay = start + offset - time.perf_counter()
            if delay > 0:
                gevent.sleep(delay)
            if in_warmup and offset >= opts.lt_warmup:
                self.environment.stats.reset_all()  # locust's CSV then covers the measured window
                in_warmup = False
            phase = "warmup" if offset < opts.lt_warmup else "measure"
            traffic = traffics[owner(offset)]
            model = traffic.model or ""
            request = traffic.next_request()
            key = (model, request.user_key)
            gate = ready.setdefault(key, Event()) if request.setup else ready.get(key)
            if pool.full():
                rows.append((phase, request.name, offset, "", "", -1, "", model))
                if request.setup:
                    gate.set()  # a dropped session must not hold its user's later requests
                continue
            pool.spawn(self._send, request, model, start, offset, phase, gate, rows)
        pool.join(timeout=opts.lt_drain)
        for greenlet in list(pool):  # still in flight after the drain: counted as timeouts
            rows.append(("measure", "unfinished", duration, "", "", -2, "", greenlet.args[1]))
        pool.kill(block=False)
        return rows

    def _send(self, request, model, start, offset, phase, gate, rows):
        if gate is not None and not request.setup:
            gate.wait()  # a user's requests follow its session start, as a real client's would
        sent = time.perf_counter()
        try:
            response = self.client.post(request.path, json=request.body, name=request.name)
        finally:
            if request.setup:
                gate.set()  # even on failure: waiting users then see the server's real answer
        done = time.perf_counter()
        status = response.status_code or 0
        cache = _cache_field(response, model) if status == 200 else ""
        rows.append((
            phase,
            request.name,
            round(offset, 6),
            round((done - start - offset) * 1000, 4),
            round((sent - start - offset) * 1000, 4),
            status,
            cache,
            model,
        ))

    def _cleanup(self, user_ids: list[str]):
        pool = Pool(16)
        for user_id in user_ids:
            pool.spawn(self.client.delete, f"/users/{user_id}", name="/users [cleanup]")
        pool.join(timeout=30)


def _cache_field(response, model: str | None) -> str:
    # /events answers "cache" for the default model; "caches" holds the one this step drives
    try:
        body = response.json()
    except ValueError:
        return "unparsed"
    return str(body.get("caches", {}).get(model) or body.get("cache", ""))


def _write_rows(path: str, rows: list):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([
            "phase",
            "name",
            "t_sched_s",
            "latency_ms",
            "lateness_ms",
            "status",
            "cache",
            "model",
        ])
        writer.writerows(rows)
