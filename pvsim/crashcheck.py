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
from collections.abc import Iterable
from dataclasses import dataclass, replace

from pvsim.crashcheck_kinds import Kind, base_storage, build_state, kinds, operator
from pvsim.memdevice import BootFailure, CutPoint, HubStep, MemDevice, MemDisk, PowerCut
from shared.engine.config import Config, Ordering
from shared.engine.invariants import (  # the invariants and the reports are pvreal's too
    MAX_BOOTS,
    UNNAMED,
    WINDOWS,
    CrashReport,
    KindReport,
    Window,
    as_expected,
    both_to_json,
    check_outcome,
    cut_label,
    cut_points,
    window_of,
)
from shared.engine.progress import Progress

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
    env = device.storage.env() or {}
    outcome, found = check_outcome(
        old=old,
        new=kind.new_rev,
        running=device.running,
        pv_rev=env.get("pv_rev", ""),
        pv_try=env.get("pv_try", ""),
        unbootable=device.unbootable,
        record=record,
        written_failure=written_failure,
        hub_records=[step.progress for step in hub if step.rev == kind.new_rev],
    )
    violations.extend(found)
    return outcome


# ----------------------------------------------------------------------------- enumeration


def check_kind(kind: Kind, config: Config, *, second_sweep: bool = True) -> KindReport:
    started = time.perf_counter()
    base, old = base_storage(kind, config)
    ref = run_once(kind, config, base, old)
    report = KindReport(kind.name, kind.description, ref.steps)
    report.check_reference(ref.outcome, ref.record, ref.violations, kind.expected, kind.expected_status)

    def note(result: RunResult, label: str) -> None:
        report.note(result.outcome, result.record, result.violations, label)

    for cut in cut_points(len(ref.steps), ref.tearable):
        first = run_once(kind, config, base, old, (cut,))
        label = cut_label(cut, ref.steps)
        note(first, label)
        if not second_sweep or first.steps_at_first_cut is None or cut.step >= len(ref.steps):
            continue
        recovery_steps = first.steps[first.steps_at_first_cut :]
        rec_tear = first.tearable[first.steps_at_first_cut :]
        for cut2 in cut_points(len(recovery_steps), rec_tear):
            if cut2.step >= len(recovery_steps):
                continue  # identical to the first sweep's power cycle once quiet
            second = run_once(kind, config, base, old, (cut, cut2))
            note(second, f"{label}, then {cut_label(cut2, recovery_steps)} of the recovery")
    report.seconds = time.perf_counter() - started
    return report


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
