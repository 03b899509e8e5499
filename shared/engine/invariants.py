"""What a crash check asserts after every crash point, and how its results are counted.

Pure: a backend that cut power (pvsim's crashcheck device) or killed a daemon (pvreal's crash
check on real files) gathers what survived and asks `check_outcome`; both then count their runs in
the same `KindReport` / `CrashReport`, so `pvsim crashcheck` and `pvreal crashcheck` print and
write the same figures. The invariants:

   I1 the device boots and runs a revision (never zero bootable revisions);
   I2 it runs the old committed revision or the new one, the new one only if committed (pv_rev)
      or being tried (pv_try);
   I3 every object of pv_rev and pv_try is present and linked into its trail;
   I4 the final progress agrees with the outcome (DONE/UPDATED iff the new revision stayed,
      ERROR/WONTGO iff not; DONE means pv_rev is the new revision), a failure reason once written
      is never replaced, and the Hub ends up with the device's final record;
   I5 a bounded number of boots reaches quiescence (no reboot loop).

I1 and I5 are seen by the backend while it runs (a boot that fails, boots that never settle);
I2-I4 are `check_outcome`'s.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from shared.engine import commands as C
from shared.engine.config import Ordering
from shared.engine.progress import Progress, Status

OLD, NEW = "old", "new"
MAX_BOOTS = 8  # I5: boots allowed after a cut before the device must be quiet


def fmt_record(record: Progress | None) -> str:
    return "missing" if record is None else f"{record.status.value} '{record.status_msg}'"


def check_outcome(
    *,
    old: str,
    new: str,
    running: str | None,
    pv_rev: str,
    pv_try: str,
    unbootable: Callable[[str], str | None],
    record: Progress | None,
    written_failure: Progress | None,
    hub_records: Iterable[Progress | None] = (),
) -> tuple[str, list[str]]:
    """I2-I4 on what survived: returns the outcome (OLD or NEW) and the violations.

    `running`: the revision the settled device runs; `unbootable(rev)`: why the disk cannot boot
    `rev`, or None; `record`: the new revision's final progress (the Hub's copy once GC removed
    the trail); `written_failure`: a failed record seen on disk at any point of the run;
    `hub_records`: the Hub's copies of the new revision's record."""
    violations: list[str] = []
    # I2
    if running not in (old, new):
        violations.append(f"I2 runs revision {running!r}, neither the old {old} nor the new {new}")
    outcome = NEW if running == new else OLD
    if outcome == NEW and new not in (pv_rev, pv_try):
        violations.append(f"I2 runs {new} although it is neither pv_rev nor pv_try")
    # I3
    for name, rev in (("pv_rev", pv_rev), ("pv_try", pv_try)):
        if rev:
            problem = unbootable(rev)
            if problem:
                violations.append(f"I3 {name}={rev}: {problem}")
    # I4
    status = record.status if record is not None else None
    if outcome == OLD and status is Status.DONE:
        violations.append(
            f"I4 DONE-before-pv_rev window (§3.9): progress of {new} is DONE but the device "
            f"fell back to {old} (pv_rev={pv_rev}, pv_try={pv_try or 'unset'})"
        )
    elif outcome == NEW and status not in (Status.DONE, Status.UPDATED):
        violations.append(f"I4 runs {new} but its progress is {fmt_record(record)}")
    elif outcome == OLD and status not in (Status.ERROR, Status.WONTGO):
        violations.append(f"I4 fell back to {old} but the progress of {new} is {fmt_record(record)}")
    if status is Status.DONE and outcome == NEW and pv_rev != new:
        violations.append(f"I4 progress DONE but pv_rev is {pv_rev}, not {new}")
    if status is Status.UPDATED and pv_try != new:
        violations.append(f"I4 progress UPDATED but pv_try is {pv_try or 'unset'}, not {new}")
    if written_failure is not None and (
        record is None
        or (record.status, record.status_msg)
        != (written_failure.status, written_failure.status_msg)
    ):
        violations.append(
            f"I4 reason lost: {fmt_record(written_failure)} was written, final is {fmt_record(record)}"
        )
    for hub_record in hub_records:
        if record is not None and record.is_final and hub_record != record:
            violations.append(
                f"I4 the Hub has {fmt_record(hub_record)} while the device has {fmt_record(record)}"
            )
    return outcome, violations


def describe_step(command: C.Command) -> str:
    """A short readable name for a durable step."""
    match command:
        case C.PersistProgress(rev=rev, record=r):
            return f"progress {rev} {r.status.value} '{r.status_msg}'"
        case C.SetBootEnv(pv_rev=pv_rev, pv_try=pv_try, redundant=redundant):
            parts = [
                f"{k}={v or '(unset)'}"
                for k, v in (("pv_rev", pv_rev), ("pv_try", pv_try))
                if v is not None
            ]
            return "env " + " ".join(parts) + (" (redundant)" if redundant else " (in place)")
        case C.WriteTrail(rev=rev):
            return f"trail {rev} .pvr/json"
        case C.LinkObjects(rev=rev):
            return f"link objects into trail {rev}"
        case C.WriteDoneMarker(rev=rev):
            return f"done marker {rev}"
        case C.DeleteRevision(rev=rev):
            return f"delete revision {rev}"
        case C.RunGc(reason=reason):
            return f"gc ({reason})"
    return type(command).__name__


# ----------------------------------------------------------------------------- the cut points


@dataclass(frozen=True, slots=True)
class CutPoint:
    step: int  # index of the durable step (counted from the start of the run)
    torn: bool = False  # cut inside the step instead of before it


def cut_points(count: int, tearable: list[bool]) -> Iterable[CutPoint]:
    """Before every step, inside every tearable step, and once at quiescence (step == count)."""
    for i in range(count + 1):
        yield CutPoint(i)
        if i < count and tearable[i]:
            yield CutPoint(i, torn=True)


def cut_label(cut: CutPoint, steps: list[str]) -> str:
    if cut.step >= len(steps):
        return "power cycle once quiet"
    where = "inside" if cut.torn else "before"
    return f"{where} step {cut.step} ({steps[cut.step]})"


# ----------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class Window:
    """A power-loss window of Pantavisor's own order (docs/orderings.md names W1-W4)."""

    name: str
    title: str
    c_function: str
    marker: str  # the text of the violation that only this window produces


