"""Prometheus text scraped before and after a step -> what happened during the step.

Contract: parse() reads the text exposition format into {(name, labels): value}; histograms()
groups `_bucket`/`_sum`/`_count` series; diff() subtracts two scrapes of the same server; a
histogram whose name ends in `_seconds` is reported in ms. Quantiles interpolate linearly inside
a bucket, as PromQL's histogram_quantile does.
"""

import math
import re
from dataclasses import dataclass

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> dict[tuple, float]:
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            continue
        name, _, labels, value = match.groups()
        key = (name, tuple(sorted(_LABEL.findall(labels or ""))))
        samples[key] = float(value)
    return samples


@dataclass
class Histogram:
    buckets: list[tuple[float, float]]  # (upper bound, cumulative count), ascending, last is +Inf
    total: float  # sum of observations
    count: float

    def quantile(self, q: float) -> float | None:
        if self.count <= 0:
            return None
        target, lower, below = q * self.count, 0.0, 0.0
        for upper, cumulative in self.buckets:
            if cumulative >= target:
                if math.isinf(upper):
                    return lower  # beyond the last finite bound: its edge is all we know
                inside = cumulative - below
                return lower + (upper - lower) * ((target - below) / inside if inside else 1.0)
            lower, below = upper, cumulative
        return lower

    def mean(self) -> float | None:
        return self.total / self.count if self.count > 0 else None


def histograms(samples: dict[tuple, float]) -> dict[tuple, Histogram]:
    """{(base name, labels without le): Histogram}"""
    parts: dict[tuple, dict] = {}
    for (name, labels), value in samples.items():
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix):
                base = name[: -len(suffix)]
                rest = tuple(kv for kv in labels if kv[0] != "le")
                entry = parts.setdefault((base, rest), {"buckets": [], "sum": None, "count": None})
                if suffix == "_bucket":
                    le = dict(labels).get("le")
                    if le is not None:
                        entry["buckets"].append((float(le), value))
                else:
                    entry[suffix[1:]] = value
    return {
        key: Histogram(sorted(p["buckets"]), p["sum"] or 0.0, p["count"] or 0.0)
        for key, p in parts.items()
        if p["buckets"] and p["count"] is not None
    }


def _combine(base: dict[tuple, Histogram], other: dict[tuple, Histogram], sign: float,
             keep_base: bool) -> dict[tuple, Histogram]:
    """other + sign * base, series by series and bucket by bucket (one server, same bounds); a
    series missing from base counts from zero; keep_base keeps series only base has."""
    out = dict(base) if keep_base else {}
    for key, hist in other.items():
        old = base.get(key)
        if old is None:
            out[key] = hist
            continue
        old_buckets = dict(old.buckets)
        buckets = [(le, cum + sign * old_buckets.get(le, 0.0)) for le, cum in hist.buckets]
        out[key] = Histogram(buckets, hist.total + sign * old.total,
                             hist.count + sign * old.count)
    return out


def diff(before: dict[tuple, Histogram], after: dict[tuple, Histogram]) -> dict[tuple, Histogram]:
    """after - before, bucket by bucket; a histogram absent before counts from zero."""
    return _combine(before, after, -1.0, keep_base=False)


def add(a: dict[tuple, Histogram], b: dict[tuple, Histogram]) -> dict[tuple, Histogram]:
    """a + b, series by series and bucket by bucket (same server, so the same bounds)."""
    return _combine(a, b, 1.0, keep_base=True)


def stage_table(before_text: str, after_text: str) -> list[dict]:
    """One row per histogram series that saw observations during the step."""
    return stage_table_of([(before_text, after_text)])


def stage_table_of(scrapes: list[tuple[str, str]]) -> list[dict]:
    """stage_table over several windows of one server taken together (a step run in parts)."""
    changes: dict[tuple, Histogram] = {}
    for before_text, after_text in scrapes:
        changes = add(changes, diff(histograms(parse(before_text)), histograms(parse(after_text))))
    rows = []
    for (name, labels), hist in sorted(changes.items()):
        if hist.count <= 0:
            continue
        scale = 1000.0 if name.endswith("_seconds") else 1.0
        unit = "ms" if scale == 1000.0 else ""
        rows.append({
            "metric": name,
            "labels": ",".join(f"{k}={v}" for k, v in labels),
            "unit": unit,
            "count": hist.count,
            "mean": _scaled(hist.mean(), scale),
            "p50": _scaled(hist.quantile(0.5), scale),
            "p99": _scaled(hist.quantile(0.99), scale),
        })
    return rows


def _scaled(value, scale):
    return None if value is None else value * scale


def counter_deltas(before_text: str, after_text: str) -> list[dict]:
    """Increase of every `*_total` counter series during the step (zero deltas left out)."""
    return counter_deltas_of([(before_text, after_text)])


def counter_deltas_of(scrapes: list[tuple[str, str]]) -> list[dict]:
    """counter_deltas summed over several windows of one server."""
    deltas: dict[tuple, float] = {}
    for before_text, after_text in scrapes:
        before, after = parse(before_text), parse(after_text)
        for key, value in after.items():
            if key[0].endswith("_total"):
                deltas[key] = deltas.get(key, 0.0) + value - before.get(key, 0.0)
    return [
        {"metric": name, "labels": ",".join(f"{k}={v}" for k, v in labels), "delta": delta}
        for (name, labels), delta in sorted(deltas.items())
        if delta
    ]
