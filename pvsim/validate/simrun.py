"""The scenario in pvsim, as the real fleet ran it: the same N, the schedule multiplied by the
time scale, the engine configured as the real devices were, each release moving the bytes the
real one moved, the calibrated device figures, and the scheduled power cuts on the same slots.

pvsim has no per-device fault schedule in its scenarios (its cuts are a Poisson rate), so this
module runs pvsim's own World and Pantavisor model with two small subclasses: `ValidationWorld`
hands each admitted device a `ScheduledRun` (its `run_class`) whose next power cut is the schedule's, and
`RecordingModel` notes every progress record the Hub heard. Neither changes what a device or
the Hub decides: that stays in shared/ (the engine and the rollout controller)."""

from __future__ import annotations

import gc
from collections.abc import Generator
from typing import Any

from pvsim.device import INF, DeviceRun
from pvsim.pantavisor import PantavisorModel
from pvsim.scenario import Scenario, with_overrides
from pvsim.validate import timeline
from pvsim.world import OK, SILENT, World


class ScheduledRun(DeviceRun):
    """A device-update whose power cuts come from the validation schedule, not from a rate."""

    __slots__ = ("cuts",)

    def __init__(self, world: ValidationWorld, device: int, rollout: Any) -> None:
        super().__init__(world, device, rollout)
        self.cuts = [c for c in world.cuts_for(device) if c[0] >= self.env.now]
        self.cut_at = self.cuts[0][0] if self.cuts else INF

    def power_restored(self) -> Generator[Any, Any, None]:
        self.world.count("power_cuts")
        _, off = self.cuts.pop(0)
        self.cut_at = INF
        yield self.env.timeout(off)
        self.cuts = [c for c in self.cuts if c[0] >= self.env._now]
        self.cut_at = self.cuts[0][0] if self.cuts else INF


class RecordingModel(PantavisorModel):
    """pvsim's Pantavisor model, noting each progress record that reached the Hub."""

    def _report(self, run: Any, brain: Any, command: Any, queue: Any) -> None:
        super()._report(run, brain, command, queue)
        if brain.hub_progress.get(command.rev) is command.record:
            record = command.record
            self.world.heard.setdefault((run.device, command.rev), []).append(
                [round(run.env._now, 3), record.status.value, record.status_msg])


class ValidationWorld(World):
    run_class = ScheduledRun
    def __init__(self, scenario: Scenario, cuts: list[tuple[int, float, float]]) -> None:
        self.heard: dict[tuple[int, str], list[list[Any]]] = {}
        self.ended: dict[tuple[int, str], tuple[bool, float]] = {}  # (device, release) -> (ok, t)
        self.schedule = cuts  # (slot of the first release, at, off)
        super().__init__(scenario, RecordingModel)

    def draw_power_cut(self, now: float) -> float:
        return INF  # only scheduled cuts (ScheduledRun)

    def cuts_for(self, device: int) -> list[tuple[float, float]]:
        if not self.rollouts:
            return []
        order = self.rollouts[0].order
        return sorted((at, off) for slot, at, off in self.schedule if slot < len(order) and int(order[slot]) == device)

    def _finish(self, device: int, rollout: Any, run: Any, outcome: str, report: bool | None) -> None:
        counted = report is not SILENT and (not rollout.silent.enabled or device in rollout.silent.waiting)
        if counted:
            self.ended[device, rollout.name] = (report is OK, self.env._now)
        super()._finish(device, rollout, run, outcome, report)


def sim_scenario(scn: Scenario, devices: int, changed_mb: list[float], device_figures: dict[str, Any]) -> Scenario:
    """The scenario as pvsim must run it to match the real fleet (module docstring)."""
    scale = scn.validation.time_scale
    engine = dict(scn.update_model.engine)
    engine.setdefault("PH_UPDATER_INTERVAL", scn.fleet.poll_interval_s)
    overrides: dict[str, Any] = {
        "fleet.devices": devices, "run.until_s": scn.run.until_s * scale,
        "update_model.hardened": True,  # the fleet's devices are installed hardened
        "update_model.engine": engine, "faults.power_outage_s": 1.0,
        "faults.hub_outages": [{"at_s": o.at_s * scale, "duration_s": o.duration_s * scale}
                               for o in scn.faults.hub_outages],
        "validation.power_cuts": [],
    }  # fmt: skip
    for k, release in enumerate(scn.release):
        overrides[f"release[{k}].at_s"] = release.at_s * scale
        if k < len(changed_mb) and changed_mb[k] > 0:
            overrides[f"release[{k}].size_mb"] = changed_mb[k]
    for key, value in device_figures.items():
        overrides[f"device.{key}"] = value
    return with_overrides(scn, **overrides)


def run_sim(scn: Scenario, devices: int, changed_mb: list[float], device_figures: dict[str, Any]) -> dict[str, Any]:
    scale = scn.validation.time_scale
    sim = sim_scenario(scn, devices, changed_mb, device_figures)
    cuts = [(c.slot, c.at_s * scale, c.off_s * scale) for c in scn.validation.power_cuts]
    gc_was = gc.isenabled()
    gc.disable()
    try:
        world = ValidationWorld(sim, cuts)
        world.run()
    finally:
        if gc_was:
            gc.enable()
    doc = timeline.empty("sim", scn.name, devices, scale)
    for rollout, release in zip(world.rollouts, scn.release, strict=False):
        tally = rollout.tally
        doc["releases"].append({
            "name": rollout.name, "at_s": release.at_s, "changed_mb": changed_mb[rollout.index] if rollout.index < len(changed_mb) else None,
            "state": rollout.state, "admitted": tally.admitted, "succeeded": tally.succeeded,
            "failed": tally.failed, "timed_out": len(rollout.timed_out),
        })  # fmt: skip
        rev = str(rollout.revision)
        timed_out = set(rollout.timed_out)
        for position in range(rollout.cursor):
            device = int(rollout.order[position])
            reports = [[round(t / scale, 3), s, m] for t, s, m in world.heard.get((device, rev), [])]
            outcome, outcome_t = None, None
            if device in timed_out:
                outcome = "failed"
            elif (device, rollout.name) in world.ended:
                ok, at = world.ended[device, rollout.name]
                outcome, outcome_t = ("succeeded" if ok else "failed"), round(at / scale, 3)
            doc["slots"].append({"release": rollout.name, "position": position, "device": f"sim{device:03d}",
                                 "reports": reports, "outcome": outcome, "outcome_t": outcome_t})  # fmt: skip
    return doc
