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
from matplotlib.textpath import TextPath  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from pvsim.outputs import RUN_FILES  # noqa: E402
from pvsim.results import RunResult  # noqa: E402


def write_results_json(result: RunResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.results, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def write_timeline_csv(result: RunResult, path: Path) -> None:
    timeline = result.timeline
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        # revision counts, then the megabytes moved through the Hub's egress by then (cumulative)
        writer.writerow(["t_s", *timeline["names"], "mb_moved"])
        moved = timeline.get("mb_moved") or [0.0] * len(timeline["t"])
        for t, counts, mb in zip(timeline["t"], timeline["counts"], moved, strict=True):
            writer.writerow([f"{t:.0f}", *counts, f"{mb:.3f}"])


# rollout events marked on the plot, and their colours
MARK_COLOURS = {"released": "dimgrey", "paused": "darkorange", "aborted": "firebrick"}
LABEL_PT = 7  # label font size
ROW_PT = 11  # height of one row of labels
LEFT, RIGHT = 0.09, 0.97  # the panels' edges, as fractions of the figure's width
WIDTH_IN = 9


def adoption_figure(result: RunResult) -> plt.Figure:
    """Three panels over simulated time: release/pause/abort labels (in as many rows as needed to
    keep close ones apart), the share of the fleet on each revision, and the device-updates that
    ended rolled back or bricked so far."""
    timeline = result.timeline
    r = result.results
    devices = max(1, r["devices"])
    hours = [t / 3600.0 for t in timeline["t"]]
    span_h = (hours[-1] if hours else 0.0) or 1.0
    xlim = (-0.02 * span_h, 1.02 * span_h)
    marks = [(t / 3600.0, label) for t, label in result.marks if label.endswith(tuple(MARK_COLOURS))]
    # labels are placed against an estimate of the axes' width (the figure's width less the margins)
    placed = label_rows(marks, xlim, axes_width_pt=(RIGHT - LEFT) * WIDTH_IN * 72)
    strip_in = (1 + max((row for row, _ in placed), default=0)) * ROW_PT / 72 + 0.08
    fig, (strip, share, failed) = plt.subplots(
        3, 1, sharex=True, figsize=(WIDTH_IN, 5.9 + strip_in), dpi=100,
        gridspec_kw={"height_ratios": [strip_in, 3.4, 1.5], "hspace": 0.08},
    )  # fmt: skip
    fig.suptitle(f"{r['scenario']}: {r['devices']} devices, {r['strategy']}, {r['update_model']}")
    _draw_marks(strip, (share, failed), marks, placed)
    columns = list(zip(*timeline["counts"], strict=True)) if timeline["counts"] else []
    for name, column in zip(timeline["names"], columns, strict=True):
        share.plot(hours, [100.0 * c / devices for c in column], label=f"rev {name}", linewidth=1.6)
    share.set_ylabel("share of fleet running (%)")
    share.set_ylim(0, 100)
    share.legend(loc="best", fontsize=8)
    _draw_failures(failed, hours, timeline)
    failed.set_xlabel("simulated time (h)")
    failed.set_xlim(*xlim)
    for ax in (share, failed):
        ax.grid(alpha=0.3)
    fig.align_ylabels((share, failed))
    fig.subplots_adjust(left=LEFT, right=RIGHT, top=1 - 0.45 / fig.get_figheight(), bottom=0.5 / fig.get_figheight())
    return fig


def label_rows(marks: list[tuple[float, str]], xlim: tuple[float, float], axes_width_pt: float) -> list[tuple[int, bool]]:
    """(row, leftward) per label: the first row in which it overlaps no earlier label (marks come
    sorted by time). A label starts at its line, or ends there (leftward) if it would leave the axes."""
    hours_per_pt = (xlim[1] - xlim[0]) / axes_width_pt
    ends: list[float] = []  # per row, where its last label ends (hours)
    placed = []
    for x, label in marks:
        width = (TextPath((0, 0), label, size=LABEL_PT).get_extents().width + 8) * hours_per_pt
        leftward = x + width > xlim[1]
        start = x - width if leftward else x
        row = next((k for k, end in enumerate(ends) if end < start), len(ends))
        if row == len(ends):
            ends.append(start)
        ends[row] = start + width
        placed.append((row, leftward))
    return placed


def _draw_marks(strip: plt.Axes, panels: tuple[plt.Axes, ...], marks: list[tuple[float, str]], placed: list[tuple[int, bool]]) -> None:
    rows = 1 + max((row for row, _ in placed), default=0)
    strip.set_ylim(rows, 0)  # row 0 at the top
    strip.axis("off")
    for (x, label), (row, leftward) in zip(marks, placed, strict=True):
        colour = MARK_COLOURS[label.rsplit(" ", 1)[-1]]
        for ax in panels:
            ax.axvline(x, color=colour, linestyle=":", linewidth=1)
        strip.vlines(x, row + 0.5, rows, color=colour, linestyle=":", linewidth=1)
        strip.annotate(
            label, (x, row + 0.5), xytext=(-3 if leftward else 3, 0), textcoords="offset points",
            fontsize=LABEL_PT, va="center", ha="right" if leftward else "left", color=colour,
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5},
        )  # fmt: skip


