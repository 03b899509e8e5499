"""Run one scenario: build the world for its update model, simulate, collect the results."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from pvsim.results import RunResult, collect
from pvsim.scenario import Scenario
from pvsim.world import World


def model_factory(kind: str) -> Callable[[World], Any]:
    if kind == "pantavisor":
        from pvsim.pantavisor import PantavisorModel

        return PantavisorModel
    from pvsim.model_ab import ABModel

    return ABModel


def run_scenario(
    scenario: Scenario, progress: Callable[[float, float], None] | None = None, chunks: int = 50
) -> RunResult:
    """Simulate to `run.until_s`. `progress(now, until)` is called between chunks of sim time
    (the chunk boundaries add no events: `env.run(until=t)` stops at the first event past t)."""
    # The cyclic garbage collector is off while the world lives: the run creates millions of
    # long-lived objects (engines, disks, events) and no reference cycles worth collecting (measured:
    # 0 objects collected), so full collections only rescan the fleet again and again (at 40 000
    # devices they cost a third of the run).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        world = World(scenario, model_factory(scenario.update_model.kind))
        start = time.perf_counter()
        cpu_start = time.process_time()
        until = scenario.run.until_s
        if progress is None:
            world.run()
        else:
            for k in range(1, chunks + 1):
                world.env.run(until=until * k / chunks)
                progress(world.env.now, until)
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        # collected before the collector is back on: every object the run built is still in the
        # youngest generation, so the first collection after gc.enable() would scan the whole live
        # world (measured: 0.05-0.07 s on the quickstart) when all `collect` needs is to read it
        result = collect(world, wall, world.env.events)
    finally:
        if gc_was_enabled:
            gc.enable()
    result.extras["cpu_s"] = round(cpu, 3)
    return result
