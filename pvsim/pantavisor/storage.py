"""The pantavisor model's storage: durable writes in simulated time, the disk they land on, GC.

A batch of durable commands is timed back to back (`PantavisorModel._plan`); here it is waited
for, and each write lands on the device's `SimDisk` when it completes. A power cut keeps the
writes completed before it and loses the rest; a non-redundant env write it falls into tears the
env (the device is bricked). A write that fails with an I/O error kills the daemon (`DaemonCrash`).

Disks are shared copy-on-write: every device starts on the factory disk (then the settled factory
disk) and gets its own copy at its first write; object pools are interned frozensets.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterable
from typing import TYPE_CHECKING, Any

from pvsim.device import INF, DeviceRun, PowerCut
from pvsim.pantavisor.agenda import DeviceBrain
from pvsim.simdisk import TRAIL_RECORDS, TRAIL_WRITES, SimDisk
from shared.engine import commands as C
from shared.engine import events as E
from shared.engine.gc import GcPlan

if TYPE_CHECKING:
    from pvsim.world import World

MB = 1_000_000

# (start, end, command) of each durable write of a batch
Write = tuple[float, float, C.Command]


class DaemonCrash(Exception):
    """A durable write failed with an I/O error. The engine has no event for that, so the daemon
    is taken to die on it; Pantavisor's init stub reboots the board 5 s later (§3.9)."""


class Storage:
    """Part of PantavisorModel: the attributes it uses are set by PantavisorModel.__init__."""

    world: World
    size_mb: dict[str, float]
    factory_mb: float
    pools: dict[frozenset[str], frozenset[str]]
    _used_mb: dict[frozenset[str], float]
    factory_disk: SimDisk
    settled_disk: SimDisk | None
    shared_disks: dict[tuple, SimDisk]

    def _storage(self, device: int, disk: SimDisk) -> E.StorageStats:
        """statfs of the device's storage: its free space at the start, less what its pool grew."""
        free_mb = self.world.table.free_mb[device]
        objects = disk.objects
        used = self._used_mb.get(objects)
        if used is None:
            used = self._used_mb[objects] = math.fsum(self.size_mb.get(s, 0.0) for s in objects) - self.factory_mb
        total = int((free_mb + self.factory_mb) * MB)
        return E.StorageStats(total, max(0, int((free_mb - used) * MB)))

    def _finish_batch(
        self, run: DeviceRun, brain: DeviceBrain, writes: list[Write], failed_at: float, rebooting: bool
    ) -> Generator[Any, Any, bool]:
        """The timed part of a batch: wait for the writes (a power cut keeps those completed before
        it), apply them, and die on a failed write. Returns whether a reboot follows."""
        env = run.env
        end = failed_at if failed_at < INF else (writes[-1][1] if writes else env._now)
        if end > env._now:
            try:
                yield from run.wait(end - env._now)
            except PowerCut:
                self._apply_until(run, brain, writes, env._now)
                raise
        self._apply_until(run, brain, writes, INF)
        if failed_at < INF:
            self.world.count("storage_write_errors")
            raise DaemonCrash
        return rebooting

    def _apply_until(self, run: DeviceRun, brain: DeviceBrain, writes: list[Write], cut: float) -> None:
        done = 0
        while done < len(writes) and writes[done][1] <= cut:
            done += 1
        if done:
            self._apply_writes(run, brain, writes[:done])
        if done < len(writes):
            start, _, command = writes[done]
            if type(command) is C.SetBootEnv and start < cut and not command.redundant:
                self.world.count("torn_env_writes")
                self._own_disk(brain).set_env(command, torn=True)

    def _intern(self, objects: frozenset[str]) -> frozenset[str]:
        """Devices with the same object pool share one frozenset (flyweight, ~1 KB a device)."""
        return self.pools.setdefault(objects, objects)

    def _own_disk(self, brain: DeviceBrain) -> SimDisk:
        """Copy-on-write: devices share the factory disk (and then the settled factory disk) until
        they first write, and share again the disk they end a device-update with (`_share_disk`)."""
        if brain.disk.shared:
            brain.disk = brain.disk.copy()
        return brain.disk

    def _share_disk(self, brain: DeviceBrain) -> None:
        """A device-update is over: the device's disk is swapped for an equal one other devices
        hold, if there is one (most devices end an update alike), until it writes again. A disk of
        its own is ~0.27 KB (tracemalloc, the quickstart's peak)."""
        disk = brain.disk
        if disk.shared:
            return
        shared = self.shared_disks.setdefault(disk.sharing_key(), disk)
        shared.shared = True
        brain.disk = shared

    def _apply(self, run: DeviceRun, brain: DeviceBrain, command: C.Command) -> None:
        """One durable write completed."""
        self._apply_writes(run, brain, ((0.0, 0.0, command),))

    def _apply_writes(
        self, run: DeviceRun, brain: DeviceBrain, writes: Iterable[Write], landed: float | None = None
    ) -> None:
        """Durable writes completed, in order (LinkObjects: hard links cost metadata writes only),
        at `landed` (default: now). A batch nothing can interrupt is applied when it is planned,
        and lands at its end (DeviceUpdate.drain)."""
        disk = brain.disk
        if disk.shared:  # _own_disk, inlined: hot
            disk = brain.disk = disk.copy()
        trails = disk.trails
        for _, _, command in writes:
            run.mb_written += 0.004
            if type(command) in TRAIL_WRITES:  # disk.apply(command) on a record already built: shared
                rev = command.rev  # type: ignore[attr-defined]
                known = TRAIL_RECORDS.get((id(trails.get(rev)), id(command)))
                if known is not None:
                    trails[rev] = known[2]
                    continue
            plan = disk.apply(command)
            if plan is not None:
                self._gc_done(run, brain, disk, plan, run.env._now if landed is None else landed)

    def _gc_done(self, run: DeviceRun, brain: DeviceBrain, disk: SimDisk, plan: GcPlan, at: float) -> None:
        disk.objects = self._intern(disk.objects)
        removed = frozenset(plan.objects)
        reclaimed = int(math.fsum(self.size_mb.get(s, 0.0) for s in removed) * MB)
        storage = self._storage(run.device, disk)
        brain.push(at, E.GcDone(reclaimed, storage, removed, frozenset(plan.revisions)))