def _draw_failures(ax: plt.Axes, hours: list[float], timeline: dict[str, Any]) -> None:
    """Device-updates that ended rolled back or bricked, counted so far at each timeline step."""
    zeros = [0] * len(hours)
    series = {
        "rolled back": (timeline.get("rolled_back", zeros), "tab:purple"),
        "bricked": (timeline.get("bricked", zeros), "black"),
    }
    for name, (counts, colour) in series.items():
        total = counts[-1] if counts else 0
        ax.plot(hours, counts, label=f"{name} ({total})", color=colour, linewidth=1.6)
    ax.set_ylabel("device-updates\n(cumulative)")
    # head room above the highest count keeps the one-row legend off the lines
    ax.set_ylim(bottom=0, top=max([1, *(c[-1] for c, _ in series.values() if c)]) * 1.5)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))
    ax.legend(loc="upper left", fontsize=8, ncols=2)


def figure_png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _cell(value: Any) -> str:
    return "—" if value is None else html.escape(str(value))


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row.values()) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _tables_by_column(rows: list[dict[str, Any]], key: str, per_table: int = 6) -> str:
    """One column per row of `rows` (headed by its `key`), one line per field, at most `per_table`
    columns to a table: releases have many fields and few rows, so this way round they fit the page."""
    tables = []
    for first in range(0, len(rows), per_table):
        chunk = rows[first : first + per_table]
        head = f"<th>{html.escape(key)}</th>" + "".join(f"<th>{_cell(row[key])}</th>" for row in chunk)
        body = "".join(
            f"<tr><th>{html.escape(field)}</th>" + "".join(f"<td>{_cell(row.get(field))}</td>" for row in chunk) + "</tr>"
            for field in rows[0]
            if field != key
        )
        tables.append(f'<table class="by-column"><tr>{head}</tr>{body}</table>')
    return "\n".join(tables)


# The report never scrolls sideways, down to a 1280 px wide window (tests/test_report_render.py):
# the body has a maximum width, long values wrap inside their cell, and the releases table is
# turned so that releases are columns, a few to a table.
STYLE = """\
body{font-family:sans-serif;margin:2em;max-width:1100px}
table{border-collapse:collapse;margin:1em 0;max-width:100%}
td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left;overflow-wrap:break-word}
table.by-column tr:first-child th{overflow-wrap:anywhere}
table.by-column th:first-child{white-space:nowrap}
table.by-column td{text-align:right;white-space:nowrap}
img{max-width:100%;height:auto}"""


def _plain_fields(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Release rows without their tables and lists (reasons, device ids): those get sections."""
    return [{k: v for k, v in row.items() if not isinstance(v, dict | list)} for row in rows]


def failure_rows(releases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (release, outcome, reason): why device-updates failed, in the update client's
    words (Pantavisor: the final status message the Hub holds)."""
    rows = []
    for release in releases:
        for outcome in ("rolled_back", "wontgo", "bricked"):
            for reason, n in release.get(f"{outcome}_reasons", {}).items():
                rows.append({"release": release["release"], "outcome": outcome, "reason": reason, "device-updates": n})
    return rows


def silent_rows(releases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Devices the Hub counted failed because they sent no final report in time (device_timeout_s)."""
    return [
        {"release": r["release"], "devices": r["timed_out"], "first ids": " ".join(map(str, r["timed_out_devices"]))}
        for r in releases
        if r.get("timed_out")
    ]


def html_report(result: RunResult, images: dict[str, bytes], title: str) -> str:
    r = result.results
    summary = [{"metric": k, "value": json.dumps(v) if isinstance(v, dict) else v} for k, v in r.items() if k != "releases"]
    summary += [{"metric": k, "value": v} for k, v in result.extras.items()]
    imgs = "".join(
        f'<h2>{html.escape(name)}</h2><img alt="{html.escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode()}">'
        for name, png in images.items()
    )
    marks = [{"t_s": round(t, 1), "event": label} for t, label in result.marks]
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
{STYLE}
</style>
</head><body>
<h1>{html.escape(title)}</h1>
{imgs}
<h2>Releases</h2>{_tables_by_column(_plain_fields(result.releases), "release")}
<h2>Why device-updates failed</h2>{_table(failure_rows(result.releases)) or "<p>none failed</p>"}
<h2>Silent devices</h2>{_table(silent_rows(result.releases)) or "<p>every device that took a release reported in time</p>"}
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
