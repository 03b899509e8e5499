"""The simulated world: fleet table, hub, rollouts, faults, and the bookkeeping results come from.

Per-device facts live in compact arrays (one `array('d')` or `bytearray` per attribute, indexed by
device number) drawn once with numpy from the scenario seed, so device 17 has the same link and the
same poll phase whichever strategy or update model runs (common random numbers make comparisons
sharper). Per-run randomness (boot times, fault draws) comes from one seeded `random.Random`
consumed in event order, which SimPy makes deterministic.
"""

from __future__ import annotations

import math
import random
from array import array
from collections import Counter
from collections.abc import Generator
from typing import Any

import numpy as np

from pvsim.device import INF, DeviceRun
from pvsim.dists import SimRandom
from pvsim.hub import HubOutages, Rollout, make_strategy
from pvsim.kernel import CountingEnvironment
from pvsim.revisions import RevisionSet
from pvsim.scenario import Scenario
from pvsim.transfer import Egress
from shared.rollout import RUNNING, Tally

IDLE, BUSY, BRICKED = 0, 1, 2

# What an update model returns for one device-update: the outcome and what the hub hears.
COMMITTED, ROLLED_BACK, WONTGO, BRICKED_OUT, STUCK = "committed", "rolled_back", "wontgo", "bricked", "stuck"
OK, FAIL, SILENT = True, False, None


class DeviceTable:
    """Per-device state as parallel arrays (8 bytes a float, 4 an int, 1 a flag)."""

    __slots__ = ("n", "rev", "status", "link_mb_s", "write_mb_s", "free_mb", "phase", "defect_u", "slow", "full")

    def __init__(self, scenario: Scenario) -> None:
        n = scenario.fleet.devices
        dev, faults = scenario.device, scenario.faults
        rng = np.random.default_rng([scenario.fleet.seed, 0x5EED])
        self.n = n
        self.rev = array("i", bytes(4 * n))
        self.status = bytearray(n)
        link = dev.link_mbit_s.sample_array(rng, n) / 8.0
        slow = rng.random(n) < faults.slow_link_fraction
        link[slow] /= faults.slow_link_factor
        self.link_mb_s = array("d", np.maximum(link, 1e-4))
        self.write_mb_s = array("d", np.maximum(dev.storage_write_mb_s.sample_array(rng, n), 1e-3))
        full = rng.random(n) < faults.disk_full_fraction
        free = dev.free_storage_mb.sample_array(rng, n)
        free[full] = 0.0
        self.free_mb = array("d", free)
        self.phase = array("d", rng.uniform(0.0, scenario.fleet.poll_interval_s, n))
        self.defect_u = array("d", rng.random(n))
        self.slow = bytearray(slow.astype(np.uint8).tobytes())
        self.full = bytearray(full.astype(np.uint8).tobytes())


