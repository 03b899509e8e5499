"""Crash-point enumeration: cut power at every durable step of an update and check the invariants.

For each update kind:
1. a reference run records the durable steps of the whole update (intake to quiescence);
2. for every step k the run is replayed and power is cut before step k (and inside it when the
   storage model can tear it), plus one cut at quiescence (a plain power cycle); the device boots
   again and runs to quiescence;
3. a second sweep does the same and then cuts again at every durable step of the recovery boot(s);
4. after each run the invariants are checked:
   I1 the device boots and runs a revision (never zero bootable revisions);
   I2 it runs the old committed revision or the new one, the new one only if committed (pv_rev)
      or being tried (pv_try);
   I3 every object of pv_rev and pv_try is present and linked into its trail;
   I4 the final progress agrees with the outcome (DONE/UPDATED iff the new revision stayed,
      ERROR/WONTGO iff not; DONE means pv_rev is the new revision), a failure reason once written
      is never replaced, and the Hub ends up with the device's final record (once GC collected
      a failed revision's trail, the Hub's copy is the record);
   I5 a bounded number of boots reaches quiescence (no reboot loop).

Runs are deterministic, so a replay reaches exactly the same cut point.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from pvsim.crashcheck_kinds import NEW, OLD, Kind, base_storage, build_state, kinds, operator
from pvsim.memdevice import BootFailure, CutPoint, HubStep, MemDevice, MemDisk, PowerCut
from shared.engine.config import Config, Ordering
from shared.engine.progress import Progress, Status

# build_state and kinds are the kinds' (pvsim.crashcheck_kinds); importable from here too
__all__ = [
    "UNNAMED",
    "WINDOWS",
    "CrashReport",
    "KindReport",
    "Window",
    "as_expected",
    "both_to_json",
    "build_state",
    "check_kind",
    "crashcheck",
    "kinds",
    "run_once",
    "window_of",
]

MAX_BOOTS = 8  # I5: boots allowed after a cut before the device must be quiet

# ----------------------------------------------------------------------------- one run


@dataclass
class RunResult:
    outcome: str  # OLD / NEW / "none"
    violations: list[str]
    steps: list[str]
    tearable: list[bool]
    steps_at_first_cut: int | None
    record: Progress | None


def run_once(
    kind: Kind,
    config: Config,
    base: MemDisk,
    old: str,
    cuts: tuple[CutPoint, ...] = (),
) -> RunResult:
    storage = base.copy()
    hub = [] if kind.local else [HubStep(kind.new_rev, kind.new_state, None, kind.signature_error)]
    device = MemDevice(storage, config, kind.behaviour, hub, operator(kind))
    pending = list(cuts)
    device.cut = pending.pop(0) if pending else None
    violations: list[str] = []
    first_cut_at: int | None = None
    boots_since_cut = 0
    written_failure: Progress | None = None
    while True:
        try:
            state = device.run_boot()
        except PowerCut:
            state = "cut"
        except BootFailure as exc:
            violations.append(f"I1 no bootable revision: {exc}")
            break
        except RuntimeError as exc:
            violations.append(f"I5 {exc}")
            break
        written_failure = written_failure or _failure_on_disk(storage, kind.new_rev)
        if state == "quiet" and device.cut is not None:
            state = "cut"  # the cut point lies beyond the last step: a power cycle when quiet
        if state == "cut":
            if first_cut_at is None:
                first_cut_at = len(device.steps)
            boots_since_cut = 0
            nxt = pending.pop(0) if pending else None
            device.cut = replace(nxt, step=first_cut_at + nxt.step) if nxt else None
            continue
        if state == "quiet":
            break
        boots_since_cut += 1
        if boots_since_cut > MAX_BOOTS:
            violations.append(f"I5 reboot loop: {boots_since_cut} boots without quiescence")
            break
    record = storage.trails[kind.new_rev].progress if kind.new_rev in storage.trails else None
    if record is None and kind.new_rev not in storage.trails:
        # GC collected the revision (§2.3 removes failed ones too): its outcome lives on in the
        # Hub's copy of the step, which is what I4 then checks.
        record = next((s.progress for s in hub if s.rev == kind.new_rev), None)
    outcome = "none"
    if not violations:
        outcome = _check(device, kind, old, record, written_failure, hub, violations)
    return RunResult(outcome, violations, device.steps, device.tearable, first_cut_at, record)


def _failure_on_disk(storage: MemDisk, rev: str) -> Progress | None:
    trail = storage.trails.get(rev)
    if trail is not None and trail.progress is not None and trail.progress.is_failed:
        return trail.progress
    return None


def _check(
    device: MemDevice,
    kind: Kind,
    old: str,
    record: Progress | None,
    written_failure: Progress | None,
    hub: list[HubStep],
    violations: list[str],
) -> str:
    new = kind.new_rev
    env = device.storage.env() or {}
    pv_rev, pv_try = env.get("pv_rev", ""), env.get("pv_try", "")
    running = device.running
    # I2
    if running not in (old, new):
        violations.append(f"I2 runs revision {running!r}, neither the old {old} nor the new {new}")
    outcome = NEW if running == new else OLD
    if outcome == NEW and new not in (pv_rev, pv_try):
        violations.append(f"I2 runs {new} although it is neither pv_rev nor pv_try")
    # I3
    for name, rev in (("pv_rev", pv_rev), ("pv_try", pv_try)):
        if rev:
            problem = device.unbootable(rev)
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
        violations.append(f"I4 runs {new} but its progress is {_fmt(record)}")
    elif outcome == OLD and status not in (Status.ERROR, Status.WONTGO):
        violations.append(f"I4 fell back to {old} but the progress of {new} is {_fmt(record)}")
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
            f"I4 reason lost: {_fmt(written_failure)} was written, final is {_fmt(record)}"
        )
    for step in hub:
        if step.rev == new and record is not None and record.is_final and step.progress != record:
            violations.append(
                f"I4 the Hub has {_fmt(step.progress)} while the device has {_fmt(record)}"
            )
    return outcome


def _fmt(record: Progress | None) -> str:
    return "missing" if record is None else f"{record.status.value} '{record.status_msg}'"


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


# ----------------------------------------------------------------------------- enumeration


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


def _cuts(count: int, tearable: list[bool]) -> Iterable[CutPoint]:
    """Before every step, inside every tearable step, and once at quiescence (step == count)."""
    for i in range(count + 1):
        yield CutPoint(i)
        if i < count and tearable[i]:
            yield CutPoint(i, torn=True)


def _label(cut: CutPoint, steps: list[str]) -> str:
    if cut.step >= len(steps):
        return "power cycle once quiet"
    where = "inside" if cut.torn else "before"
    return f"{where} step {cut.step} ({steps[cut.step]})"


def check_kind(kind: Kind, config: Config, *, second_sweep: bool = True) -> KindReport:
    started = time.perf_counter()
    base, old = base_storage(kind, config)
    ref = run_once(kind, config, base, old)
    report = KindReport(kind.name, kind.description, ref.steps)
    report.reference = f"{ref.outcome} {ref.record.status.value if ref.record else 'missing'}"

    def note(result: RunResult, label: str) -> None:
        report.crash_points += 1
        report.outcomes[result.outcome] += 1
        report.finals[f"{result.outcome} {_fmt(result.record)}"] += 1
        report.violations.extend(f"{label}: {v}" for v in result.violations)

    if (
        ref.violations
        or ref.outcome != kind.expected
        or (ref.record is None or ref.record.status is not kind.expected_status)
    ):
        report.violations.append(
            f"reference run (no power cut): expected {kind.expected} "
            f"{kind.expected_status.value}, got {ref.outcome} {_fmt(ref.record)}; "
            + "; ".join(ref.violations)
        )
    for cut in _cuts(len(ref.steps), ref.tearable):
        first = run_once(kind, config, base, old, (cut,))
        label = _label(cut, ref.steps)
        note(first, label)
        if not second_sweep or first.steps_at_first_cut is None or cut.step >= len(ref.steps):
            continue
        recovery_steps = first.steps[first.steps_at_first_cut :]
        rec_tear = first.tearable[first.steps_at_first_cut :]
        for cut2 in _cuts(len(recovery_steps), rec_tear):
            if cut2.step >= len(recovery_steps):
                continue  # identical to the first sweep's power cycle once quiet
            second = run_once(kind, config, base, old, (cut, cut2))
            note(second, f"{label}, then {_label(cut2, recovery_steps)} of the recovery")
    report.seconds = time.perf_counter() - started
    return report


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


def crashcheck(
    ordering: Ordering = Ordering.HARDENED,
    names: Iterable[str] | None = None,
    config: Config | None = None,
    *,
    second_sweep: bool = True,
) -> CrashReport:
    started = time.perf_counter()
    config = replace(config or Config(), ordering=ordering)
    table = kinds()
    selected = list(names) if names else list(table)
    reports = {n: check_kind(table[n], config, second_sweep=second_sweep) for n in selected}
    return CrashReport(
        ordering.value, reports, time.perf_counter() - started, config.boot_latch.value
    )


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
