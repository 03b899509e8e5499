"""`pvsim bench`: the twin against the reference model (pvsim/reference), side by side in one
process, at the fleet sizes asked (the measurements are pvsim.bench's)."""

from __future__ import annotations

import argparse
import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pvsim.bench import MODELS, QUICKSTART, SHARD_FROM, TARGETS, bench, local_dask_cluster
from pvsim.bench_instructions import BASE_DIVISOR, DEFAULT_DEVICES, bench_instructions
from pvsim.outputs import check_file
from pvsim.scenario import ScenarioError, check_option

DEFAULT_SIZES = (20_000, 100_000)
ALL_MODELS = (*MODELS, "sharded")

EPILOG = f"""\
what it prints, per size: wall and CPU time, µs per device-update and peak RSS of each model;
twin_over_reference = twin wall / reference wall (median over rounds), against the reference's
interrupt idiom and its pre-drawn-cut variant; the twin's events per device-update and memory
per device; each model's outcome counts (they should agree). From {SHARD_FROM:,} devices the
sharded twin (--shards) runs too, beside the unsharded one.

time on the 2-core build machine, quiet, with the twin as of issue 18: the default sizes take about
a minute a round (`make bench`: 3 rounds, about 3 minutes; twice that while other work loads the
machine); --devices 1000000 about 15 minutes (the sharded twin, the twin, both references; 41
minutes measured while other work loaded the machine).

--instructions counts CPU instructions with valgrind's callgrind instead of timing, which a
machine whose speed drifts cannot blur: each model runs in a process of its own at N devices
(default {DEFAULT_DEVICES:,}, one size) and at N/{BASE_DIVISOR}; the difference of the counts over the difference
of the device-updates is its instructions per device-update (startup and imports cancel out).
About 3 minutes at 4 000 devices, two processes at a time. Needs valgrind.

examples:
  pvsim bench --repeat 3                         # what `make bench` runs
  pvsim bench --devices 1000000 --models sharded # the million-device run, sharded
  pvsim bench --instructions --devices 4000      # instructions per device-update
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="the twin against the plain-SimPy reference model: wall ratio, µs per device-update, memory",
        description="Run the twin and the reference model (both variants) on the quickstart scenario at each "
        "--devices, interleaved in this process, and compare them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--devices", action="append", metavar="N[,N...]",
        help=f"fleet sizes, repeatable or comma-separated (default {','.join(map(str, DEFAULT_SIZES))})",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1, help="rounds at each size, order reversed every other round (default 1)")
    parser.add_argument("--models", help=f"which to run, comma-separated from {','.join(ALL_MODELS)} (default: all that apply)")
    parser.add_argument("--shards", type=int, default=2, help=f"shards of the sharded twin, run from {SHARD_FROM:,} devices (default 2)")
    parser.add_argument("--dask", metavar="ADDRESS", help="run the sharded twin's shards as Dask actors on this scheduler")
    parser.add_argument(
        "--dask-local", type=int, metavar="WORKERS",
        help="... on a Dask LocalCluster of WORKERS single-threaded worker processes started here",
    )  # fmt: skip
    parser.add_argument("--scenario", type=Path, default=QUICKSTART, help="scenario file (default scenarios/quickstart.toml)")
    parser.add_argument(
        "--instructions", action="store_true",
        help=f"count instructions per device-update under callgrind instead of timing (one --devices, default {DEFAULT_DEVICES:,})",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.set_defaults(func=handle)


def _sizes(values: list[str] | None) -> list[int]:
    if not values:
        return list(DEFAULT_SIZES)
    sizes = []
    for value in values:
        for item in value.split(","):
            try:
                n = int(item.replace("_", ""))
            except ValueError:
                raise ScenarioError(f"expected whole numbers, got {item!r}", source="--devices") from None
            check_option("--devices", "fleet.devices", n)
            sizes.append(n)
    return sorted(set(sizes))


def _models(value: str | None) -> list[str] | None:
    if value is None:
        return None
    models = [m.strip() for m in value.split(",") if m.strip()]
    unknown = [m for m in models if m not in ALL_MODELS]
    if unknown or not models:
        raise ScenarioError(f"unknown model {unknown[0] if unknown else value!r}; expected some of {','.join(ALL_MODELS)}", source="--models")
    return models


def handle(args: argparse.Namespace) -> int:
    sizes = _sizes(args.devices)
    models = _models(args.models)
    if args.repeat < 1:
        raise ScenarioError("must be at least 1", source="--repeat")
    if args.shards < 1:
        raise ScenarioError("must be at least 1", source="--shards")
    if args.dask and args.dask_local:
        raise ScenarioError("give --dask or --dask-local, not both", source="--dask-local")
    if args.dask_local is not None and args.dask_local < 1:
        raise ScenarioError("must be at least 1", source="--dask-local")
    if args.json:
        check_file(args.json, "--json")
    err = Console(stderr=True)
    if args.instructions:
        return _handle_instructions(args, models, err)
    with ExitStack() as stack:
        dask: Any = args.dask
        if args.dask_local:
            dask = stack.enter_context(local_dask_cluster(args.dask_local))
        report = bench(sizes, args.repeat, models, args.shards, dask, args.scenario, say=lambda line: err.print(f"[dim]{line}[/dim]"))
    console = Console()
    console.width = max(console.width, 120)  # the tables' headers stay whole when piped to a file
    for row in report["sizes"]:
        console.print(_size_table(row))
    console.print(_summary_table(report))
    if args.json:
        _write_json(args.json, report)
    return 0


def _handle_instructions(args: argparse.Namespace, models: list[str] | None, err: Console) -> int:
    sizes = _sizes(args.devices) if args.devices else [DEFAULT_DEVICES]
    if len(sizes) != 1:
        raise ScenarioError("--instructions counts one size at a time", source="--devices")
    if models is not None and "sharded" in models:
        raise ScenarioError("the sharded twin is not counted (its work is in other processes)", source="--models")
    if args.dask or args.dask_local or args.repeat != 1:
        raise ScenarioError("--instructions runs each model once, here: no --dask, --dask-local or --repeat", source="--instructions")
    report = bench_instructions(sizes[0], models, args.scenario, say=lambda line: err.print(f"[dim]{line}[/dim]"))
    table = Table(title=f"instructions per device-update (callgrind: {report['devices']:,} devices less {report['base_devices']:,})")
    table.add_column("model")
    table.add_column("instructions per device-update", justify="right")
    table.add_column("twin ÷ it", justify="right")
    for model, figures in report["models"].items():
        ratio = report.get("twin_over_reference", {}).get(model)
        table.add_row(model if model == "twin" else f"reference: {model}", _fmt(figures["instructions_per_device_update"]), _fmt(ratio))
    console = Console()
    console.width = max(console.width, 100)
    console.print(table)
    if args.json:
        _write_json(args.json, report)
    return 0


def _write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _size_table(row: dict[str, Any]) -> Table:
    models = [m for m in ALL_MODELS if m in row]
    table = Table(title=f"{row['devices']:,} devices ({row['rounds']} round{'s' if row['rounds'] > 1 else ''}; the median round shown)")
    table.add_column("figure", no_wrap=True)
    for model in models:
        table.add_column(model if model in ("twin", "sharded") else f"reference: {model}", justify="right")
    keys: list[str] = []
    for model in models:
        keys += [k for k in row[model] if k not in keys]
    for key in keys:
        table.add_row(key, *(_fmt(row[m].get(key)) for m in models))
    table.add_row("µs per device-update", *(_fmt(row["us_per_device_update"].get(m)) for m in models))
    table.add_row("CPU µs per device-update", *(_fmt(row["cpu_us_per_device_update"].get(m)) for m in models))
    return table


def _summary_table(report: dict[str, Any]) -> Table:
    bar_i, bar_p = TARGETS["twin_over_reference.interrupt"], TARGETS["twin_over_reference.predrawn"]
    table = Table(title="twin against the reference model: wall µs per device-update; twin ÷ reference (wall; CPU)")
    table.add_column("devices", justify="right")
    for model in MODELS:
        table.add_column(f"µs {model}", justify="right")
    table.add_column(f"twin ÷ interrupt (bar ≤ {bar_i})", justify="right")
    table.add_column(f"twin ÷ predrawn (bar ≤ {bar_p})", justify="right")
    for row in report["sizes"]:
        if not any(m in row for m in MODELS):
            continue  # only the sharded twin ran: it is in the caption
        wall, cpu = row.get("twin_over_reference", {}), row.get("twin_over_reference_cpu", {})
        table.add_row(
            f"{row['devices']:,}", *(_fmt(row["us_per_device_update"].get(m)) for m in MODELS),
            *(f"{_fmt(wall.get(v))}; {_fmt(cpu.get(v))}" for v in ("interrupt", "predrawn")),
        )  # fmt: skip
    notes = []
    growth = report.get("twin_cost_growth")
    if growth:
        notes.append(
            f"twin µs per device-update grows {_fmt(growth['ratio'])}x (CPU µs: {_fmt(growth['cpu_ratio'])}x) from "
            f"{growth['from_devices']:,} to {growth['to_devices']:,} devices (bar: ≤ {TARGETS['twin_cost_growth_10k_to_1m']}x "
            "from 10 000 to 1 000 000)"
        )
    for row in report["sizes"]:
        sharded = row.get("sharded")
        if sharded is None:
            continue
        line = (
            f"{row['devices']:,} devices, sharded twin ({sharded['shards']} shards, {sharded['executor']}): "
            f"{_fmt(sharded['wall_s'])} s wall, {_fmt(sharded['peak_rss_mb_in_all'])} MB peak RSS in all "
            f"(bar: ≤ {TARGETS['million_wall_s']:g} s, ≤ {TARGETS['million_peak_rss_mb']:g} MB)"
        )
        if "twin" in row:
            line += f"; unsharded: {_fmt(row['twin']['wall_s'])} s, {_fmt(row['twin']['peak_rss_mb'])} MB"
        notes.append(line)
    if notes:
        table.caption = "\n".join(notes)
    return table
