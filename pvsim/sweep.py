"""Many runs of one scenario: variants (strategies, update models, any dotted key) × seeds.

Runs go to a process pool (`concurrent.futures`), or to a Dask cluster when a scheduler address
is given; each run is independent and seeded, so the pool only changes how fast the table comes.
Means come with 95 % confidence intervals (Student t over the seeds).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from pvsim.scenario import Scenario, validate_scenario, with_overrides

METRICS = (
    "committed",
    "rolled_back",
    "bricked",
    "stuck",
    "exposed",
    "gb_downloaded",
    "time_to_50pct_s",
    "time_to_95pct_s",
    "power_cuts",
    "storage_footprint_mb",
    "gb_written",
    "reboots",
    "events",
    "wall_s",
)

# two-sided 95 % Student t quantiles for 1..30 degrees of freedom; 1.96 beyond
_T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def mean_ci(values: Sequence[float]) -> tuple[float | None, float | None, int]:
    """(mean, half-width of the 95 % CI, n) over the values that are not None."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None, None, 0
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return mean, None, len(xs)
    t = _T95[len(xs) - 2] if len(xs) - 1 <= len(_T95) else 1.96
    return mean, t * statistics.stdev(xs) / math.sqrt(len(xs)), len(xs)


@dataclass(frozen=True)
class Job:
    label: str
    seed: int
    scenario: dict[str, Any]  # a validated scenario, dumped (plain data crosses process borders)
    source: str


def run_job(job: Job) -> dict[str, Any]:
    """Worker: rebuild the scenario, run it, return flat metrics (plain data only)."""
    from pvsim.runner import run_scenario

    scenario = validate_scenario(job.scenario, job.source)
    result = run_scenario(scenario)
    r, x = result.results, result.extras
    return {
        "label": job.label,
        "seed": job.seed,
        "committed": r["committed"],
        "rolled_back": r["rolled_back"],
        "bricked": r["bricked"],
        "stuck": r["stuck"],
        "exposed": r["exposed"],
        "gb_downloaded": r["bytes_downloaded"] / 1e9,
        "time_to_50pct_s": r["time_to_50pct_s"],
        "time_to_95pct_s": r["time_to_95pct_s"],
        "power_cuts": r["power_cuts"],
        "storage_footprint_mb": x["storage_footprint_mb"],
        "gb_written": x["mb_written"] / 1000,
        "reboots": x["reboots"],
        "events": r["events"],
        "wall_s": r["wall_s"],
        "rollout_state": r["rollout_state"],
        "faults": r["faults"],
    }


def make_jobs(scenario: Scenario, variants: dict[str, dict[str, Any]], seeds: int) -> list[Job]:
    """One job per (variant, seed); seeds are the scenario's seed, seed+1, ..."""
    jobs = []
    base_seed = scenario.fleet.seed
    for label, overrides in variants.items():
        for k in range(seeds):
            variant = with_overrides(scenario, **overrides, **{"fleet.seed": base_seed + k})
            jobs.append(Job(label, base_seed + k, variant.model_dump(), scenario.name))
    return jobs


def run_jobs(
    jobs: list[Job], workers: int = 0, dask: str | None = None, on_done: Callable[[], None] | None = None
) -> list[dict[str, Any]]:
    """Run every job; results come back in job order whatever the pool's finishing order."""
    if dask:
        from dask.distributed import Client

        with Client(dask) as client:
            futures = client.map(run_job, jobs, pure=False)
            out = client.gather(futures)
        return list(out)
    if workers == 1 or len(jobs) == 1:
        out = []
        for job in jobs:
            out.append(run_job(job))
            if on_done:
                on_done()
        return out
    with ProcessPoolExecutor(max_workers=workers or None) as pool:
        futures = [pool.submit(run_job, job) for job in jobs]
        out = []
        for future in futures:
            out.append(future.result())
            if on_done:
                on_done()
        return out


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, tuple[float | None, float | None, int]]]:
    """label -> metric -> (mean, ci95 half-width, n)."""
    labels: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        labels.setdefault(row["label"], []).append(row)
    return {label: {m: mean_ci([r[m] for r in group]) for m in METRICS} for label, group in labels.items()}
