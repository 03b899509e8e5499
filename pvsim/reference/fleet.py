"""The reference model's fleet and Hub: per-device figures, releases, rollouts and the counts.

Plain on purpose: per-device figures are lists drawn once with numpy, the Hub asks the shared
rollout controller (`shared.rollout`) at the start of a release, after every report and when the
controller asked to be woken, and admits devices in a seeded order, as the twin's Hub does.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from pvsim.dists import SimRandom
from pvsim.reference.update import COMMITTED, ROLLED_BACK, VARIANTS, WONTGO, DeviceUpdate
from pvsim.revisions import RevisionSet
from pvsim.scenario import Scenario, ScenarioError
from shared.engine.config import Config
from shared.rollout import (
    REGISTRY,
    RUNNING,
    Controller,
    RolloutConfig,
    Tally,
    make_controller,
    rollout_state,
)

# The factory containers' group goal timeout and stability window (pvsim.revisions' run.json
# files get the engine's defaults: 30 s each), and the grace a stopped container gets in pvsim.
GOAL_TIMEOUT_S = 30.0
STABLE_S = 30.0
STOP_S = 1.0

# what the reference leaves out; a scenario that uses it is refused (key, value it must have)
UNSUPPORTED: tuple[tuple[str, Any], ...] = (
    ("update_model.kind", "pantavisor"),
    ("faults.first_boot_power_cut_probability", 0.0),
    ("faults.storage_write_error_probability", 0.0),
    ("faults.disk_full_fraction", 0.0),
    ("faults.network_outages_per_device_day", 0.0),
    ("faults.hub_outages", ()),
    ("faults.hub_outages_per_day", 0.0),
    ("update_model.engine", {}),
)


def check_supported(scenario: Scenario) -> None:
    """Raise ScenarioError naming the first key whose value the reference does not model."""
    for dotted, plain in UNSUPPORTED:
        table, key = dotted.split(".")
        if getattr(getattr(scenario, table), key) != plain:
            raise ScenarioError(f"the reference model needs {plain!r} here (pvsim/reference)", source=scenario.name, key=dotted)
    for index, release in enumerate(scenario.release):
        if release.defect == "corrupt_object":
            raise ScenarioError("the reference model does not model corrupt objects", source=scenario.name, key=f"release[{index}].defect")
    timeout = scenario.rollout.device_timeout_s
    if 0 < timeout < scenario.run.until_s:
        raise ScenarioError("the reference model has no silent-device rule", source=scenario.name, key="rollout.device_timeout_s")


@dataclass(slots=True)
class ReferenceRollout:
    index: int
    revision: int
    name: str
    at_s: float
    strategy: Controller
    order: list[int]
    tally: Tally
    cursor: int = 0
    next_wake: float | None = None
    superseded: bool = False
    committed: int = 0
    rolled_back: int = 0
    wontgo: int = 0
    exposed: int = 0
    device_updates: int = 0
    mb_downloaded: float = 0.0
    commit_times: list[float] = field(default_factory=list)


class ReferenceFleet:
    """The world of one reference run: `run()` simulates to `run.until_s`, `results()` counts."""

    def __init__(self, scenario: Scenario, variant: str = "interrupt") -> None:
        check_supported(scenario)
        if variant not in VARIANTS:
            raise ValueError(f"unknown reference variant {variant!r}; expected one of {', '.join(VARIANTS)}")
        self.scenario = scenario
        self.variant = variant
        self.update_class: type[DeviceUpdate] = VARIANTS[variant]
        self.env = simpy.Environment()
        self.rng = SimRandom(scenario.fleet.seed)
        self.figures = scenario.device
        self.faults = scenario.faults
        n = scenario.fleet.devices
        self.n = n
        self.poll_s = scenario.fleet.poll_interval_s
        egress = scenario.fleet.hub_egress_mbit_s / 8.0
        self.egress_mb_s = egress if egress > 0 else math.inf
        self.cut_rate = scenario.faults.power_cuts_per_device_day / 86400.0
        self.goal_timeout_s, self.stop_s = GOAL_TIMEOUT_S, STOP_S
        self.commit_s = max(Config().commit_delay, STABLE_S)
        self.network_timeout_s = Config().network_timeout
        table = np.random.default_rng([scenario.fleet.seed, 0x5EED, 0x4EF])
        link = scenario.device.link_mbit_s.sample_array(table, n) / 8.0
        link[table.random(n) < scenario.faults.slow_link_fraction] /= scenario.faults.slow_link_factor
        self.link_mb_s: list[float] = np.maximum(link, 1e-4).tolist()
        self.write_mb_s: list[float] = np.maximum(scenario.device.storage_write_mb_s.sample_array(table, n), 1e-3).tolist()
        self.phase: list[float] = table.uniform(0.0, self.poll_s, n).tolist()
        self.defect_u: list[float] = table.random(n).tolist()
        self.rev = [0] * n  # the revision each device runs
        self.rollback_rev = [0] * n  # the last revision a reboot update committed
        self.busy: dict[int, ReferenceRollout | None] = {}  # device -> the release queued behind its update
        self.revisions = RevisionSet(scenario)
        self._plans: dict[tuple[int, int], tuple[list[float], bool]] = {}
        self.rollouts: list[ReferenceRollout] = []
        self.downloading = 0  # objects being fetched fleet-wide (the egress's equal share)
        self.power_cuts = 0
        self.network_losses = 0
        for index, release in enumerate(scenario.release):
            self.env.process(self._release(index, release.at_s))

    # -- a device's figures ------------------------------------------------------------------------
    def poll_wait(self, device: int, rollout: ReferenceRollout) -> float:
        now = self.env.now
        t0 = now + rollout.strategy.start_delay(device, now)
        phase = self.phase[device]
        return phase + math.ceil((t0 - phase) / self.poll_s) * self.poll_s - now

    def plan(self, old: int, new: int) -> tuple[list[float], bool]:
        """(sizes in MB of the objects to fetch, whether the new revision needs a reboot)."""
        key = (old, new)
        plan = self._plans.get(key)
        if plan is None:
            have = self.revisions[old].state.object_shas()
            sizes = [mb for sha, mb in sorted(self.revisions[new].sizes.items()) if sha not in have]
            plan = self._plans[key] = (sizes, self.revisions.transfer(old, new)[1])
        return plan

    def defect(self, device: int, rollout: ReferenceRollout) -> str:
        release = self.scenario.release[rollout.index]
        return release.defect if self.defect_u[device] < release.defect_fraction else "none"

    def rate(self, device: int, objects: int) -> float:
        """MB/s of each object: the device's link, its storage, or its equal share of the egress."""
        share = self.egress_mb_s / (self.downloading + objects)
        return min(self.link_mb_s[device], self.write_mb_s[device], share)

    def draw_drops(self, objects: list[float]) -> tuple[list[float], list[float]]:
        """(MB each object moves this round, the objects whose connection dropped and come again)."""
        p = self.faults.network_loss_probability
        if p <= 0:
            return objects, []
        rng = self.rng
        moved, again = [], []
        for mb in objects:
            if rng.random() < p:
                self.network_losses += 1
                moved.append(mb * rng.random())
                again.append(mb)
            else:
                moved.append(mb)
        return moved, again

    # -- the Hub -----------------------------------------------------------------------------------
    def _release(self, index: int, at_s: float) -> Any:
        yield self.env.timeout(at_s)
        for older in self.rollouts:
            older.superseded = True
        release = self.scenario.release[index]
        order = np.random.default_rng([self.scenario.fleet.seed, 0x0DE5, index]).permutation(self.n).tolist()
        cfg = self.scenario.rollout
        strategy = make_controller(RolloutConfig(cfg.strategy, {k: getattr(cfg, k) for k in REGISTRY[cfg.strategy].options}), self.n)
        rollout = ReferenceRollout(index, index + 1, release.name, at_s, strategy, order, Tally(self.n))
        self.rollouts.append(rollout)
        self._pump(rollout)

    def _pump(self, rollout: ReferenceRollout) -> None:
        if rollout.superseded or rollout.strategy.state != RUNNING:
            return
        while True:
            count, wake = rollout.strategy.admit(self.env.now, rollout.tally)
            if rollout.strategy.state != RUNNING or count <= 0 or self._admit(rollout, count) == 0:
                break
        if rollout.strategy.state == RUNNING and wake is not None and wake != rollout.next_wake:
            rollout.next_wake = wake
            self.env.process(self._wake(rollout, wake))

    def _wake(self, rollout: ReferenceRollout, at: float) -> Any:
        yield self.env.timeout(max(0.0, at - self.env.now))
        if rollout.next_wake == at:
            rollout.next_wake = None
            self._pump(rollout)

    def _admit(self, rollout: ReferenceRollout, count: int) -> int:
        """Hand the release to the next `count` devices; returns how many already ran it."""
        start, stop = rollout.cursor, min(rollout.cursor + count, self.n)
        rollout.cursor = stop
        rollout.tally.admitted += stop - start
        already = 0
        for device in rollout.order[start:stop]:
            if device in self.busy:
                self.busy[device] = rollout  # after the update it is busy with
            elif self.rev[device] == rollout.revision:
                rollout.tally.succeeded += 1
                already += 1
            else:
                self._start(device, rollout)
        return already

    def _start(self, device: int, rollout: ReferenceRollout) -> None:
        self.busy[device] = None
        self.env.process(self.update_class(self, device, rollout).run())

    # -- a device-update's bookkeeping -------------------------------------------------------------
    def begin(self, device: int, rollout: ReferenceRollout) -> None:
        rollout.device_updates += 1

    def finish(self, device: int, rollout: ReferenceRollout, outcome: str, reboot: bool = False) -> None:
        if outcome == COMMITTED:
            rollout.committed += 1
            rollout.commit_times.append(self.env.now)
            self.rev[device] = rollout.revision
            if reboot:
                self.rollback_rev[device] = rollout.revision  # DONE: a rollback point
            rollout.tally.succeeded += 1
        else:
            if outcome == ROLLED_BACK:
                rollout.rolled_back += 1
                self.rev[device] = self.rollback_rev[device]
            elif outcome == WONTGO:
                rollout.wontgo += 1
            rollout.tally.failed += 1
        self._pump(rollout)
        queued = self.busy.pop(device)
        if queued is not None:
            if self.rev[device] == queued.revision:
                queued.tally.succeeded += 1
                self._pump(queued)
            else:
                self._start(device, queued)

    # -- running and counting ----------------------------------------------------------------------
    def run(self) -> None:
        self.env.run(until=self.scenario.run.until_s)

    def results(self) -> dict[str, Any]:
        """Outcome counts under results.json's names (summed over releases, then per release)."""
        releases: list[dict[str, Any]] = []
        for r in self.rollouts:
            done = r.committed + r.rolled_back + r.wontgo
            releases.append(
                {
                    "release": r.name,
                    "state": rollout_state(r.strategy, r.tally),
                    "admitted": r.tally.admitted,
                    "committed": r.committed,
                    "rolled_back": r.rolled_back,
                    "wontgo": r.wontgo,
                    "exposed": r.exposed,
                    "in_progress_at_end": r.device_updates - done,
                    "device_updates": r.device_updates,
                    "mb_downloaded": round(r.mb_downloaded, 3),
                    "time_to_50pct_s": _time_to(r.commit_times, 0.5, self.n, r.at_s),
                    "time_to_95pct_s": _time_to(r.commit_times, 0.95, self.n, r.at_s),
                    "halted_at_s": r.strategy.halted_at,
                }
            )
        summed = ("committed", "rolled_back", "wontgo", "exposed", "in_progress_at_end", "device_updates")
        total = {key: sum(int(rel[key]) for rel in releases) for key in summed}
        last = releases[-1] if releases else {}
        counts = [0] * len(self.revisions)
        for rev in self.rev:
            counts[rev] += 1
        return {
            "scenario": self.scenario.name,
            "variant": self.variant,
            "seed": self.scenario.fleet.seed,
            "devices": self.n,
            **total,
            "final_revision_counts": {self.revisions[i].name: c for i, c in enumerate(counts)},
            "power_cuts": self.power_cuts,
            "network_losses": self.network_losses,
            "rollout_state": last.get("state", RUNNING),
            "time_to_50pct_s": last.get("time_to_50pct_s"),
            "time_to_95pct_s": last.get("time_to_95pct_s"),
            "releases": releases,
        }


def _time_to(commit_times: list[float], fraction: float, fleet: int, start: float) -> float | None:
    needed = math.ceil(fraction * fleet)
    if needed == 0 or len(commit_times) < needed:
        return None
    return round(sorted(commit_times)[needed - 1] - start, 3)


def run_reference(scenario: Scenario, variant: str = "interrupt") -> dict[str, Any]:
    """Simulate `scenario` with the reference model; results() plus `wall_s` and `cpu_s` of the
    whole call (building the fleet included). The cyclic GC is off during the run, as in the
    twin's runner, so neither model pays for full collections over a large fleet."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        fleet = ReferenceFleet(scenario, variant)
        fleet.run()
        results = fleet.results()
    finally:
        if gc_was_enabled:
            gc.enable()
    results["wall_s"] = round(time.perf_counter() - start, 3)
    results["cpu_s"] = round(time.process_time() - cpu_start, 3)
    return results
