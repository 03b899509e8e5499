"""What `pvsim sweep` writes: the tidy table, the per-point summary, sweep.json and the plots.

Into the output folder: sweep.csv (one row per run, every grid key a column; sweep.parquet too
when pyarrow is installed), summary.csv (mean and 95 % CI per grid point and metric), sweep.json,
and plot-<key>.png (each metric against each grid key).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from pvsim.sweep import METRICS, mean_ci, summary_json, tidy_rows


def write_table(records: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(records[0]) if records else [])
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


def write_outputs(
    out: Path, scenario: str, grid: dict[str, list[Any]], seeds: int, summary: dict, rows: list[dict[str, Any]]
) -> list[str]:
    """Every output into `out`; the names written, in order."""
    keys = list(grid)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "scenario": scenario,
        "grid": grid,
        "seeds": seeds,
        "summary": summary_json(summary),
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
        (out / name).write_bytes(plot_against(rows, grid, key, f"{scenario}: metrics against {key}"))
        written.append(name)
    return written
