"""How a comparison is shown: one rich table (counts per release side by side, sequences, times)
and the JSON document (`--json`; its keys are the ones docs/validation.md lists)."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from pvsim.validate.compare import COUNT_KEYS


def json_doc(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in ("scenario", "devices", "time_scale", "real", "sim", "counts_equal",
                                   "sequences_identical", "sequences_total", "time_to_commit", "time_to_final", "agree",
                                   "calibration", "sequences")}  # fmt: skip


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s"


def table(result: dict[str, Any]) -> Group:
    counts = Table(title=f"{result['scenario']}: {result['devices']} devices, real | pvsim")
    counts.add_column("release")
    for key in COUNT_KEYS:
        counts.add_column(key.replace("_", " "), justify="right")
    for name in dict.fromkeys([*result["real"], *result["sim"]]):
        r, s = result["real"].get(name, {}), result["sim"].get(name, {})
        cells = []
        for key in COUNT_KEYS:
            a, b = r.get(key, "-"), s.get(key, "-")
            cells.append(f"{a} | {b}" if a == b else f"[bold red]{a} | {b}[/]")
        counts.add_row(name, *cells)
    times = Table(title="time from the release (scenario seconds)")
    for col in ("", "median", "p90", "n", "KS"):
        times.add_column(col, justify="right")
    for label, key in (("to commit", "time_to_commit"), ("to the final report", "time_to_final")):
        t = result[key]
        ks = "-" if t["ks"] is None else f"{t['ks']:.3f}"
        times.add_row(f"real, {label}", _s(t["real_median_s"]), _s(t["real_p90_s"]), str(t["real_n"]), ks)
        times.add_row(f"pvsim, {label}", _s(t["sim_median_s"]), _s(t["sim_p90_s"]), str(t["sim_n"]), "")
    lines = [counts,
             Text(f"Hub-visible status sequences identical: {result['sequences_identical']} of "
                  f"{result['sequences_total']}"),
             times]  # fmt: skip
    for row in result["sequences"]:
        if not row["identical"]:
            lines.append(Text(f"  differs: {row['release']} slot {row['position']} ({row['real_device']}): "
                              f"real {' > '.join(row['real']) or '-'} | pvsim {' > '.join(row['sim']) or '-'}",
                              style="yellow"))  # fmt: skip
    verdict = "agree" if result["agree"] else "DISAGREE"
    lines.append(Text(f"verdict: {verdict}", style="bold green" if result["agree"] else "bold red"))
    return Group(*lines)
