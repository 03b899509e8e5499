"""The peers' update models, modelled simply but honestly: `ab-image` and `ab-delta`.

These are not Pantavisor and do not use the engine: they are the Mender/RAUC-style A/B scheme
described in peers-and-rollouts.md §2.1, §2.2 and §2.6, reduced to what changes the numbers.

1. Stream the artifact (full image, or a binary delta against the running slot) into the inactive
   slot. A power cut here leaves the running slot untouched; the device boots it again and starts the
   transfer over (the stream went straight to the slot, so nothing is kept). A delta only exists
   against the previous release; any other starting point falls back to the full image (Mender's
   server does the same).
2. Flip the boot flags (`upgrade_available=1`, `bootcount=0`, next slot). With rollback on, the
   environment is redundant (two copies, as U-Boot's redundant env and Mender require), so a cut
   during the write leaves the old copy; with rollback off it is a single copy and a torn write
   bricks the board.
3. Try-boot the new slot. Every boot that does not reach the commit (kernel panic, a power cut, a
   failed health gate) counts against `bootlimit`; past it the bootloader falls back to the old
   slot (`altbootcmd`). With rollback off there is no counter: the board keeps booting the new slot.
4. Health gate (`health_check`, Mender's ArtifactCommit check): applications start and the server
   must be reachable for `health_window_s`; a container that crashes, never gets ready or an image
   that breaks the network fails it. Then the flags are committed.

Image-based models ship the application and the update agent as one image, so a committed image
whose kernel panics, whose network is broken or whose application never comes up cannot be
recovered remotely: the device is counted bricked (the 2017 LockState case).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator
from typing import Any

from pvsim.device import DeviceRun, PowerCut, StorageWriteError
from pvsim.world import BRICKED_OUT, COMMITTED, FAIL, OK, ROLLED_BACK, SILENT, WONTGO, World

APP_DEFECTS = ("container_crash", "never_ready", "breaks_network")
CHECKSUM_ATTEMPTS = 3  # downloads of a corrupt artifact before the device gives up on it
TORN = "boot env torn by a power cut"


class TornEnv(Exception):
    """A single-copy boot environment torn by a power cut: nothing bootable is selected."""


class BootFailed(Exception):
    pass


class ABModel:
    def __init__(self, world: World) -> None:
        self.world = world
        cfg = world.scenario.update_model
        self.cfg = cfg
        self.delta = cfg.kind == "ab-delta"
        rng = random.Random(world.scenario.fleet.seed + 2)
        # a delta is built once per release by the server, so its size ratio is drawn once
        self.ratios = [1.0] + [
            (cfg.major_delta_ratio if r.major else cfg.delta_ratio).sample(rng) for r in world.scenario.release
        ]

    def transfer_mb(self, old: int, new: int) -> float:
        if self.delta and new == old + 1:
            return self.cfg.image_mb * self.ratios[new]
        return self.cfg.image_mb

    def footprint_mb(self, old: int, new: int) -> float:
        return 2 * self.cfg.image_mb  # two full slots, whatever changed

    # -- one device-update --------------------------------------------------------------------------
    def begin(self, run: DeviceRun, target: int, done: Callable[[tuple[str, bool | None]], None]) -> None:
        """Start one device-update as a SimPy process; `done((outcome, report))` when it is over."""

        def process() -> Generator[Any, Any, None]:
            done((yield from self.update(run, target)))

        self.world.env.process(process())

    def update(self, run: DeviceRun, target: int) -> Generator[Any, Any, tuple[str, bool | None]]:
        world = self.world
        device = run.device
        old = world.table.rev[device]
        defect = world.defective_for(device, target)
        corrupt_seen = 0
        while True:
            kept_from = run.mb_downloaded  # what this try moves is lost if it has to start over
            try:
                yield from run.reach_hub()
                if defect == "bad_signature":
                    world.count("bad_signature")
                    run.reason = "artifact signature invalid"
                    return WONTGO, FAIL
                # the artifact streams into the inactive slot (a delta is patched into a full
                # image on the way), then the slot is synced
                yield from run.download(self.transfer_mb(old, target), written_mb=self.cfg.image_mb)
                yield from run.write(0.0)
                if defect == "corrupt_object":
                    world.count("corrupt_object")
                    run.mb_wasted += run.mb_downloaded - kept_from
                    corrupt_seen += 1
                    world.retries["object"] += 1
                    if corrupt_seen >= CHECKSUM_ATTEMPTS:
                        run.reason = f"artifact checksum mismatch ({CHECKSUM_ATTEMPTS} downloads)"
                        return WONTGO, FAIL
                    continue
                yield from self._env_write(run)
                break
            except (StorageWriteError, TornEnv) as fault:
                run.mb_wasted += run.mb_downloaded - kept_from  # the slot is never booted
                run.reason = "storage write error" if isinstance(fault, StorageWriteError) else TORN
                return (WONTGO, FAIL) if isinstance(fault, StorageWriteError) else (BRICKED_OUT, SILENT)
            except PowerCut:
                run.mb_wasted += run.mb_downloaded - kept_from  # the slot is written again from the start
                yield from self._recover(run)
        return (yield from self._try_boot(run, old, target, defect))

    def _try_boot(self, run: DeviceRun, old: int, target: int, defect: str) -> Generator[Any, Any, tuple[str, bool | None]]:
        world, cfg = self.world, self.cfg
        world.set_running(run.device, target)
        run.first_boot = True
        boots = 0
        cause = ""
        while True:
            boots += 1
            try:
                yield from run.boot()
                run.first_boot = False
                if defect == "kernel_panic":
                    world.count("kernel_panic")
                    run.exposed = True
                    cause = "kernel panic"
                    raise BootFailed
                yield from run.wait(world.device_cfg.container_start_s.sample(world.rng))
                if defect in APP_DEFECTS:
                    world.count(defect)
                    run.exposed = True
                    cause = f"health check failed: {defect.replace('_', ' ')}"
                    if not cfg.health_check:
                        run.reason = f"committed without a health check: {defect.replace('_', ' ')}"
                        yield from self._env_write(run)  # commits blind
                        return BRICKED_OUT, (SILENT if defect == "breaks_network" else OK)
                    yield from run.wait(cfg.health_window_s)
                    if not cfg.rollback:
                        run.reason = f"no rollback: {cause}"
                        return BRICKED_OUT, (SILENT if defect == "breaks_network" else FAIL)
                    raise BootFailed
                if cfg.health_check:
                    yield from run.wait(cfg.health_window_s)
                yield from self._env_write(run)
                return COMMITTED, OK
            except TornEnv:
                run.reason = TORN
                return BRICKED_OUT, SILENT
            except PowerCut:
                cause = "power cut during the try boot"
                yield from run.power_restored()
            except BootFailed:
                if not cfg.rollback:
                    run.reason = f"no rollback: {cause}"
                    return BRICKED_OUT, SILENT
            if cfg.rollback and boots >= cfg.bootlimit:
                # bootcount past bootlimit: altbootcmd boots the old slot
                world.set_running(run.device, old)
                run.first_boot = False
                yield from self._boot_until_up(run)
                run.reason = f"bootlimit {cfg.bootlimit} reached: {cause}"
                return ROLLED_BACK, FAIL

    def _env_write(self, run: DeviceRun) -> Generator[Any, Any, None]:
        world = self.world
        try:
            yield from run.wait(world.device_cfg.env_write_s.sample(world.rng))
        except PowerCut:
            if not self.cfg.rollback:
                world.count("torn_env_writes")
                yield from run.power_restored()
                raise TornEnv from None
            raise

    def _recover(self, run: DeviceRun) -> Generator[Any, Any, None]:
        yield from run.power_restored()
        yield from self._boot_until_up(run)

    def _boot_until_up(self, run: DeviceRun) -> Generator[Any, Any, None]:
        while True:
            try:
                yield from run.boot()
                return
            except PowerCut:
                yield from run.power_restored()