WINDOWS = (
    Window("W1", "torn in-place env write", "uboot.c: uboot_set_env_key", "torn write"),
    Window("W2", "DONE before pv_rev", "update.c: pv_update_set_final", "DONE-before-pv_rev"),
    Window("W3", "GC of the pv_try revision", "storage.c: pv_storage_gc_run", "its trail is missing"),
    Window("W4", "DONE-resume", "update.c: pv_update_resume", "progress DONE but pv_rev is"),
)
UNNAMED = "unnamed"  # a violation no known window explains: a new bug, not a known window


def window_of(violation: str) -> str:
    """The name of the window a violation falls in (W1-W4), or UNNAMED."""
    for window in WINDOWS:
        if window.marker in violation:
            return window.name
    return UNNAMED


# ----------------------------------------------------------------------------- reports


@dataclass
class KindReport:
    kind: str
    description: str
    steps: list[str]
    crash_points: int = 0
    outcomes: Counter = field(default_factory=Counter)
    finals: Counter = field(default_factory=Counter)  # "new DONE", "old ERROR 'reason'", ...
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0
    reference: str = ""

    @property
    def windows(self) -> Counter:
        return Counter(map(window_of, self.violations))

    def note(self, outcome: str, record: Progress | None, violations: list[str], label: str) -> None:
        """Count one crash point's run."""
        self.crash_points += 1
        self.outcomes[outcome] += 1
        self.finals[f"{outcome} {fmt_record(record)}"] += 1
        self.violations.extend(f"{label}: {v}" for v in violations)

    def check_reference(
        self, outcome: str, record: Progress | None, violations: list[str],
        expected: str, expected_status: Status,
    ) -> None:
        """The run without a cut must end as the kind says."""
        self.reference = f"{outcome} {record.status.value if record else 'missing'}"
        if violations or outcome != expected or record is None or record.status is not expected_status:
            self.violations.append(
                f"reference run (no power cut): expected {expected} "
                f"{expected_status.value}, got {outcome} {fmt_record(record)}; "
                + "; ".join(violations)
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "durable_steps": len(self.steps),
            "crash_points": self.crash_points,
            "outcomes": dict(sorted(self.outcomes.items())),
            "final_progress": dict(sorted(self.finals.items())),
            "violations": self.violations,
            "windows": dict(sorted(self.windows.items())),
            "seconds": round(self.seconds, 3),
            "reference": self.reference,
        }