class World:
    run_class: type[DeviceRun] = DeviceRun  # what one device-update is (pvsim validate's schedules cuts)

    def __init__(self, scenario: Scenario, model_factory: Any) -> None:
        self.scenario = scenario
        self.env = CountingEnvironment()
        self.rng = SimRandom(scenario.fleet.seed)
        self.faults = scenario.faults
        self.device_cfg = scenario.device
        self.poll_s = scenario.fleet.poll_interval_s
        self.until_s = scenario.run.until_s
        self.revisions = RevisionSet(scenario)
        self.table = DeviceTable(scenario)
        self.hub_outages = HubOutages(scenario.faults, self.until_s, random.Random(scenario.fleet.seed + 1))
        self.egress = Egress(self.env, scenario.fleet.hub_egress_mbit_s / 8.0, scenario.run.timeline_step_s, self.until_s)
        self.fault_counts: Counter[str] = Counter()
        # requests that failed and were asked again: "metadata", "object", "intake" (update taken in again)
        self.retries: Counter[str] = Counter({"metadata": 0, "object": 0, "intake": 0})
        self.rollouts: list[Rollout] = []
        self.pending: dict[int, Rollout] = {}
        self.active_runs: dict[int, DeviceRun] = {}
        # (time, device's old revision, new revision): the timeline is rebuilt from this afterwards
        self.moves_t = array("d")
        self.moves_from = array("i")
        self.moves_to = array("i")
        # when device-updates ended rolled back or bricked: drawn over time in adoption.png
        self.rolled_back_t = array("d")
        self.bricked_t = array("d")
        self.timeout_s = scenario.rollout.device_timeout_s
        self.cut_rate = scenario.faults.power_cuts_per_device_day / 86400.0
        self.net_rate = scenario.faults.network_outages_per_device_day / 86400.0
        self.model = model_factory(self)
        for index, release in enumerate(scenario.release):
            self.env.process(self._release(index, release.at_s))

    # -- fault draws (arithmetic, no events) -------------------------------------------------------
    def count(self, kind: str, n: int = 1) -> None:
        self.fault_counts[kind] += n

    def draw_power_cut(self, now: float) -> float:
        return now + self.rng.expovariate(self.cut_rate) if self.cut_rate > 0 else INF

    def draw_net_outage(self, now: float) -> tuple[float, float]:
        if self.net_rate <= 0:
            return INF, INF
        start = now + self.rng.expovariate(self.net_rate)
        return start, start + self.faults.network_outage_s.sample(self.rng)

    def defective_for(self, device: int, revision: int) -> str:
        """The release defect as it hits this device ('none' outside `defect_fraction`)."""
        release = self.revisions[revision].release
        if release is None or release.defect == "none":
            return "none"
        return release.defect if self.table.defect_u[device] < release.defect_fraction else "none"

    # -- running revision bookkeeping -------------------------------------------------------------
    def set_running(self, device: int, revision: int) -> None:
        old = self.table.rev[device]
        if old != revision:
            self.table.rev[device] = revision
            self.moves_t.append(self.env._now)
            self.moves_from.append(old)
            self.moves_to.append(revision)

    # -- rollouts ---------------------------------------------------------------------------------
    def _release(self, index: int, at_s: float) -> Generator[Any, Any, None]:
        yield self.env.timeout(at_s)
        for older in self.rollouts:
            older.superseded = True
        n = self.table.n
        order = np.random.default_rng([self.scenario.fleet.seed, 0x0DE5, index]).permutation(n)
        strategy = make_strategy(self.scenario.rollout, n)
        rollout = Rollout(index, index + 1, self.scenario.release[index].name, at_s, strategy, order, Tally(n))
        rollout.marks.append((at_s, f"{rollout.name} released"))
        self.rollouts.append(rollout)
        self._pump(rollout)

    def _pump(self, rollout: Rollout) -> None:
        if rollout.superseded or rollout.strategy.state != RUNNING:
            return
        now = self.env._now
        while True:
            admit, wake = rollout.strategy.admit(now, rollout.tally)
            if rollout.strategy.state != RUNNING:
                rollout.marks.append((now, f"{rollout.name} {rollout.strategy.state}"))
                return
            # devices that already run the release report at once; ask the strategy again
            if admit <= 0 or self._admit(rollout, admit) == 0:
                break
        if wake is not None and wake != rollout.next_wake:
            rollout.next_wake = wake
            self.env.process(self._wake(rollout, wake))

    def _wake(self, rollout: Rollout, at: float) -> Generator[Any, Any, None]:
        yield self.env.timeout(max(0.0, at - self.env._now))
        if rollout.next_wake == at:
            rollout.next_wake = None
            self._pump(rollout)

    def _admit(self, rollout: Rollout, count: int) -> int:
        """Hand the release to the next `count` devices; returns how many already ran it."""
        immediate = 0
        start = rollout.cursor
        stop = min(start + count, len(rollout.order))
        rollout.cursor = stop
        rollout.tally.admitted += stop - start
        if start == 0 or (stop - start) * 20 >= len(rollout.order):
            rollout.marks.append((self.env._now, f"{rollout.name}: {stop} admitted"))
        status = self.table.status
        target = rollout.revision
        for device in rollout.order[start:stop].tolist():
            state = status[device]
            if state == BRICKED:
                self._expect_report(rollout, device)  # the hub never hears from it again
                continue
            if state == BUSY:
                self.pending[device] = rollout
                continue
            if self.table.rev[device] == target:
                rollout.tally.succeeded += 1  # already runs it: nothing to do
                immediate += 1
                continue
            self._start(device, rollout)
        return immediate

    def _start(self, device: int, rollout: Rollout) -> None:
        self.table.status[device] = BUSY
        now = self.env._now
        delay = rollout.strategy.start_delay(device, now)
        # next poll at or after now + delay, from the device's fixed phase
        t0 = now + delay
        phase = self.table.phase[device]
        poll = phase + math.ceil((t0 - phase) / self.poll_s) * self.poll_s
        self.env.call_later_with(poll - now, self._polled, device, rollout)

    def _polled(self, call: list) -> None:
        _, device, rollout = call
        self._begin(device, rollout)

    def _begin(self, device: int, rollout: Rollout) -> None:
        self._expect_report(rollout, device)
        run = self.run_class(self, device, rollout)
        self.active_runs[device] = run
        self.model.begin(run, rollout.revision, run.ended)

    def _run_ended(self, run: DeviceRun, outcome: tuple[str, bool | None]) -> None:
        """A device-update is over (the update model calls `run.ended(outcome)`)."""
        del self.active_runs[run.device]
        self._finish(run.device, run.rollout, run, *outcome)

    def _finish(self, device: int, rollout: Rollout, run: DeviceRun, outcome: str, report: bool | None) -> None:
        rollout.mb_downloaded += run.mb_downloaded
        rollout.mb_wasted += run.mb_wasted
        rollout.mb_written += run.mb_written
        if outcome in (ROLLED_BACK, WONTGO, BRICKED_OUT):
            rollout.reasons[outcome, run.reason or "unknown"] += 1
        rollout.reboots += run.reboots
        rollout.exposed += run.exposed
        if outcome == COMMITTED:
            rollout.committed += 1
            rollout.commit_times.append(self.env._now)
        elif outcome == ROLLED_BACK:
            rollout.rolled_back += 1
            self.rolled_back_t.append(self.env._now)
        elif outcome == WONTGO:
            rollout.wontgo += 1
        elif outcome == BRICKED_OUT:
            rollout.bricked += 1
            self.bricked_t.append(self.env._now)
        self.table.status[device] = BRICKED if outcome == BRICKED_OUT else IDLE
        if report is not SILENT and rollout.silent.enabled and not rollout.silent.reported(device):
            report = SILENT  # it timed out: the hub counted it failed already and ignores it now
        if report is OK:
            rollout.tally.succeeded += 1
        elif report is FAIL:
            rollout.tally.failed += 1
        if report is not SILENT:
            self._pump(rollout)
        queued = self.pending.pop(device, None)
        if queued is not None and outcome != BRICKED_OUT:
            if self.table.rev[device] == queued.revision:
                queued.tally.succeeded += 1
                self._pump(queued)
            else:
                self._start(device, queued)

    # -- silent devices -----------------------------------------------------------------------------
    def _expect_report(self, rollout: Rollout, device: int) -> None:
        """The device took the release: it has `rollout.device_timeout_s` to report. One pending
        check per rollout (deadlines come in order), not one event per device."""
        if not rollout.silent.enabled:
            return
        rollout.silent.took(device, self.env._now)
        if not rollout.watching:
            rollout.watching = True
            self.env.call_later(self.timeout_s, lambda _call: self._check_silent(rollout))

    def _check_silent(self, rollout: Rollout) -> None:
        now = self.env._now
        timed_out = rollout.silent.expire(now)
        rollout.tally.failed += len(timed_out)
        deadline = rollout.silent.next_deadline()
        if deadline is not None:
            self.env.call_later(deadline - now, lambda _call: self._check_silent(rollout))
        else:
            rollout.watching = False
        if timed_out:
            rollout.marks.append((now, f"{rollout.name}: {len(rollout.timed_out)} silent past {self.timeout_s:g} s"))
            self._pump(rollout)

    # -- running ------------------------------------------------------------------------------------
    def run(self) -> None:
        self.env.run(until=self.until_s)
