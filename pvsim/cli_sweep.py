"""`pvsim sweep SCENARIO --grid KEY=V1,V2 ...`: factorial parameter sweeps (desmod-style).

Every combination of the grid values × every seed is one run; runs go to a process pool, or to a
Dask cluster with `--dask tcp://host:8786`. Values are TOML literals (`0.1`, `true`, `"canary"`;
bare words are taken as strings) and every combination is validated like a scenario file before
anything runs. Into `--out`: sweep.csv (one row per run, every grid key a column; sweep.parquet too
when pyarrow is installed), summary.csv (mean and 95 % CI per grid point and metric), sweep.json,
and plot-<key>.png (each metric against each grid key).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import tomllib
from pathlib import Path
from typing import Any

from rich.console import Console

from pvsim.cli_compare import comparison_table
from pvsim.scenario import ScenarioError, load_scenario
from pvsim.sweep import (
    METRICS,
    make_jobs,
    mean_ci,
    report_failures,
    run_with_progress,
    summarize,
    tidy_rows,
)


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


def grid_variants(grid: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
    """label -> overrides for every combination of the grid (factorial product, in grid order)."""
    keys = list(grid)
    return {
        ", ".join(f"{k}={v}" for k, v in zip(keys, combo, strict=True)): dict(zip(keys, combo, strict=True))
        for combo in itertools.product(*(grid[k] for k in keys))
    }


def write_table(records: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle_:
        writer = csv.DictWriter(handle_, fieldnames=list(records[0]) if records else [])
        writer.writeheader()
        writer.writerows(records)


def write_parquet(records: list[dict[str, Any]], path: Path) -> bool:
    """sweep.parquet when pyarrow is installed (optional; the CSV has the same table)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return False
    pq.write_table(pa.Table.from_pylist(records), path)
    return True


def summary_records(rows: list[dict[str, Any]], grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    out = []
    for label, group in _by(rows, "label").items():
        record: dict[str, Any] = {"variant": label, **group[0]["point"], "runs": len(group)}
        record["failed"] = sum(1 for r in group if r.get("error"))
        for metric in METRICS:
            mean, ci, _n = mean_ci([r[metric] for r in group])
            record[f"{metric}_mean"], record[f"{metric}_ci95"] = mean, ci
        out.append(record)
    return out


def _by(rows: list[dict[str, Any]], key: str) -> dict[Any, list[dict[str, Any]]]:
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row[key], []).append(row)
    return groups


def plot_against(rows: list[dict[str, Any]], grid: dict[str, list[Any]], key: str, title: str) -> bytes:
    """Every metric against `key`: one line (mean ± 95 % CI over seeds) per combination of
    the other grid keys, or their pooled mean when there are more than six combinations."""
    from pvsim.report import figure_png, plt

    others = [k for k in grid if k != key]
    combos = sorted({tuple((k, repr(r["point"][k])) for k in others) for r in rows})
    if len(combos) > 6:
        combos, others = [()], []
    values = grid[key]
    ncols = 5
    nrows = math.ceil(len(METRICS) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.8 * nrows), dpi=100, squeeze=False)
    for ax in axes.flat[len(METRICS) :]:
        ax.set_visible(False)
    for ax, metric in zip(axes.flat, METRICS, strict=False):
        for combo in combos:
            means, errors = [], []
            for value in values:
                picked = [
                    r[metric] for r in rows
                    if r["point"][key] == value and all(repr(r["point"][k]) == v for k, v in combo)
                ]  # fmt: skip
                mean, ci, _n = mean_ci(picked)
                means.append(float("nan") if mean is None else mean)
                errors.append(ci or 0.0)
            label = ", ".join(f"{k}={v}" for k, v in combo) or "all"
            ax.errorbar([str(v) for v in values], means, yerr=errors, marker="o", capsize=3, label=label)
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel(key, fontsize=8)
        ax.grid(alpha=0.3)
    if len(combos) > 1:
        axes.flat[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return figure_png(fig)


def handle(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario, **{"fleet.devices": args.devices})
    grid = parse_grid(args.grid)
    if args.seeds < 1:
        raise ScenarioError("must be at least 1", source="--seeds")
    variants = grid_variants(grid)
    jobs = make_jobs(scenario, variants, args.seeds)  # validates every combination first
    console = Console(stderr=True)
    rows = run_with_progress(jobs, args.workers, args.dask, console)
    summary = summarize(rows)
    keys = list(grid)
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
        "failures": [{"point": r["point"], "seed": r["seed"], "run_seed": r["run_seed"], "traceback": r["error"]} for r in rows if r.get("error")],
    }
    (out / "sweep.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    records = tidy_rows(rows, keys)
    write_table(records, out / "sweep.csv")
    written = ["sweep.json", "sweep.csv", "summary.csv"]
    if write_parquet(records, out / "sweep.parquet"):
        written.append("sweep.parquet")
    write_table(summary_records(rows, grid), out / "summary.csv")
    for key in keys:
        name = f"plot-{key}.png"
        (out / name).write_bytes(plot_against(rows, grid, key, f"{scenario.name}: metrics against {key}"))
        written.append(name)
    console.print(f"wrote {', '.join(str(out / w) for w in written)}")
    return report_failures(rows, console)