@dataclass
class CrashReport:
    ordering: str
    kinds: dict[str, KindReport]
    seconds: float
    latch: str = "single-shot"

    @property
    def total_crash_points(self) -> int:
        return sum(k.crash_points for k in self.kinds.values())

    @property
    def violation_count(self) -> int:
        return sum(len(k.violations) for k in self.kinds.values())

    @property
    def windows(self) -> Counter:
        """Violations per window name (W1-W4, or UNNAMED)."""
        total: Counter = Counter()
        for k in self.kinds.values():
            total.update(k.windows)
        return total

    def to_json(self) -> dict[str, Any]:
        return {
            "ordering": self.ordering,
            "latch": self.latch,
            "total_crash_points": self.total_crash_points,
            "violations": self.violation_count,
            "windows": dict(sorted(self.windows.items())),
            "seconds": round(self.seconds, 3),
            "kinds": {name: k.to_json() for name, k in self.kinds.items()},
        }


def as_expected(report: CrashReport) -> bool:
    """What each ordering must show: hardened no violation at all; faithful only violations of
    the named windows W1-W4 (Pantavisor's own; an unnamed one is a new bug of the model)."""
    if report.ordering == Ordering.HARDENED.value:
        return report.violation_count == 0
    return UNNAMED not in report.windows


def both_to_json(reports: list[CrashReport]) -> dict[str, Any]:
    """The JSON of a run of both orderings: one report per ordering and a summary."""
    return {
        "orderings": {r.ordering: r.to_json() for r in reports},
        "summary": {
            r.ordering: {
                "crash_points": r.total_crash_points,
                "violations": r.violation_count,
                "windows": dict(sorted(r.windows.items())),
                "as_expected": as_expected(r),
            }
            for r in reports
        },
    }


def by_window(report: CrashReport) -> str:
    """' (W1 3, W2 1)', or '' without a violation."""
    counts = report.windows
    if not counts:
        return ""
    return " (" + ", ".join(f"{name} {n}" for name, n in sorted(counts.items())) + ")"


def summary_line(report: CrashReport) -> str:
    """The last line of a crash check's output."""
    return (
        f"{report.ordering}: {report.total_crash_points} crash points, "
        f"{report.violation_count} violations{by_window(report)}, {report.seconds:.1f} s"
    )


# ----------------------------------------------------------------------------- printed tables

KIND_COLUMNS = ("kind", "durable steps", "crash points", "old", "new", "violations", "without a cut", "s")


def kind_rows(report: CrashReport) -> list[tuple[str, ...]]:
    """One row per kind, in KIND_COLUMNS' order (the violations as a count)."""
    return [
        (
            k.kind,
            str(len(k.steps)),
            str(k.crash_points),
            str(k.outcomes.get("old", 0)),
            str(k.outcomes.get("new", 0)),
            str(len(k.violations)),
            k.reference,
            f"{k.seconds:.2f}",
        )
        for k in report.kinds.values()
    ]


def shown_violations(report: CrashReport, *, every: bool) -> list[tuple[str, str, str]]:
    """(window, kind, violation): every violation, or (`every` False) one per window."""
    shown: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for k in report.kinds.values():
        for violation in k.violations:
            window = window_of(violation)
            if every or window not in seen:
                seen.add(window)
                shown.append((window, k.kind, violation))
    return shown


def window_rows(reports: list[CrashReport]) -> list[tuple[str, ...]]:
    """Both orderings side by side: violations per window, then the crash points."""
    rows = [
        (f"{w.name} {w.title}", w.c_function, *(str(r.windows.get(w.name, 0)) for r in reports))
        for w in WINDOWS
    ]
    rows.append(("unnamed", "", *(str(r.windows.get(UNNAMED, 0)) for r in reports)))
    rows.append(("crash points", "", *(str(r.total_crash_points) for r in reports)))
    return rows


def verdict_line(report: CrashReport, as_expected_text: str, not_expected_text: str) -> str:
    verdict = as_expected_text if as_expected(report) else not_expected_text
    return (
        f"{report.ordering}: {report.total_crash_points} crash points, {report.violation_count} "
        f"violations{by_window(report)} — {verdict}"
    )
