"""A trace as text: one line per entry, in Pantavisor's words (statuses and messages verbatim)."""

from __future__ import annotations

from collections.abc import Iterable

from pvsim.trace.run import Entry

_REPORTED = {"yes": "-> Hub", "no": "(saved, not reported)", "lost": "(report lost: Hub down)"}


def _env_value(value: str) -> str:
    return value or "(unset)"


def describe(entry: Entry) -> str:
    what = entry["what"]
    if what in ("record", "report"):
        told = _REPORTED[entry["reported"]]
        if what == "report":
            told = "re-sent " + told
        return (
            f"{entry['rev']} {entry['status']} {entry['progress']}% retries={entry['retries']} "
            f"\"{entry['message']}\" {told}"
        )
    if what == "env":
        keys = " ".join(f"{k}={_env_value(entry[k])}" for k in ("pv_rev", "pv_try") if k in entry)
        return keys + (" (redundant copies)" if entry["redundant"] else " (in place)")
    if what == "boot":
        how = " kernel panic" if entry["panic"] else ""
        return f"{entry['rev']}{how} (env pv_rev={_env_value(entry['pv_rev'])} pv_try={_env_value(entry['pv_try'])})"
    if what == "reboot":
        return entry["reason"]
    if what == "ctrl":
        return f"{entry['status']} {entry['reason']}".rstrip()
    if what == "power-cut":
        where = "inside" if entry["torn"] else "before"
        return f"{where} the write: {entry['write']}" if entry["write"] else "between steps"
    if what == "boot-failed":
        return entry["reason"]
    if what == "end":
        records = "; ".join(f"{rev} {text}" for rev, text in entry["records"].items())
        return (
            f"running {entry['running'] or '(nothing)'}, pv_rev={_env_value(entry['pv_rev'])} "
            f"pv_try={_env_value(entry['pv_try'])}, engine {entry['phase']}; records: {records}"
        )
    return str(entry)


def render(entries: Iterable[Entry]) -> str:
    """The whole trace, one line per entry: step number, what, details."""
    lines = [f"{e['step']:>3}  {e['what']:<11} {describe(e)}" for e in entries]
    return "\n".join(lines) + "\n"
