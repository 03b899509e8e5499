"""`pvsim sweep SCENARIO --grid KEY=V1,V2 ...`: factorial parameter sweeps (desmod-style).

Every combination of the grid values × every seed is one run; runs go to a process pool, or to a
Dask cluster with `--dask tcp://host:8786`. Values are TOML literals (`0.1`, `true`, `"canary"`;
bare words are taken as strings) and every combination is validated like a scenario file.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import tomllib
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from pvsim.cli_compare import comparison_table
from pvsim.scenario import ScenarioError, load_scenario
from pvsim.sweep import METRICS, make_jobs, run_jobs, summarize


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


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="factorial parameter sweeps (process pool or Dask)",
        description="Run every combination of --grid values over --seeds seeds; print means with "
        "95 %% confidence intervals and write sweep.json and sweep.csv.",
    )
    parser.add_argument("scenario", help="scenario TOML file")
    parser.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2", help="dotted key and values; repeat for more factors")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per combination (default 3)")
    parser.add_argument("--devices", type=int, help="override fleet.devices")
    parser.add_argument("--workers", type=int, default=0, help="processes (default: one per CPU)")
    parser.add_argument("--dask", metavar="ADDRESS", help="Dask scheduler address, e.g. tcp://host:8786")
    parser.add_argument("--out", type=Path, help="folder for sweep.json and sweep.csv")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario, **{"fleet.devices": args.devices})
    grid = parse_grid(args.grid)
    if args.seeds < 1:
        raise ScenarioError("must be at least 1", source="--seeds")
    keys = list(grid)
    variants = {
        ", ".join(f"{k}={v}" for k, v in zip(keys, combo, strict=True)): dict(zip(keys, combo, strict=True))
        for combo in itertools.product(*(grid[k] for k in keys))
    }
    jobs = make_jobs(scenario, variants, args.seeds)  # validates every combination first
    console = Console(stderr=True)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"{len(jobs)} runs", total=len(jobs))
        rows = run_jobs(jobs, args.workers, args.dask, on_done=lambda: bar.advance(task))
    summary = summarize(rows)
    Console().print(comparison_table(f"{scenario.name}: sweep over {', '.join(keys)}", summary))
    out = args.out or Path("results") / f"sweep-{scenario.name}"
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "scenario": scenario.name,
        "grid": grid,
        "seeds": args.seeds,
        "summary": {
            label: {m: {"mean": v[0], "ci95": v[1], "n": v[2]} for m, v in metrics.items()}
            for label, metrics in summary.items()
        },
    }
    (out / "sweep.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    with (out / "sweep.csv").open("w", newline="", encoding="utf-8") as handle_:
        writer = csv.writer(handle_)
        writer.writerow(["variant", "seed", *METRICS])
        for row in rows:
            writer.writerow([row["label"], row["seed"], *(row[m] for m in METRICS)])
    console.print(f"wrote {out / 'sweep.json'}, {out / 'sweep.csv'}")
    return 0
