"""The two timelines side by side: outcome counts per release, each slot's Hub-visible status
sequence, time-to-commit distributions (median, p90, two-sample Kolmogorov-Smirnov statistic),
and the verdict (`agree`: counts equal and at least 95 % of the sequences identical)."""

from __future__ import annotations

import bisect
import math
from typing import Any

from pvsim.validate.timeline import statuses

COUNT_KEYS = ("admitted", "succeeded", "failed", "timed_out")
SEQUENCE_SHARE = 0.95
COMMITTED = ("DONE", "UPDATED")
FINAL = ("DONE", "UPDATED", "ERROR", "WONTGO")


def counts(doc: dict[str, Any]) -> dict[str, dict[str, int]]:
    return {r["name"]: {k: int(r[k]) for k in COUNT_KEYS} for r in doc["releases"]}


def commit_times(doc: dict[str, Any], ends: tuple[str, ...] = COMMITTED) -> list[float]:
    """Seconds from each release's offer to the Hub hearing DONE or UPDATED (or any status in
    `ends`), per slot that got there."""
    at = {r["name"]: r["at_s"] for r in doc["releases"]}
    times = []
    for slot in doc["slots"]:
        for t, status, _ in slot["reports"]:
            if status in ends:
                times.append(t - at[slot["release"]])
                break
    return sorted(times)


def quantile(values: list[float], q: float) -> float | None:
    """Linear interpolation between order statistics (numpy's default)."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def ks_statistic(a: list[float], b: list[float]) -> float | None:
    """The largest distance between the two empirical distribution functions."""
    if not a or not b:
        return None
    xs, ys = sorted(a), sorted(b)
    d = 0.0
    for v in xs + ys:
        fa = bisect.bisect_right(xs, v) / len(xs)
        fb = bisect.bisect_right(ys, v) / len(ys)
        d = max(d, abs(fa - fb))
    return d


def sequences(real: dict[str, Any], sim: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per slot (release, admission position) either world filled."""
    def index(doc: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
        return {(s["release"], s["position"]): s for s in doc["slots"]}

    r, s = index(real), index(sim)
    order = [rel["name"] for rel in real["releases"]] + [rel["name"] for rel in sim["releases"]]
    keys = sorted(set(r) | set(s), key=lambda k: (order.index(k[0]), k[1]))
    rows = []
    for key in keys:
        rs = statuses(r[key]) if key in r else []
        ss = statuses(s[key]) if key in s else []
        rows.append({"release": key[0], "position": key[1], "real_device": r.get(key, {}).get("device"),
                     "real": rs, "sim": ss, "identical": rs == ss})  # fmt: skip
    return rows


def _times(rt: list[float], st: list[float]) -> dict[str, Any]:
    return {"real_median_s": _round(quantile(rt, 0.5)), "sim_median_s": _round(quantile(st, 0.5)),
            "real_p90_s": _round(quantile(rt, 0.9)), "sim_p90_s": _round(quantile(st, 0.9)),
            "real_n": len(rt), "sim_n": len(st), "ks": _round(ks_statistic(rt, st))}  # fmt: skip


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def compare(real: dict[str, Any], sim: dict[str, Any]) -> dict[str, Any]:
    rc, sc = counts(real), counts(sim)
    rows = sequences(real, sim)
    same = sum(r["identical"] for r in rows)
    rt, st = commit_times(real), commit_times(sim)
    counts_equal = rc == sc
    share_ok = not rows or same >= SEQUENCE_SHARE * len(rows)
    return {
        "scenario": real["scenario"],
        "devices": real["devices"],
        "time_scale": real["time_scale"],
        "real": rc,
        "sim": sc,
        "counts_equal": counts_equal,
        "sequences_identical": same,
        "sequences_total": len(rows),
        "time_to_commit": _times(rt, st),
        # the same for every final report, failures included (what a release that commits nowhere
        # still has to compare)
        "time_to_final": _times(commit_times(real, FINAL), commit_times(sim, FINAL)),
        "agree": counts_equal and share_ok,
        "sequences": rows,
    }
