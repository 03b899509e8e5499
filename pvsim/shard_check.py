"""How far a sharded run is from the unsharded one: both runs timed, then their gaps.

The gaps are pvsim.shard.compare_runs' (adoption per revision every hour, pause/abort times in
epochs); the wall times include world building on both sides.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pvsim.runner import run_scenario
from pvsim.scenario import Scenario
from pvsim.shard import compare_runs, run_sharded


def check_sharding(
    scenario: Scenario,
    shards: int,
    workers: int,
    dask: str | None,
    epoch_s: float,
    note: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    # sharded first: its forked workers must not inherit the unsharded run's memory
    note(f"sharded run: {scenario.fleet.devices} devices, {shards} shards ...")
    start = time.perf_counter()
    sharded = run_sharded(scenario, shards, workers, dask, epoch_s)
    sharded_wall = time.perf_counter() - start
    note(f"  {sharded_wall:.1f} s; unsharded run ...")
    start = time.perf_counter()
    unsharded = run_scenario(scenario)
    unsharded_wall = time.perf_counter() - start
    report = compare_runs(unsharded, sharded, epoch_s)
    report["unsharded_wall_s"] = round(unsharded_wall, 3)
    report["sharded_wall_s"] = round(sharded_wall, 3)
    report["wall_ratio"] = round(sharded_wall / unsharded_wall, 3)
    return report
