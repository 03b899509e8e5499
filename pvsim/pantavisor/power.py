"""The pantavisor model's power and boots: power cuts, daemon crashes, reboots through the
bootloader latch, and the factory devices woken at their first update.

A reboot loses everything volatile (transfers, timers, containers), lets the bootloader choose
(`shared.engine.bootloader.choose_boot`, its latch saved before booting), boots for the modelled
delay (a kernel panic boots again) and builds a new engine from what survived on the disk.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from pvsim.device import DeviceRun, PowerCut
from pvsim.pantavisor.agenda import DeviceBrain, Queue, TransferDue
from pvsim.pantavisor.containers import goals
from pvsim.pantavisor.storage import DaemonCrash
from shared.engine import commands as C
from shared.engine import events as E
from shared.engine.bootloader import choose_boot
from shared.engine.driver import StartOutcome, container_events

if TYPE_CHECKING:
    from pvsim.engine_memo import EngineMemo, EngineState
    from pvsim.simdisk import SimDisk
    from pvsim.world import World
    from shared.engine.config import Config

CRASH_REBOOT_S = 5.0  # the init stub's delay before it reboots a board whose daemon died
FactoryTemplate = tuple["EngineState", dict, int]


class Power:
    """Part of PantavisorModel: the attributes it uses are set by PantavisorModel.__init__."""

    world: World
    config: Config
    memo: EngineMemo
    factory_disk: SimDisk
    settled_disk: SimDisk | None
    _factory_template: FactoryTemplate | bool | None

    if TYPE_CHECKING:

        def _defect(self, device: int, rev: str) -> str: ...
        def _own_disk(self, brain: DeviceBrain) -> SimDisk: ...
        def _view(self, device: int, disk: SimDisk, booted: str) -> E.DiskView: ...
        def _apply(self, run: DeviceRun, brain: DeviceBrain, command: C.Command) -> None: ...
        def _stop_transfers(self, run: DeviceRun, brain: DeviceBrain) -> None: ...
        def _execute(
            self, run: DeviceRun, brain: DeviceBrain, commands: list[C.Command], queue: Queue
        ) -> Generator[Any, Any, bool]: ...

    def _lose_volatile(self, run: DeviceRun, brain: DeviceBrain) -> None:
        """A power cut: running transfers, timers and containers are gone; so are objects that
        arrived but were not yet renamed into the pool."""
        self._stop_transfers(run, brain)
        for _, _, entry in brain.agenda:
            if type(entry) is TransferDue:
                run.mb_wasted += entry.mb
        brain.agenda.clear()
        brain.timers.clear()

    def _recover(self, run: DeviceRun, brain: DeviceBrain, fault: Exception) -> Generator[Any, Any, None]:
        """After a power cut (wait for power) or a daemon crash (the init stub's reboot delay)."""
        self._lose_volatile(run, brain)
        if isinstance(fault, PowerCut):
            yield from run.power_restored()
        else:
            yield from self._crash_pause(run)

    def _crash_pause(self, run: DeviceRun) -> Generator[Any, Any, None]:
        try:
            yield from run.wait(CRASH_REBOOT_S)
        except PowerCut:
            yield from run.power_restored()

    def _reboot_safely(self, run: DeviceRun, brain: DeviceBrain, queue: Queue) -> Generator[Any, Any, None]:
        """Reboot; a power cut or a crash during the boot's own writes means booting again."""
        while True:
            try:
                yield from self._reboot(run, brain, queue)
                return
            except (PowerCut, DaemonCrash) as fault:
                yield from self._recover(run, brain, fault)

    def _reboot(self, run: DeviceRun, brain: DeviceBrain, queue: Queue) -> Generator[Any, Any, None]:
        """Boot until a revision comes up: bootloader latch, boot delay, kernel panics."""
        world = self.world
        cfg = self.config
        queue.clear()
        self._lose_volatile(run, brain)
        if brain.disk.torn:
            return
        disk = self._own_disk(brain)
        while True:
            choice = choose_boot(disk.pv_rev, disk.pv_try, disk.latch, cfg.boot_latch, cfg.boot_attempts)
            disk.latch = choice.latch  # the bootloader saves its latch before booting
            run.first_boot = choice.trying
            try:
                yield from run.boot()
            except PowerCut:
                yield from run.power_restored()
                continue
            if self._defect(run.device, choice.rev) == "kernel_panic":
                world.count("kernel_panic")
                run.exposed = True
                continue  # panic=2: the board resets and the bootloader decides again
            break
        run.first_boot = False
        brain.booted = choice.rev
        brain.hub_confirmed = False
        world.set_running(run.device, int(choice.rev))
        brain.engine, commands = self.memo.boot(self._view(run.device, disk, choice.rev))
        rebooting = yield from self._execute(run, brain, commands, queue)
        if rebooting:
            yield from self._reboot(run, brain, queue)

    def _wake_factory(self, run: DeviceRun) -> DeviceBrain:
        """A device that has run its factory revision since before the simulation: boot the engine
        on the factory disk and settle it instantly (containers up, no time spent).

        Every device settles the same way (no randomness, no time; the engine is deterministic and
        the storage figures it boots with decide nothing here unless GC runs), so the first
        device's settled engine and disk are a template: later devices share both, the disk until
        they write to it (copy-on-write, see `_own_disk`)."""
        template = self._factory_template
        if template is None:
            brain, reusable = self._settle_factory(run)
            if reusable:
                self.settled_disk = brain.disk
                brain.disk.shared = True
                self._factory_template = (brain.engine, dict(brain.hub_progress), brain.seq)
            else:
                self._factory_template = False
            return brain
        if not isinstance(template, tuple):  # False: every device settles on its own
            return self._settle_factory(run)[0]
        engine, hub_progress, seq = template
        brain = DeviceBrain(engine, self.settled_disk or self.factory_disk, "0")
        brain.hub_progress = dict(hub_progress)
        brain.seq = seq
        run.mb_written = 0.0
        return brain

    def _settle_factory(self, run: DeviceRun) -> tuple[DeviceBrain, bool]:
        """Boot and settle one device on the factory disk; also says whether the result is the same
        for every device (it is unless a GC ran: GC results depend on the device's storage)."""
        disk = self.factory_disk
        engine, commands = self.memo.boot(self._view(run.device, disk, "0"))
        brain = DeviceBrain(engine, disk, "0")
        pending = deque(commands)
        settled = 0
        reusable = True
        while pending and settled < 200:
            settled += 1
            command = pending.popleft()
            events: list[E.Event] = []
            if isinstance(command, C.RunGc):
                reusable = False
            if command.durable:
                self._apply(run, brain, command)
                events.extend(entry for _, _, entry in brain.agenda if isinstance(entry, E.Event))
                brain.agenda = [item for item in brain.agenda if not isinstance(item[2], E.Event)]
            elif isinstance(command, C.StartContainers):
                trail = brain.disk.trails.get(command.rev)
                goal_of = goals(trail.state) if trail is not None and trail.state is not None else {}
                for name in command.names:
                    goal = goal_of.get(name)
                    outcome = StartOutcome.OK if goal is not None else StartOutcome.FAILS
                    for kind in container_events(goal or "", outcome):
                        events.append(E.ContainerExited(name, 0.0, -1) if kind is E.ContainerExited else kind(name))
            elif isinstance(command, C.ArmTimer):
                events.append(E.TimerFired(command.name))  # it ran out long before the simulation
            elif isinstance(command, C.ReportProgress):
                brain.hub_progress[command.rev] = command.record
                if brain.engine.watches_hub:
                    events.append(E.HubReached())
            for event in events:
                brain.engine, more = self.memo.handle(brain.engine, event)
                pending.extend(more)
        run.mb_written = 0.0
        return brain, reusable and not brain.agenda and not brain.timers
