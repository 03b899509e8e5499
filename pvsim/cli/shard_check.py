"""`pvsim shard-check SCENARIO`: how far a sharded run is from the unsharded one (pvsim.shard_check)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from pvsim.outputs import check_output_paths
from pvsim.scenario import ScenarioError, load_scenario
from pvsim.shard import DEFAULT_EPOCH_S


def register(subparsers: argparse._SubParsersAction) -> None:
    check = subparsers.add_parser(
        "shard-check",
        help="measure how far a sharded run is from the unsharded one",
        description="Run a scenario sharded and unsharded; print the largest gap in adoption (share of the "
        "fleet per revision at every hour, percentage points) and the pause/abort time gaps in epochs.",
    )
    check.add_argument("scenario", help="scenario TOML file")
    check.add_argument("--devices", type=int, help="override fleet.devices")
    check.add_argument("--shards", type=int, default=2, help="shards (default 2)")
    check.add_argument("--workers", type=int, default=0, help="worker processes (default: one per CPU)")
    check.add_argument("--dask", metavar="ADDRESS", help="run the shards as Dask actors on this scheduler")
    check.add_argument("--epoch-s", type=float, default=DEFAULT_EPOCH_S, help="seconds between rollout decisions")
    check.add_argument("--json", type=Path, help="write the figures to this path")
    check.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from pvsim.shard_check import check_sharding

    check_output_paths(None, args.json)  # before two long runs, not after
    scenario = load_scenario(args.scenario, **{"fleet.devices": args.devices})
    if args.shards < 2:
        raise ScenarioError("must be at least 2", source="--shards")
    console = Console(stderr=True)
    report = check_sharding(scenario, args.shards, args.workers, args.dask, args.epoch_s, console.print)
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0
