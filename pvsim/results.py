"""What a run produced: results.json (fixed keys), the revision timeline, per-release breakdown.

results.json keys are fixed (docs/simulator.md): scenario, seed, devices, strategy, update_model,
sim_time_s, wall_s, events, final_revision_counts, committed, rolled_back, bricked, stuck, exposed,
bytes_downloaded, time_to_50pct_s, time_to_95pct_s, rollout_state, power_cuts, peak_rss_mb, faults.
Counts are summed over device-updates of every release; time-to-X% is measured for the last
release, from its release time to the moment X % of the fleet had committed it (null if never).
Everything except wall_s and peak_rss_mb is a function of scenario and seed only.
"""

from __future__ import annotations

import math
import resource
import sys
from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pvsim.world import BRICKED_OUT, ROLLED_BACK, WONTGO, World

RESULT_KEYS = (
    "scenario",
    "seed",
    "devices",
    "strategy",
    "update_model",
    "sim_time_s",
    "wall_s",
    "events",
    "final_revision_counts",
    "committed",
    "rolled_back",
    "bricked",
    "stuck",
    "exposed",
    "bytes_downloaded",
    "bytes_wasted",
    "time_to_50pct_s",
    "time_to_95pct_s",
    "rollout_state",
    "power_cuts",
    "peak_rss_mb",
    "faults",
    "device_updates",
    "wontgo",
    "in_progress_at_end",
    "timed_out",
    "retries",
    "rollback_reasons",
    "wontgo_reasons",
    "releases",
)
SILENT_IDS_SHOWN = 20  # ids of devices counted failed for their silence listed per release


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def _time_to(commit_times: list[float], fraction: float, fleet: int, start: float) -> float | None:
    needed = math.ceil(fraction * fleet)
    if needed == 0 or len(commit_times) < needed:
        return None
    return round(sorted(commit_times)[needed - 1] - start, 3)


@dataclass
class RunResult:
    results: dict[str, Any]
    releases: list[dict[str, Any]] = field(default_factory=list)
    # t (list), names and counts per revision, rolled_back and bricked so far (one per t)
    timeline: dict[str, Any] = field(default_factory=dict)
    marks: list[tuple[float, str]] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)


def build_timeline(world: World, step: float) -> dict[str, Any]:
    """Revision counts at every `step` seconds, rebuilt from the recorded moves (no sim events)."""
    n_rev = len(world.revisions)
    until = world.until_s
    times = np.arange(0.0, until + step, step)
    times[-1] = min(times[-1], until)
    counts = np.zeros((len(times), n_rev), dtype=np.int64)
    counts[:, 0] = world.table.n
    if len(world.moves_t):
        t = np.frombuffer(world.moves_t, dtype=np.float64)
        src = np.frombuffer(world.moves_from, dtype=np.int32)
        dst = np.frombuffer(world.moves_to, dtype=np.int32)
        slot = np.searchsorted(times, t, side="left")
        delta = np.zeros((len(times) + 1, n_rev), dtype=np.int64)
        np.add.at(delta, (slot, src), -1)
        np.add.at(delta, (slot, dst), 1)
        counts += np.cumsum(delta[:-1], axis=0)
    names = [r.name for r in world.revisions.revisions]
    return {
        "t": times.tolist(),
        "names": names,
        "counts": counts.tolist(),
        "rolled_back": _so_far(times, world.rolled_back_t),
        "bricked": _so_far(times, world.bricked_t),
        "mb_moved": world.egress.cumulative_mb(len(times)),  # through the Hub's egress, by then
    }


def _so_far(times: np.ndarray, moments: array) -> list[int]:
    """How many of `moments` fall at or before each of `times` (the revision counts' convention)."""
    ordered = np.sort(np.frombuffer(moments, dtype=np.float64))
    return np.searchsorted(ordered, times, side="right").tolist()


def _reasons(counts: Counter[tuple[str, str]], outcome: str) -> dict[str, int]:
    """{reason: device-updates}, most frequent first (ties by reason: deterministic)."""
    pairs = [(reason, n) for (kind, reason), n in counts.items() if kind == outcome]
    return dict(sorted(pairs, key=lambda p: (-p[1], p[0])))


