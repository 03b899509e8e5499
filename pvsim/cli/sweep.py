"""`pvsim sweep SCENARIO --grid KEY=V1,V2 ...`: factorial parameter sweeps (desmod-style).

Every combination of the grid values × every seed is one run; runs go to a process pool, or to a
Dask cluster with `--dask tcp://host:8786`. Values are TOML literals (`0.1`, `true`, `"canary"`;
bare words are taken as strings) and every combination is validated like a scenario file before
anything runs. The grid and the runs are pvsim.sweep's; the outputs pvsim.sweep_report's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from pvsim.compare import comparison_table, summarize_cells
from pvsim.outputs import check_folder
from pvsim.scenario import ScenarioError, load_scenario
from pvsim.sweep import (
    grid_variants,
    make_jobs,
    parse_grid,
    report_failures,
    run_with_progress,
    summarize,
)
from pvsim.sweep_report import write_outputs


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="factorial parameter sweeps (process pool or Dask)",
        description="Run every combination of --grid values over --seeds seeds; print means with "
        "95 % confidence intervals and write sweep.csv (one row per run), summary.csv, sweep.json "
        "and plot-<key>.png. Exit code 1 when any run failed (each is reported with its traceback).",
    )
    parser.add_argument("scenario", help="scenario TOML file")
    parser.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2", help="dotted key and values; repeat for more factors")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per combination (default 3)")
    parser.add_argument("--devices", type=int, help="override fleet.devices")
    parser.add_argument("--workers", type=int, default=0, help="processes (default: one per CPU)")
    parser.add_argument("--dask", metavar="ADDRESS", help="Dask scheduler address, e.g. tcp://host:8786")
    parser.add_argument("--out", type=Path, help="folder for the outputs (default results/sweep-<scenario>)")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario, **{"fleet.devices": args.devices})
    grid = parse_grid(args.grid)
    if args.seeds < 1:
        raise ScenarioError("must be at least 1", source="--seeds")
    variants = grid_variants(grid)
    jobs = make_jobs(scenario, variants, args.seeds)  # validates every combination first
    out = args.out or Path("results") / f"sweep-{scenario.name}"
    check_folder(out, "--out")  # before every run, not after them
    console = Console(stderr=True)
    rows = run_with_progress(jobs, args.workers, args.dask, console)
    summary = summarize(rows)
    Console().print(comparison_table(f"{scenario.name}: sweep over {', '.join(grid)}", summarize_cells(rows)))
    written = write_outputs(out, scenario.name, grid, args.seeds, summary, rows)
    console.print(f"wrote {', '.join(str(out / w) for w in written)}")
    return report_failures(rows, console)
