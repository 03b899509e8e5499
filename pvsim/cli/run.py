"""`pvsim run SCENARIO`: simulate one scenario, show progress and a summary, write the outputs.

The command `run` fronts pvsim/runner.py (`run_scenario`; pvsim.shard with --shards).
"""

from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from pvsim.outputs import check_output_paths
from pvsim.results import RunResult
from pvsim.runner import run_scenario
from pvsim.scenario import Scenario, ScenarioError, check_option, load_scenario
from pvsim.shard import DEFAULT_EPOCH_S
from pvsim.summary import summary_table


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="simulate a fleet rollout; write results, plots and a report",
        description="Simulate one scenario file and write results.json, timeline.csv, "
        "adoption.png and report.html into --out. (The simulation is pvsim/runner.py.)",
    )
    parser.add_argument("scenario", help="scenario TOML file (see docs/scenarios.md)")
    parser.add_argument("--seed", type=int, help="override fleet.seed")
    parser.add_argument("--devices", type=int, help="override fleet.devices")
    parser.add_argument("--strategy", help="override rollout.strategy")
    parser.add_argument("--model", help="override update_model.kind")
    parser.add_argument("--out", type=Path, help="folder for results.json, timeline.csv, adoption.png, report.html")
    parser.add_argument("--json", type=Path, help="also write results.json to this path")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary table")
    parser.add_argument("--shards", type=int, default=1, help="split the fleet into N shards run in parallel (docs/scaling.md)")
    parser.add_argument("--workers", type=int, default=0, help="with --shards: worker processes (default: one per CPU)")
    parser.add_argument("--dask", metavar="ADDRESS", help="with --shards: run the shards as Dask actors on this scheduler")
    parser.add_argument("--epoch-s", type=float, default=DEFAULT_EPOCH_S, help="with --shards: seconds between rollout decisions")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    overrides = {
        "fleet.seed": args.seed,
        "fleet.devices": args.devices,
        "rollout.strategy": args.strategy,
        "update_model.kind": args.model,
    }
    check_option("--seed", "fleet.seed", args.seed)
    check_output_paths(args.out, args.json)  # before minutes of simulation, not after
    scenario = load_scenario(args.scenario, **overrides)
    console = Console(stderr=True)
    if args.shards < 1:
        raise ScenarioError("must be at least 1", source="--shards")
    result = _simulate(scenario, args, console)
    if args.out:
        from pvsim.report import write_run_outputs

        paths = write_run_outputs(result, args.out)
        if not args.quiet:
            console.print(f"wrote {', '.join(str(p) for p in paths.values())}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.results, indent=2) + "\n", encoding="utf-8")
    if not args.quiet:
        Console().print(summary_table(result))
    return 0


def _simulate(scenario: Scenario, args: argparse.Namespace, console: Console) -> RunResult:
    """Run the scenario; then freeze what the cyclic collector tracks. The simulated world is garbage
    once the result is out (reference cycles: the collector would free it) and `pvsim run` ends
    after its outputs: frozen, the world's objects are neither scanned nor freed one by one
    (measured on the quickstart: 0.16-0.25 s of CPU, a cost that grows with the fleet). The
    collector stays off until then: run_scenario turns it off for the run, and turned back on
    while the world lives, its first young collection would scan all of it. A caller that runs
    this in-process (tests) keeps the frozen objects of its runs; nothing else changes for it."""
    if args.shards > 1 or args.dask:
        # the world lives in the shards' processes; the coordinator keeps its collector as it was
        result = _run_sharded(scenario, args, console)
        gc.freeze()
        return result
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        if args.quiet:
            result = run_scenario(scenario)
        else:
            columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn())
            with Progress(*columns, console=console, transient=True) as bar:
                task = bar.add_task(f"simulating {scenario.fleet.devices} devices", total=scenario.run.until_s)
                result = run_scenario(scenario, progress=lambda now, until: bar.update(task, completed=now))
        gc.freeze()
    finally:
        if gc_was_enabled:
            gc.enable()
    return result


def _run_sharded(scenario: Scenario, args: argparse.Namespace, console: Console) -> RunResult:
    from pvsim.shard import run_sharded

    if args.epoch_s <= 0:
        raise ScenarioError("must be positive", source="--epoch-s")
    if args.quiet:
        return run_sharded(scenario, args.shards, args.workers, args.dask, args.epoch_s)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(f"simulating {scenario.fleet.devices} devices in {args.shards} shards", total=scenario.run.until_s)
        return run_sharded(
            scenario, args.shards, args.workers, args.dask, args.epoch_s,
            progress=lambda now, until: bar.update(task, completed=now),
        )  # fmt: skip
