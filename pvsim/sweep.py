"""Many runs of one scenario: variants (strategies, update models, any dotted key) × seeds.

Runs go to a process pool (`concurrent.futures`), or to a Dask cluster when a scheduler address
(or a `distributed.Client`) is given. Each run's seed is a stable hash of (scenario, grid point,
seed number) (`pvsim.shard.stable_seed`, BLAKE2b, not Python's salted hash()), so the table is the
same whatever executes it. A run that raises becomes a row with its grid point and traceback; the
other runs go on. Means come with 95 % confidence intervals (Student t over the seeds).
"""

from __future__ import annotations

import itertools
import math
import statistics
import tomllib
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from pvsim.scenario import Scenario, ScenarioError, validate_scenario, with_overrides
from pvsim.shard import stable_seed

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


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise ScenarioError(f"expected KEY=V1,V2,... got {item!r}", source="--grid")
        parsed = []
        for raw in values.split(","):
            raw = raw.strip()
            try:
                parsed.append(tomllib.loads(f"v = {raw}")["v"])
            except tomllib.TOMLDecodeError:
                parsed.append(raw)
        grid[key.strip()] = parsed
    return grid


def grid_variants(grid: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
    """label -> overrides for every combination of the grid (factorial product, in grid order)."""
    keys = list(grid)
    return {
        ", ".join(f"{k}={v}" for k, v in zip(keys, combo, strict=True)): dict(zip(keys, combo, strict=True))
        for combo in itertools.product(*(grid[k] for k in keys))
    }


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
    seed: int  # the seed number within the grid point: 0, 1, ...
    scenario: dict[str, Any]  # a validated scenario, dumped (plain data crosses process borders)
    source: str
    point: tuple[tuple[str, Any], ...] = ()  # the grid point: (dotted key, value) pairs
    run_seed: int = 0  # the fleet.seed this run uses


def run_seed(scenario: Scenario, point: dict[str, Any] | None, k: int) -> int:
    """fleet.seed of run k at `point`: a stable hash of (scenario name, its seed, point, k).
    `point=None` leaves the point out: every variant of seed k sees the same fleet and draws
    (common random numbers, what `compare` wants)."""
    key = None if point is None else tuple(sorted(point.items()))
    return stable_seed("pvsim-run", scenario.name, scenario.fleet.seed, key, k)


def run_job(job: Job) -> dict[str, Any]:
    """Worker: rebuild the scenario, run it, return flat metrics (plain data only). An exception
    becomes a row with `error` (the traceback) instead of stopping the sweep."""
    from pvsim.runner import run_scenario

    row: dict[str, Any] = {"label": job.label, "seed": job.seed, "run_seed": job.run_seed, "point": dict(job.point)}
    try:
        scenario = validate_scenario(job.scenario, job.source)
        result = run_scenario(scenario)
    except Exception:
        row.update({m: None for m in METRICS}, rollout_state=None, faults={}, error=traceback.format_exc())
        return row
    r, x = result.results, result.extras
    row.update(
        committed=r["committed"],
        rolled_back=r["rolled_back"],
        bricked=r["bricked"],
        stuck=r["stuck"],
        exposed=r["exposed"],
        gb_downloaded=r["bytes_downloaded"] / 1e9,
        time_to_50pct_s=r["time_to_50pct_s"],
        time_to_95pct_s=r["time_to_95pct_s"],
        power_cuts=r["power_cuts"],
        storage_footprint_mb=x["storage_footprint_mb"],
        gb_written=x["mb_written"] / 1000,
        reboots=x["reboots"],
        events=r["events"],
        wall_s=r["wall_s"],
        rollout_state=r["rollout_state"],
        faults=r["faults"],
        error=None,
    )
    return row


def make_jobs(
    scenario: Scenario, variants: dict[str, dict[str, Any]], seeds: int, common_random_numbers: bool = False
) -> list[Job]:
    """One job per (variant, seed number), every combination validated before anything runs.
    Seeds: `run_seed` of (scenario, variant's overrides, k); with `common_random_numbers` the
    variants share each k's seed."""
    jobs = []
    for label, overrides in variants.items():
        point = tuple(overrides.items())
        for k in range(seeds):
            seed = run_seed(scenario, None if common_random_numbers else overrides, k)
            variant = with_overrides(scenario, **overrides, **{"fleet.seed": seed})
            jobs.append(Job(label, k, variant.model_dump(), scenario.name, point, seed))
    return jobs


def run_jobs(
    jobs: list[Job], workers: int = 0, dask: Any = None, on_done: Callable[[], None] | None = None
) -> list[dict[str, Any]]:
    """Run every job; `on_done()` after each finished run (in finishing order); rows come back in
    job order whatever the executor. `dask`: a scheduler address or a `distributed.Client`."""
    if dask:
        return _run_on_dask(jobs, dask, on_done)
    if workers == 1 or len(jobs) == 1:
        out = []
        for job in jobs:
            out.append(run_job(job))
            if on_done:
                on_done()
        return out
    with ProcessPoolExecutor(max_workers=workers or None) as pool:
        index = {pool.submit(run_job, job): i for i, job in enumerate(jobs)}
        rows: list[dict[str, Any] | None] = [None] * len(jobs)
        for future in as_completed(index):
            rows[index[future]] = future.result()
            if on_done:
                on_done()
        return [row for row in rows if row is not None]


def _run_on_dask(jobs: list[Job], dask: Any, on_done: Callable[[], None] | None) -> list[dict[str, Any]]:
    from dask.distributed import Client
    from dask.distributed import as_completed as dask_completed

    client = dask if isinstance(dask, Client) else Client(dask)
    try:
        futures = client.map(run_job, jobs, pure=False)
        position = {f.key: i for i, f in enumerate(futures)}
        rows: list[dict[str, Any] | None] = [None] * len(jobs)
        for future in dask_completed(futures):
            rows[position[future.key]] = future.result()
            if on_done:
                on_done()
        return [row for row in rows if row is not None]
    finally:
        if client is not dask:
            client.close()


def failures(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for row in rows if row.get("error")]


def tidy_rows(rows: list[dict[str, Any]], grid_keys: list[str]) -> list[dict[str, Any]]:
    """One flat record per run: variant, every grid key as a column, seed numbers, metrics,
    rollout state, each fault count as `faults.<kind>`, and the error's last line (if any)."""
    fault_keys = sorted({k for row in rows for k in row.get("faults") or {}})
    table = []
    for row in rows:
        record: dict[str, Any] = {"variant": row["label"]}
        record.update({key: row["point"].get(key) for key in grid_keys})
        record.update(seed=row["seed"], run_seed=row["run_seed"])
        record.update({m: row[m] for m in METRICS})
        record["rollout_state"] = row["rollout_state"]
        error = row.get("error")
        # a fault that never fired in a run is absent from its counts: 0, unless the run failed
        record.update({f"faults.{k}": None if error else row["faults"].get(k, 0) for k in fault_keys})
        record["error"] = error.strip().splitlines()[-1] if error else None
        table.append(record)
    return table


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, tuple[float | None, float | None, int]]]:
    """label -> metric -> (mean, ci95 half-width, n) over the runs that did not fail."""
    labels: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        labels.setdefault(row["label"], []).append(row)
    return {label: {m: mean_ci([r[m] for r in group]) for m in METRICS} for label, group in labels.items()}


