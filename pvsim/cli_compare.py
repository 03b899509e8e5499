"""`pvsim compare SCENARIO --strategies A,B | --models A,B --seeds N`: variants side by side.

The sweep machinery (pvsim.sweep) with one difference: seed k is the same for every variant
(common random numbers: device 17 has the same link, phase and draws under every strategy), which
makes the differences between variants sharper than independent seeds would.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pvsim.scenario import STRATEGIES, UPDATE_MODELS, ScenarioError, load_scenario
from pvsim.sweep import METRICS, make_jobs, report_failures, run_with_progress, summarize

PLOTTED = ("bricked", "rolled_back", "exposed", "gb_downloaded", "time_to_95pct_s", "storage_footprint_mb")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="strategies or update models side by side over many seeds",
        description="Run a scenario once per variant and seed (process pool) and show means with "
        "95 % confidence intervals, plus a comparison plot.",
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


def _variants(args: argparse.Namespace, source: str) -> dict[str, dict[str, Any]]:
    if args.strategies:
        names, key, allowed, flag = args.strategies, "rollout.strategy", STRATEGIES, "--strategies"
    else:
        names, key, allowed, flag = args.models, "update_model.kind", UPDATE_MODELS, "--models"
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    for name in chosen:
        if name not in allowed:
            raise ScenarioError(f"unknown {name!r}; expected some of {', '.join(allowed)}", source=flag)
    if not chosen:
        raise ScenarioError("needs at least one name", source=flag)
    return {name: {key: name} for name in chosen}


def _fmt(mean: float | None, ci: float | None) -> str:
    if mean is None:
        return "n/a"
    text = f"{mean:,.1f}" if abs(mean) < 1e6 else f"{mean:,.0f}"
    return text + (f" ± {ci:,.1f}" if ci is not None else "")


def comparison_table(title: str, summary: dict) -> Table:
    table = Table(title=title)
    table.add_column("metric (mean ± 95% CI)")
    for label in summary:
        table.add_column(label, justify="right")
    for metric in METRICS:
        table.add_row(metric, *(_fmt(*summary[label][metric][:2]) for label in summary))
    return table


def comparison_png(summary: dict, title: str) -> bytes:
    from pvsim.report import figure_png, plt

    labels = list(summary)
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5), dpi=100)
    for ax, metric in zip(axes.flat, PLOTTED, strict=True):
        # a metric never reached (e.g. time to 95 %) has no bar rather than a zero
        means = [m if (m := summary[label][metric][0]) is not None else float("nan") for label in labels]
        errors = [summary[label][metric][1] or 0.0 for label in labels]
        ax.bar(labels, means, yerr=errors, capsize=4, color="tab:blue", alpha=0.8)
        ax.set_title(metric, fontsize=10)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return figure_png(fig)


def handle(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario, **{"fleet.devices": args.devices})
    variants = _variants(args, args.scenario)
    if args.seeds < 1:
        raise ScenarioError("must be at least 1", source="--seeds")
    jobs = make_jobs(scenario, variants, args.seeds, common_random_numbers=True)
    console = Console(stderr=True)
    rows = run_with_progress(jobs, args.workers, args.dask, console)
    summary = summarize(rows)
    title = f"{scenario.name}: {scenario.fleet.devices} devices, {args.seeds} seeds"
    Console().print(comparison_table(title, summary))
    out = args.out or Path("results") / f"compare-{scenario.name}"
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "scenario": scenario.name,
        "seeds": args.seeds,
        "variants": list(variants),
        "summary": {
            label: {m: {"mean": v[0], "ci95": v[1], "n": v[2]} for m, v in metrics.items()}
            for label, metrics in summary.items()
        },
        "runs": [{k: v for k, v in row.items() if k not in ("wall_s", "point")} for row in rows],
    }
    (out / "compare.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    (out / "compare.png").write_bytes(comparison_png(summary, title))
    console.print(f"wrote {out / 'compare.json'}, {out / 'compare.png'}")
    return report_failures(rows, console)
