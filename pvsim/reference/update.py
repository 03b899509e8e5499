"""One device-update of the reference model: a generator process, one timeout per step.

`DeviceUpdate.run` is the sequence of steps (the same in both variants); the variants differ only
in how a power cut reaches a step (`step`): `InterruptUpdate` is interrupted by a power process,
`PredrawnUpdate` compares each step's end with the next cut time it drew.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import simpy

if TYPE_CHECKING:
    from pvsim.reference.fleet import ReferenceFleet, ReferenceRollout

INF = float("inf")
COMMITTED, ROLLED_BACK, WONTGO = "committed", "rolled_back", "wontgo"
APP_FAILS = ("never_ready", "container_crash", "breaks_network")
Steps = Generator[Any, Any, None]


class DeviceUpdate:
    """One device taking one release, from its next poll to the report the Hub counts."""

    __slots__ = ("fleet", "device", "rollout")

    def __init__(self, fleet: ReferenceFleet, device: int, rollout: ReferenceRollout) -> None:
        self.fleet = fleet
        self.device = device
        self.rollout = rollout

    def run(self) -> Steps:
        fleet, device, rollout = self.fleet, self.device, self.rollout
        env, rng, figures = fleet.env, fleet.rng, fleet.figures
        yield env.timeout(fleet.poll_wait(device, rollout))  # poll (an idle device: no cuts yet)
        fleet.begin(device, rollout)
        self.powered()
        old = fleet.rev[device]
        objects, reboot = fleet.plan(old, rollout.revision)
        defect = fleet.defect(device, rollout)
        if defect == "bad_signature":
            return fleet.finish(device, rollout, WONTGO)  # refused after the metadata
        while objects:  # download: the objects in parallel; a dropped one comes again next round
            rate = fleet.rate(device, len(objects))
            moved, again = fleet.draw_drops(objects)
            fleet.downloading += len(objects)
            yield from self.step(max(moved) / rate)
            fleet.downloading -= len(objects)
            rollout.mb_downloaded += sum(moved)
            objects = again
        yield from self.step(3.0 * figures.storage_latency_s.sample(rng) + figures.env_write_s.sample(rng))  # write
        if reboot:
            yield from self.step(figures.boot_s.sample(rng))  # reboot into the new revision
            if defect == "kernel_panic":
                rollout.exposed += 1
                yield from self.step(figures.boot_s.sample(rng))  # the panic, then the fallback boot
                return fleet.finish(device, rollout, ROLLED_BACK)
            yield from self.step(figures.container_start_s.sample(rng))  # start: the root container
        else:
            yield from self.step(fleet.stop_s)  # container restart: the changed apps stop
        if defect in APP_FAILS:
            rollout.exposed += 1
            if defect == "never_ready":
                fail_after = fleet.goal_timeout_s
            elif defect == "container_crash":
                fail_after = figures.container_start_s.sample(rng) + figures.ready_s.sample(rng)
            else:
                fail_after = fleet.network_timeout_s
            yield from self.step(fail_after)  # goal timeout (or crash, or network timeout)
            yield from self.step(figures.boot_s.sample(rng))  # the rollback reboot
            return fleet.finish(device, rollout, ROLLED_BACK)
        yield from self.step(figures.container_start_s.sample(rng) + figures.ready_s.sample(rng))  # ready
        yield from self.step(fleet.commit_s)  # commit delay
        fleet.finish(device, rollout, COMMITTED, reboot)

    def powered(self) -> None:
        """The device is busy from its first poll on: power cuts can hit it from now."""

    def step(self, duration: float) -> Steps:
        raise NotImplementedError


class InterruptUpdate(DeviceUpdate):
    """SimPy's interrupt idiom: a power process interrupts this one; the step starts over after
    the outage and a boot (the interrupt's cause is the outage)."""

    __slots__ = ()

    def powered(self) -> None:
        fleet = self.fleet
        if fleet.cut_rate > 0:
            fleet.env.process(self.power(fleet.env.active_process))  # type: ignore[arg-type]  # run() is active

    def power(self, update: simpy.Process) -> Steps:
        fleet = self.fleet
        env, rng = fleet.env, fleet.rng
        while True:
            yield env.timeout(rng.expovariate(fleet.cut_rate))
            if not update.is_alive:
                return
            outage = fleet.faults.power_outage_s.sample(rng)
            fleet.power_cuts += 1
            update.interrupt(outage)
            yield env.timeout(outage)  # no cut while the power is out

    def step(self, duration: float) -> Steps:
        env = self.fleet.env
        while True:
            try:
                yield env.timeout(duration)
                return
            except simpy.Interrupt as cut:
                outage = cut.cause  # how long the power is out (InterruptUpdate.power)
                assert outage is not None
                duration = outage + self.fleet.figures.boot_s.sample(self.fleet.rng) + duration


class PredrawnUpdate(DeviceUpdate):
    """Pre-drawn cuts: the next cut time is drawn ahead; a step that would end after it stops
    there, and starts over after the outage and a boot."""

    __slots__ = ("cut_at",)

    def powered(self) -> None:
        fleet = self.fleet
        self.cut_at = fleet.env.now + fleet.rng.expovariate(fleet.cut_rate) if fleet.cut_rate > 0 else INF

    def step(self, duration: float) -> Steps:
        fleet = self.fleet
        env = fleet.env
        while env.now + duration >= self.cut_at:
            yield env.timeout(self.cut_at - env.now)
            outage = fleet.faults.power_outage_s.sample(fleet.rng)
            fleet.power_cuts += 1
            self.cut_at = env.now + outage + fleet.rng.expovariate(fleet.cut_rate)  # no cut while out
            duration = outage + fleet.figures.boot_s.sample(fleet.rng) + duration
        yield env.timeout(duration)


VARIANTS: dict[str, type[DeviceUpdate]] = {"interrupt": InterruptUpdate, "predrawn": PredrawnUpdate}
