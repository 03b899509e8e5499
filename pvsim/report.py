"""Files a run leaves behind: results.json, timeline.csv, adoption.png and a self-contained report.html.

Plots use matplotlib's Agg backend (no display needed); the HTML inlines them as base64 so the
report is one file that can be mailed or attached to a ticket.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pvsim.outputs import RUN_FILES  # noqa: E402
from pvsim.results import RunResult  # noqa: E402


def write_results_json(result: RunResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.results, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def write_timeline_csv(result: RunResult, path: Path) -> None:
    timeline = result.timeline
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["t_s", *timeline["names"]])
        for t, counts in zip(timeline["t"], timeline["counts"], strict=True):
            writer.writerow([f"{t:.0f}", *counts])


def adoption_figure(result: RunResult) -> plt.Figure:
    timeline = result.timeline
    devices = max(1, result.results["devices"])
    hours = [t / 3600.0 for t in timeline["t"]]
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    columns = list(zip(*timeline["counts"], strict=True)) if timeline["counts"] else []
    for name, column in zip(timeline["names"], columns, strict=True):
        ax.plot(hours, [100.0 * c / devices for c in column], label=f"rev {name}", linewidth=1.6)
    shown = [(t, label) for t, label in result.marks if label.endswith(("released", "paused", "aborted"))]
    for k, (t, label) in enumerate(shown):
        ax.axvline(t / 3600.0, color="grey", linestyle=":", linewidth=1)
        # stagger labels so a pause right after its release stays readable
        y = 97 - (k % 2) * 40
        ax.annotate(label, (t / 3600.0, y), rotation=90, fontsize=7, va="top", ha="right", color="dimgrey")
    ax.set_xlabel("simulated time (h)")
    ax.set_ylabel("share of fleet running (%)")
    ax.set_ylim(0, 100)
    r = result.results
    ax.set_title(f"{r['scenario']}: {r['devices']} devices, {r['strategy']}, {r['update_model']}")
    ax.legend(loc="center right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def figure_png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in row.values()) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def html_report(result: RunResult, images: dict[str, bytes], title: str) -> str:
    r = result.results
    summary = [{"metric": k, "value": json.dumps(v) if isinstance(v, dict) else v} for k, v in r.items()]
    summary += [{"metric": k, "value": v} for k, v in result.extras.items()]
    imgs = "".join(
        f'<h2>{html.escape(name)}</h2><img alt="{html.escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode()}">'
        for name, png in images.items()
    )
    marks = [{"t_s": round(t, 1), "event": label} for t, label in result.marks]
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}}img{{max-width:100%}}</style>
</head><body>
<h1>{html.escape(title)}</h1>
{imgs}
<h2>Releases</h2>{_table(result.releases)}
<h2>Results</h2>{_table(summary)}
<h2>Rollout events</h2>{_table(marks)}
</body></html>
"""


def write_run_outputs(result: RunResult, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {role: out / name for role, name in RUN_FILES.items()}
    write_results_json(result, paths["results"])
    write_timeline_csv(result, paths["timeline"])
    png = figure_png(adoption_figure(result))
    paths["adoption"].write_bytes(png)
    title = f"pvsim run: {result.results['scenario']} (seed {result.results['seed']})"
    paths["report"].write_text(html_report(result, {"Adoption": png}, title), encoding="utf-8")
    return paths