def merge_reasons(tables: Iterable[dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for table in tables:
        total.update(table)
    return dict(sorted(total.items(), key=lambda p: (-p[1], p[0])))


def collect(world: World, wall_s: float, events: int) -> RunResult:
    scenario = world.scenario
    n = world.table.n
    rollouts = world.rollouts
    final_counts: dict[str, int] = {}
    rev_counts = np.bincount(np.frombuffer(world.table.rev, dtype=np.int32), minlength=len(world.revisions))
    for rev in world.revisions.revisions:
        final_counts[rev.name] = int(rev_counts[rev.index])
    world.egress.settle()  # transfers still running count what they moved
    stuck = len(world.active_runs)
    unfinished: Counter[int] = Counter()
    for run in world.active_runs.values():  # unfinished updates still moved bytes
        unfinished[run.rollout.index] += 1
        run.rollout.mb_downloaded += run.mb_downloaded
        run.rollout.mb_wasted += run.mb_wasted
        run.rollout.mb_written += run.mb_written
        run.rollout.reboots += run.reboots
        run.rollout.exposed += run.exposed
    last = rollouts[-1] if rollouts else None
    faults = {k: int(v) for k, v in sorted(world.fault_counts.items())}
    faults["hub_outages"] = sum(1 for s in world.hub_outages.starts if s < world.until_s)
    faults["slow_link_devices"] = int(sum(world.table.slow))
    faults["disk_full_devices"] = int(sum(world.table.full))
    releases = []
    for r in rollouts:
        releases.append(
            {
                "release": r.name,
                "at_s": r.at_s,
                "defect": scenario.release[r.index].defect,
                "state": r.state,
                "admitted": r.tally.admitted,
                "succeeded_reports": r.tally.succeeded,
                "failed_reports": r.tally.failed,
                "committed": r.committed,
                "rolled_back": r.rolled_back,
                "wontgo": r.wontgo,
                "bricked": r.bricked,
                "exposed": r.exposed,
                "stuck": unfinished[r.index] + r.wontgo,
                "in_progress_at_end": unfinished[r.index],
                "timed_out": len(r.timed_out),
                "timed_out_devices": sorted(r.timed_out)[:SILENT_IDS_SHOWN],
                "device_updates": r.committed + r.rolled_back + r.wontgo + r.bricked + unfinished[r.index],
                "mb_downloaded": round(r.mb_downloaded, 3),
                "mb_wasted": round(r.mb_wasted, 3),
                "mb_written": round(r.mb_written, 3),
                "rolled_back_reasons": _reasons(r.reasons, ROLLED_BACK),
                "wontgo_reasons": _reasons(r.reasons, WONTGO),
                "bricked_reasons": _reasons(r.reasons, BRICKED_OUT),
                "reboots": r.reboots,
                "time_to_50pct_s": _time_to(r.commit_times, 0.5, n, r.at_s),
                "time_to_95pct_s": _time_to(r.commit_times, 0.95, n, r.at_s),
                "halted_at_s": r.strategy.halted_at,
            }
        )
    device_updates = sum(rel["device_updates"] for rel in releases)
    results = {
        "scenario": scenario.name,
        "seed": scenario.fleet.seed,
        "devices": n,
        "strategy": scenario.rollout.strategy,
        "update_model": scenario.update_model.kind,
        "sim_time_s": round(world.env.now, 3),
        "wall_s": round(wall_s, 3),
        "events": events,
        "final_revision_counts": final_counts,
        "committed": sum(r.committed for r in rollouts),
        "rolled_back": sum(r.rolled_back for r in rollouts),
        "bricked": sum(r.bricked for r in rollouts),
        "stuck": stuck + sum(r.wontgo for r in rollouts),
        "exposed": sum(r.exposed for r in rollouts),
        "bytes_downloaded": int(round(sum(r.mb_downloaded for r in rollouts) * 1_000_000)),
        "bytes_wasted": int(round(sum(r.mb_wasted for r in rollouts) * 1_000_000)),
        "time_to_50pct_s": _time_to(last.commit_times, 0.5, n, last.at_s) if last else None,
        "time_to_95pct_s": _time_to(last.commit_times, 0.95, n, last.at_s) if last else None,
        "rollout_state": last.state if last else "running",
        "power_cuts": faults.get("power_cuts", 0),
        "peak_rss_mb": peak_rss_mb(),
        "faults": faults,
        "device_updates": device_updates,
        "wontgo": sum(r.wontgo for r in rollouts),
        "in_progress_at_end": stuck,
        "timed_out": sum(len(r.timed_out) for r in rollouts),
        "retries": dict(world.retries),
        "rollback_reasons": merge_reasons(rel["rolled_back_reasons"] for rel in releases),
        "wontgo_reasons": merge_reasons(rel["wontgo_reasons"] for rel in releases),
        "releases": releases,
    }
    assert tuple(results) == RESULT_KEYS
    model = world.model
    last_rev = last.revision if last else 0
    extras = {
        "device_updates": device_updates,
        "events_per_device_update": round(events / device_updates, 2) if device_updates else None,
        "mb_written": round(sum(r.mb_written for r in rollouts), 3),
        "reboots": sum(r.reboots for r in rollouts),
        "storage_footprint_mb": round(model.footprint_mb(max(0, last_rev - 1), last_rev), 3),
        "wontgo": sum(r.wontgo for r in rollouts),
        "in_progress_at_end": stuck,
    }
    marks = sorted(m for r in rollouts for m in r.marks)
    timeline = build_timeline(world, scenario.run.timeline_step_s)
    return RunResult(results, releases, timeline, marks, extras)
