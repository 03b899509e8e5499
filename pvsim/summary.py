"""The summary table `pvsim run` prints: results.json as a person reads it, then per release what
happened and why device-updates failed (the reasons are the update client's own words)."""

from __future__ import annotations

from rich.table import Table

from pvsim.results import RunResult

SUMMARY_KEYS = (
    "rollout_state",
    "committed",
    "rolled_back",
    "bricked",
    "stuck",
    "exposed",
    "device_updates",
    "timed_out",
    "bytes_downloaded",
    "bytes_wasted",
    "time_to_50pct_s",
    "time_to_95pct_s",
    "power_cuts",
    "events",
    "wall_s",
    "peak_rss_mb",
)


def cell(key: str, value: object) -> str:
    """A results.json value as a person reads it (results.json itself keeps the raw numbers)."""
    if value is None and key.startswith("time_to_"):
        return "not reached"
    if key.startswith("bytes_") and isinstance(value, int):
        return f"{value} ({value / 1e9:.1f} GB)"
    return str(value)


def summary_table(result: RunResult) -> Table:
    r = result.results
    table = Table(title=f"{r['scenario']}: {r['devices']} devices, {r['strategy']}, {r['update_model']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in SUMMARY_KEYS:
        table.add_row(key, cell(key, r[key]))
    table.add_row("retries", ", ".join(f"{k}: {v}" for k, v in r["retries"].items()))
    table.add_row("final revisions", ", ".join(f"{k}: {v}" for k, v in r["final_revision_counts"].items()))
    fired = {k: v for k, v in r["faults"].items() if v}
    table.add_row("faults fired", ", ".join(f"{k}: {v}" for k, v in fired.items()) or "none")
    for release in result.releases:
        table.add_row(
            f"release {release['release']}",
            f"{release['state']}: {release['committed']} committed, {release['rolled_back']} rolled back, "
            f"{release['bricked']} bricked, {release['wontgo']} wontgo, {release['in_progress_at_end']} in progress",
        )
        for outcome in ("rolled_back", "wontgo", "bricked"):
            for reason, n in release.get(f"{outcome}_reasons", {}).items():
                table.add_row(f"  {outcome.replace('_', ' ')}", f"{n} x {reason!r}")
        if release.get("timed_out"):
            ids = " ".join(map(str, release["timed_out_devices"]))
            table.add_row("  silent (counted failed)", f"{release['timed_out']}: {ids}")
    return table
