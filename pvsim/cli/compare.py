"""`pvsim compare SCENARIO --strategies A,B | --models A,B --seeds N`: variants side by side.

Runs go through pvsim.sweep with common random numbers; the table and the plot are pvsim.compare's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from pvsim.compare import comparison_table, summarize_cells, variants, write_outputs
from pvsim.outputs import check_folder
from pvsim.scenario import STRATEGIES, UPDATE_MODELS, ScenarioError, load_scenario
from pvsim.sweep import make_jobs, report_failures, run_with_progress


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="strategies or update models side by side over many seeds",
        description="Run a scenario once per variant and seed (process pool) and show means with "
        "95 % bootstrap intervals (times: over the seeds that reached them, and how many did), "
        "plus a comparison plot.",
    )
    parser.add_argument("scenario", help="scenario TOML file")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--strategies", help=f"comma-separated: {', '.join(STRATEGIES)}")
    group.add_argument("--models", help=f"comma-separated: {', '.join(UPDATE_MODELS)}")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per variant (default 5)")
    parser.add_argument("--devices", type=int, help="override fleet.devices")
    parser.add_argument("--workers", type=int, default=0, help="processes (default: one per CPU)")
    parser.add_argument("--dask", metavar="ADDRESS", help="run on a Dask scheduler, e.g. tcp://host:8786")
    parser.add_argument("--out", type=Path, help="folder for compare.json and compare.png")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario, **{"fleet.devices": args.devices})
    chosen = variants(args.strategies, args.models)
    if args.seeds < 1:
        raise ScenarioError("must be at least 1", source="--seeds")
    jobs = make_jobs(scenario, chosen, args.seeds, common_random_numbers=True)
    out = args.out or Path("results") / f"compare-{scenario.name}"
    check_folder(out, "--out")  # before every run, not after them
    console = Console(stderr=True)
    rows = run_with_progress(jobs, args.workers, args.dask, console)
    cells = summarize_cells(rows)
    title = f"{scenario.name}: {scenario.fleet.devices} devices, {args.seeds} seeds"
    Console().print(comparison_table(title, cells))
    paths = write_outputs(out, scenario.name, args.seeds, list(chosen), cells, rows, title)
    console.print(f"wrote {', '.join(str(p) for p in paths)}")
    return report_failures(rows, console)
