"""One device taking one update: modelled time, and the faults that interrupt it.

`DeviceRun` is what an update model's process uses instead of raw SimPy: `wait(d)`, `write(mb)`,
`download(mb)` (over `pvsim.transfer`, the network every model shares), `boot()`. Faults are computed arithmetically, never as extra events: the device's
next power cut is drawn once (exponential, per device-day rate) and any modelled duration that would
cross it is cut short there, raising `PowerCut` into the model, which then does what its real
counterpart does after power comes back. Network outages of the device's own link and hub outages
are likewise intervals known in advance; a transfer stops at the first one and resumes after it.
"""

from __future__ import annotations

import functools
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from pvsim.fairshare import CAPPED
from pvsim.transfer import attempt, outcome

if TYPE_CHECKING:
    from pvsim.hub import Rollout
    from pvsim.world import World

INF = float("inf")
RETRY_S = 60.0  # how long a device waits before retrying a refused or failed transfer


class PowerCut(Exception):
    """Raised inside a modelled duration when the device's power goes."""


class StorageWriteError(Exception):
    """A write the storage model refused (I/O error)."""


class DeviceRun:
    __slots__ = (
        "world",
        "env",
        "device",
        "rollout",
        "cut_at",
        "net_start",
        "net_end",
        "link_mb_s",
        "write_mb_s",
        "mb_downloaded",
    "mb_wasted",
        "mb_written",
        "reboots",
        "exposed",
        "first_boot",
        "up_until",
        "reason",
    )

    def __init__(self, world: World, device: int, rollout: Rollout) -> None:
        self.world = world
        self.env = world.env
        self.device = device
        self.rollout = rollout
        self.link_mb_s = world.table.link_mb_s[device]
        self.write_mb_s = world.table.write_mb_s[device]
        self.mb_downloaded = 0.0  # every megabyte moved to it (pvsim.transfer counts them)
        self.mb_wasted = 0.0  # of those, what the update model threw away
        self.mb_written = 0.0
        self.reboots = 0
        self.exposed = False
        self.first_boot = False
        self.up_until = 0.0  # the Hub is known reachable before this time (hub_reachable)
        self.reason = ""  # why it failed, in its update client's words (Pantavisor: the final status message)
        self.cut_at = world.draw_power_cut(self.env.now)
        self.net_start, self.net_end = world.draw_net_outage(self.env.now)

    # -- time ------------------------------------------------------------------------------------
    def ended(self, outcome: tuple[str, bool | None]) -> None:
        """The update model's `done`: this device-update is over, with `(outcome, report)`. A
        method rather than a closure per device-update (a function and four cells, ~0.4 KB by their sizes)."""
        self.world._run_ended(self, outcome)

    def wait(self, duration: float) -> Generator[Any, Any, None]:
        """A modelled duration; a power cut inside it raises PowerCut at the cut time."""
        env = self.env
        end = env._now + duration
        if end >= self.cut_at:
            yield env.timeout(self.cut_at - env._now)
            raise PowerCut
        yield env.timeout(duration)

    def power_restored(self) -> Generator[Any, Any, None]:
        """After a cut: the outage, then a fresh next cut. Counted as a fault that fired."""
        world = self.world
        world.count("power_cuts")
        outage = world.faults.power_outage_s.sample(world.rng)
        self.cut_at = INF
        yield self.env.timeout(outage)
        self.cut_at = world.draw_power_cut(self.env._now)

    def boot(self) -> Generator[Any, Any, None]:
        """A boot of the board (bootloader + kernel + init). The first boot of a new revision can
        lose power with the scenario's `first_boot_power_cut_probability` (meta-balena #2301)."""
        world = self.world
        self.reboots += 1
        duration = world.device_cfg.boot_s.sample(world.rng)
        p = world.faults.first_boot_power_cut_probability
        if self.first_boot and p > 0 and world.rng.random() < p:
            world.count("first_boot_power_cuts")
            self.cut_at = min(self.cut_at, self.env._now + duration * world.rng.random())
        yield from self.wait(duration)

    # -- storage ---------------------------------------------------------------------------------
    def write(self, mb: float) -> Generator[Any, Any, None]:
        """Write and sync `mb` megabytes; an I/O error (scenario probability) raises after the
        latency, and a power cut during the write loses it (the caller did not get past it)."""
        world = self.world
        duration = world.device_cfg.storage_latency_s.sample(world.rng) + mb / self.write_mb_s
        p = world.faults.storage_write_error_probability
        if p > 0 and world.rng.random() < p:
            yield from self.wait(duration * world.rng.random())
            world.count("storage_write_errors")
            raise StorageWriteError
        yield from self.wait(duration)
        self.mb_written += mb

    # -- network ---------------------------------------------------------------------------------
    def net_down_until(self, t: float) -> float:
        """End of the device's own link outage covering t (0.0 when the link is up)."""
        while t >= self.net_end:
            self.net_start, self.net_end = self.world.draw_net_outage(self.net_end)
        return self.net_end if t >= self.net_start else 0.0

    def reach_hub(self) -> Generator[Any, Any, None]:
        """Wait until both the device's link and the hub are up (retrying every RETRY_S)."""
        world = self.world
        while True:
            now = self.env._now
            blocked = self.net_down_until(now)
            if blocked:
                world.count("network_outage_hits")
            else:
                blocked = world.hub_outages.down_until(now)
                if blocked:
                    world.count("hub_outage_hits")
            if not blocked:
                return
            yield from self.wait(RETRY_S)

    def hub_reachable(self) -> bool:
        """One Hub request now; a refusal is counted against the fault that caused it."""
        now = self.env._now
        if now < self.up_until:
            return True  # before the next outage of the link or the Hub found last time
        if self.net_down_until(now):
            self.world.count("network_outage_hits")
            return False
        outages = self.world.hub_outages
        if outages.down_until(now):
            self.world.count("hub_outage_hits")
            return False
        # both are up now, so net_start is the link's next outage; the Hub's is next_start
        self.up_until = min(self.net_start, outages.next_start(now))
        return True

    def download(self, mb: float, written_mb: float | None = None) -> Generator[Any, Any, None]:
        """Stream `mb` megabytes from the Hub, writing `written_mb` (default `mb`) to storage as
        they arrive, in `pvsim.transfer` attempts (the network Pantavisor's model uses too): after
        an attempt fails, the client waits RETRY_S and resumes where it was. A power cut stops the
        attempt where it is (its bytes were moved, and count) and raises PowerCut."""
        env = self.env
        remaining = mb
        written = mb if written_mb is None else written_mb
        while remaining > 1e-9:
            yield from self.reach_hub()
            done = env.event()
            flow = attempt(self, remaining, done, _ended, self._at_fixed_end, written * remaining / mb)
            if flow.state == CAPPED:
                self._at_fixed_end(flow, flow.end, flow.fixed)
            if self.cut_at < self.world.until_s:
                cut = functools.partial(self._cut_download, done, flow, written / mb)
                env.call_later(self.cut_at - env._now, cut)
            at, ok, moved = yield done
            remaining -= min(remaining, moved)
            self.mb_written += written * moved / mb
            if at > env._now:
                yield from self.wait(at - env._now)  # the stall before a dead request times out
            if not ok:
                self.world.retries["object"] += 1
                yield from self.wait(RETRY_S)

    def _at_fixed_end(self, flow: Any, end: float, token: int) -> None:
        egress = self.world.egress

        def due(_call: Any) -> None:
            if egress.complete(flow, token):
                done, ok = outcome(flow)
                _succeed(done, self.env._now, ok, flow.size)

        self.env.call_later(end - self.env._now, due)

    def _cut_download(self, done: Any, flow: Any, written_per_mb: float, _call: Any) -> None:
        if done.triggered:
            return
        self.mb_written += written_per_mb * self.world.egress.stop(flow)  # reached storage before the cut
        done.fail(PowerCut())


def _ended(flow: Any, done: Any, at: float, ok: bool, moved: float) -> None:
    """The egress ended the attempt while it shared it, or an outage stopped it."""
    _succeed(done, at, ok, moved)


def _succeed(done: Any, at: float, ok: bool, moved: float) -> None:
    if not done.triggered:  # a power cut may have failed it in the same instant
        done.succeed((at, ok, moved))