def summary_json(summary: dict[str, dict[str, tuple[float | None, float | None, int]]]) -> dict[str, Any]:
    """summarize()'s tuples as JSON objects: label -> metric -> mean, ci95, n."""
    return {
        label: {m: {"mean": v[0], "ci95": v[1], "n": v[2]} for m, v in metrics.items()}
        for label, metrics in summary.items()
    }


def run_with_progress(jobs: list[Job], workers: int, dask: Any, console: Any) -> list[dict[str, Any]]:
    """run_jobs with a rich progress bar on `console` counting finished runs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("runs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("runs", total=len(jobs))
        return run_jobs(jobs, workers, dask, on_done=lambda: bar.advance(task))


def report_failures(rows: list[dict[str, Any]], console: Any) -> int:
    """Print every failed run with its grid point and traceback; the exit code (1 if any failed)."""
    failed = failures(rows)
    for row in failed:
        point = ", ".join(f"{k}={v!r}" for k, v in row["point"].items()) or row["label"]
        console.print(f"[bold red]run failed[/]: {point}, seed #{row['seed']} (fleet.seed {row['run_seed']})")
        console.print(row["error"], markup=False, highlight=False)
    if failed:
        console.print(f"[bold red]{len(failed)} of {len(rows)} runs failed[/] (exit code 1); the others are in the table")
    return 1 if failed else 0
