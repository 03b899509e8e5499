"""What `pvsim validate` shows while the real fleet runs (rich): the stage, a live table of each
release's counts, the devices' phases, and the events fired so far. `Quiet` shows nothing."""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text


class Quiet:
    def stage(self, text: str) -> None: ...
    def note(self, text: str) -> None: ...
    def update(self, now: float, until: float, rows: list[Any], phases: dict[str, str]) -> None: ...
    def close(self) -> None: ...


class Live_:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.notes: list[str] = []
        self._stage = "starting"
        self._table: Table | None = None
        self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
        self.live.start()

    def stage(self, text: str) -> None:
        self._stage = text
        self.live.update(self._render())

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.live.update(self._render())

    def update(self, now: float, until: float, rows: list[Any], phases: dict[str, str]) -> None:
        self._stage = f"real fleet: {now:6.1f} s of at most {until:g} s (scenario seconds)"
        table = Table(title="releases on the real Hub", expand=False)
        for col in ("release", "state", "fleet", "admitted", "succeeded", "failed", "in flight"):
            table.add_column(col, justify="left" if col in ("release", "state") else "right")
        for r in rows:
            table.add_row(r["name"], r["status"], str(r["fleet"]), str(r["admitted"]), str(r["ok"]),
                          str(r["bad"]), str(r["admitted"] - r["ok"] - r["bad"]))  # fmt: skip
        if phases:
            counts = Counter(phases.values())
            table.caption = "devices: " + ", ".join(f"{n} {p}" for p, n in sorted(counts.items()))
        self._table = table
        self.live.update(self._render())

    def _render(self) -> Group:
        parts: list[Any] = [Text(self._stage, style="bold")]
        if self._table is not None:
            parts.append(self._table)
        parts += [Text(n, style="dim") for n in self.notes[-8:]]
        return Group(*parts)

    def close(self) -> None:
        self.live.stop()
