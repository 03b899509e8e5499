"""Variants of one scenario side by side (`pvsim compare`): the variants, the table, the plot.

The sweep machinery (pvsim.sweep) with one difference: seed k is the same for every variant
(common random numbers: device 17 has the same link, phase and draws under every strategy), which
makes the differences between variants sharper than independent seeds would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

from pvsim.scenario import STRATEGIES, UPDATE_MODELS, ScenarioError
from pvsim.sweep import METRICS, summary_json

PLOTTED = ("bricked", "rolled_back", "exposed", "gb_downloaded", "time_to_95pct_s", "storage_footprint_mb")


def variants(strategies: str | None, models: str | None) -> dict[str, dict[str, Any]]:
    """label -> overrides, from comma-separated strategy names or else update-model names."""
    allowed: tuple[str, ...]
    if strategies:
        names, key, allowed, flag = strategies, "rollout.strategy", STRATEGIES, "--strategies"
    else:
        names, key, allowed, flag = models or "", "update_model.kind", UPDATE_MODELS, "--models"
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


def write_outputs(
    out: Path, scenario: str, seeds: int, labels: list[str], summary: dict, rows: list[dict[str, Any]], title: str
) -> list[Path]:
    """compare.json (summary and every run) and compare.png into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "scenario": scenario,
        "seeds": seeds,
        "variants": labels,
        "summary": summary_json(summary),
        "runs": [{k: v for k, v in row.items() if k not in ("wall_s", "point")} for row in rows],
    }
    (out / "compare.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    (out / "compare.png").write_bytes(comparison_png(summary, title))
    return [out / "compare.json", out / "compare.png"]
