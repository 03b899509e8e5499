"""Variants of one scenario side by side (`pvsim compare`): the variants, the table, the plot.

The sweep machinery (pvsim.sweep) with one difference: seed k is the same for every variant
(common random numbers: device 17 has the same link, phase and draws under every strategy), which
makes the differences between variants sharper than independent seeds would.

Counts over seeds are often bimodal (a rollout pauses in some seeds and not in others), so a
symmetric normal interval misleads (it goes below zero). Each cell gives the mean with a 95 %
percentile bootstrap interval of the mean, which stays within the values seen, and n; a time is
averaged over the seeds that reached it and says how many did ("reached in k of n").
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from pvsim.scenario import STRATEGIES, UPDATE_MODELS, ScenarioError
from pvsim.sweep import METRICS

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


# metrics that are times: averaged over the seeds that reached them, and said how many did
TIMES = ("time_to_50pct_s", "time_to_95pct_s")
BOOTSTRAP_RESAMPLES = 2000
Z95 = 1.959964


@dataclass(frozen=True)
class Cell:
    """One metric of one variant over its seeds: the mean with a 95 % interval that respects the
    metric (a bootstrap percentile interval of the mean: never below the smallest value, so never
    below zero for a count), n runs, and for times how many of them reached it."""

    mean: float | None
    low: float | None
    high: float | None
    n: int  # runs that did not fail
    reached: int  # runs with a value (for times: that reached it); n for other metrics
    reached_low: float | None = None  # Wilson 95 % interval of the share of runs that reached it
    reached_high: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("mean", "low", "high", "n", "reached", "reached_low", "reached_high")}


def bootstrap_interval(values: Sequence[float], seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean (seeded: the same table every time)."""
    xs = np.asarray(values, dtype=np.float64)
    if len(xs) < 2 or float(xs.min()) == float(xs.max()):
        return float(xs.mean()), float(xs.mean())
    rng = np.random.default_rng(seed)
    means = xs[rng.integers(0, len(xs), size=(BOOTSTRAP_RESAMPLES, len(xs)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def wilson_interval(k: int, n: int) -> tuple[float, float]:
    """Wilson score 95 % interval of a proportion k/n (stays inside [0, 1], sensible at 0 and n)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def cell(values: Sequence[float | None], n: int, metric: str) -> Cell:
    xs = [float(v) for v in values if v is not None]
    wilson = wilson_interval(len(xs), n) if metric in TIMES else (None, None)
    if not xs:
        return Cell(None, None, None, n, 0, *wilson)
    low, high = bootstrap_interval(xs)
    return Cell(statistics.fmean(xs), low, high, n, len(xs), *wilson)


def summarize_cells(rows: list[dict[str, Any]]) -> dict[str, dict[str, Cell]]:
    """label -> metric -> Cell over the runs of that label that did not fail."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["label"], []).append(row)
    out = {}
    for label, group in groups.items():
        ok = [r for r in group if not r.get("error")]
        out[label] = {m: cell([r[m] for r in ok], len(ok), m) for m in METRICS}
    return out


def _number(x: float) -> str:
    return f"{x:,.1f}" if abs(x) < 1e6 else f"{x:,.0f}"


def format_cell(c: Cell, metric: str) -> str:
    if c.mean is None:
        return f"not reached (0 of {c.n})" if metric in TIMES else f"n/a (n={c.n})"
    text = _number(c.mean)
    if c.low is not None and c.high is not None and c.n > 1 and c.low != c.high:
        text += f" [{_number(c.low)}, {_number(c.high)}]"
    if metric in TIMES:
        return text + f" (reached in {c.reached} of {c.n})"
    return text + f" n={c.n}"


def comparison_table(title: str, cells: dict[str, dict[str, Cell]]) -> Table:
    table = Table(title=title, caption="mean [95 % bootstrap interval]; times: over the seeds that reached them")
    table.add_column("metric")
    for label in cells:
        table.add_column(label, justify="right")
    for metric in METRICS:
        table.add_row(metric, *(format_cell(cells[label][metric], metric) for label in cells))
    return table


def comparison_png(cells: dict[str, dict[str, Cell]], title: str) -> bytes:
    from pvsim.report import figure_png, plt

    labels = list(cells)
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5), dpi=100)
    for ax, metric in zip(axes.flat, PLOTTED, strict=True):
        column = [cells[label][metric] for label in labels]
        means = [c.mean if c.mean is not None else float("nan") for c in column]
        below = [c.mean - c.low if c.mean is not None and c.low is not None else 0.0 for c in column]
        above = [c.high - c.mean if c.mean is not None and c.high is not None else 0.0 for c in column]
        ax.bar(labels, means, yerr=[below, above], capsize=4, color="tab:blue", alpha=0.8)
        if all(c.mean is None for c in column):
            # an empty panel says why it is empty
            ax.text(0.5, 0.5, "not reached\nin any seed", transform=ax.transAxes, ha="center", va="center", color="dimgrey")
            ax.set_yticks([])
        for x, c in enumerate(column):
            if metric in TIMES and c.n:
                note = f"{c.reached} of {c.n}" if c.mean is not None else f"not reached\n(0 of {c.n})"
                ax.annotate(note, (x, 0), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=7)
        ax.set_title(metric + (" (seeds that reached it)" if metric in TIMES else ""), fontsize=10)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title + "  (bars: mean; whiskers: 95 % bootstrap interval)")
    fig.tight_layout()
    return figure_png(fig)


def write_outputs(
    out: Path, scenario: str, seeds: int, labels: list[str], cells: dict[str, dict[str, Cell]], rows: list[dict[str, Any]],
    title: str,
) -> list[Path]:
    """compare.json (summary and every run) and compare.png into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "scenario": scenario,
        "seeds": seeds,
        "variants": labels,
        "interval": "95 % percentile bootstrap of the mean; times over the seeds that reached them (Wilson interval of that share)",
        "summary": {label: {m: c.as_json() for m, c in metrics.items()} for label, metrics in cells.items()},
        "runs": [{k: v for k, v in row.items() if k not in ("wall_s", "point")} for row in rows],
    }
    (out / "compare.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    (out / "compare.png").write_bytes(comparison_png(cells, title))
    return [out / "compare.json", out / "compare.png"]
