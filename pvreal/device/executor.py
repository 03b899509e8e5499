"""Each engine command → its real effect on this machine, and the events that effect produces,
as the interpreter contract (shared.engine.driver) states them.

Durable commands are executed synchronously and in order, each one written and synced (through
pvreal.storage / pvreal.durable / pvreal.bootenv) before `execute` returns, which is exactly the
engine's contract. Hub commands (ReportProgress, FetchMetadata, FetchObject) go to the device's
Hub client when it has one (remote mode, pvreal.device.remote), which answers them later through
the daemon's queue; without one they are dropped (a device updated through pv-ctrl only).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from pvreal.device.clock import Timers
from pvreal.device.containers import ContainerRunner
from pvreal.device.crashpoint import CrashPlan, die, first_write_cut_short
from pvreal.device.latch import BootFiles, set_env
from pvreal.device.secureboot import valid_pool
from pvreal.storage import Storage
from shared.engine.commands import (
    ArmTimer,
    CancelTimer,
    Command,
    DeleteRevision,
    FetchMetadata,
    FetchObject,
    LinkObjects,
    PersistProgress,
    ReportProgress,
    RunGc,
    SetBootEnv,
    StartContainers,
    StopContainers,
    SwitchRevision,
    WriteDoneMarker,
    WriteTrail,
)
from shared.engine.config import Config
from shared.engine.driver import disk_view
from shared.engine.events import (
    ContainerExited,
    ContainersStopped,
    DiskView,
    Event,
    GcDone,
    StorageStats,
    TrailView,
)
from shared.engine.gc import GcPlan
from shared.engine.progress import Msg, Progress
from shared.errors import PvError
from shared.state import State, is_sha256, parse_state

log = logging.getLogger(__name__)


class Executor:
    """Carries out engine commands for one device."""

    def __init__(
        self,
        storage: Storage,
        boot: BootFiles,
        timers: Timers,
        runner: ContainerRunner,
        config: Config,
        hub: Callable[[Command], None] | None = None,
    ):
        self.storage = storage
        self.hub = hub  # remote mode: queues a Hub command's request (its answer comes later)
        self.boot = boot
        self.timers = timers
        self.runner = runner
        self.config = config
        self._states: dict[str, State] = {}
        self.crash = CrashPlan.from_env()  # `pvreal crashcheck`'s injected exits (crashpoint.py)
        self._handlers: dict[type, Callable[[Command], list[Event]]] = {
            PersistProgress: self._persist_progress,
            WriteTrail: self._write_trail,
            LinkObjects: self._link_objects,
            SetBootEnv: self._set_boot_env,
            WriteDoneMarker: self._write_done,
            DeleteRevision: self._delete_revision,
            RunGc: self._run_gc,
            SwitchRevision: self._switch_revision,
            StartContainers: self._start_containers,
            StopContainers: self._stop_containers,
            ArmTimer: self._arm_timer,
            CancelTimer: self._cancel_timer,
            ReportProgress: self._to_hub,
            FetchMetadata: self._to_hub,
            FetchObject: self._to_hub,
        }

    def execute(self, command: Command) -> list[Event]:
        if command.durable and self.crash.armed and self.crash.before(command):
            self._tear(command)
            die()
        handler = self._handlers.get(type(command))
        if handler is None:
            log.debug("no effect here: %r", command)
            return []
        return handler(command)

    # ------------------------------------------------------------------ reading the disk

    def load_state(self, rev: str) -> tuple[State | None, str | None]:
        """The parsed state of a trail, or the §3.4.3 message saying why there is none."""
        if rev in self._states:
            return self._states[rev], None
        try:
            path = self.storage.state_path(rev)
            data = path.read_bytes()
        except (OSError, PvError):
            return None, Msg.NOT_FOUND
        try:
            state = parse_state(data, source=str(path))
        except PvError:
            return None, Msg.BAD_FORMAT
        self._states[rev] = state
        return state, None

    def forget_state(self, rev: str) -> None:
        self._states.pop(rev, None)

    def disk_view(self, booted_rev: str, env: dict[str, str]) -> DiskView:
        """What survived on disk, for `Updater.boot`."""
        self._states.clear()
        trails: dict[str, TrailView] = {}
        for rev in self.storage.revisions():
            state, _ = self.load_state(rev)
            progress = None
            try:
                raw = self.storage.read_progress(rev)
                if raw is not None:
                    progress = Progress.from_json(raw, source=str(self.storage.progress_path(rev)))
            except (OSError, PvError):
                progress = None
            trails[rev] = TrailView(state, progress, self.storage.is_done(rev))
        return disk_view(booted_rev, env, trails, valid_pool(self.storage, booted_rev, self.config), self.stats())

    def stats(self) -> StorageStats:
        space = self.storage.space()
        return StorageStats(space.total, space.free)

    # ------------------------------------------------------------------ durable steps

    def _persist_progress(self, cmd: PersistProgress) -> list[Event]:
        self.storage.write_progress(cmd.rev, cmd.record.to_json())
        return []

    def _write_trail(self, cmd: WriteTrail) -> list[Event]:
        self.storage.write_state(cmd.rev, cmd.state.entries)
        self._states[cmd.rev] = cmd.state
        return []

    def _link_objects(self, cmd: LinkObjects) -> list[Event]:
        try:
            self.storage.link_trail(cmd.rev, cmd.state.entries)
        except (PvError, OSError) as exc:
            # Pantavisor does no completeness check for local runs (§3.4.3): the failure shows
            # up when the container cannot be mounted, which the engine then handles.
            log.warning("linking %s: %s", cmd.rev, exc)
        return []

    def _set_boot_env(self, cmd: SetBootEnv) -> list[Event]:
        set_env(self.boot, cmd.pv_rev, cmd.pv_try)
        return []

    def _write_done(self, cmd: WriteDoneMarker) -> list[Event]:
        self.storage.mark_done(cmd.rev)
        return []

    def _delete_revision(self, cmd: DeleteRevision) -> list[Event]:
        self.storage.remove_revision(cmd.rev)
        self.forget_state(cmd.rev)
        return []

    def _run_gc(self, cmd: RunGc) -> list[Event]:
        plan = self.storage.plan_gc(cmd.keep_revisions, cmd.keep_objects)  # shared.engine.gc
        result = self.storage.run_gc(plan)
        for rev in result.removed_revisions:
            self.forget_state(rev)
        return [
            GcDone(
                result.reclaimed,
                self.stats(),
                frozenset(result.removed_objects),
                frozenset(result.removed_revisions),
            )
        ]

    def _tear(self, command: Command) -> None:
        """Part of a tearable command, as a power cut inside it leaves it (shared.engine.driver
        D1): an env write torn half-way, half of a trail's objects linked, a GC's trails deleted
        but not yet its objects."""
        if isinstance(command, SetBootEnv):
            with first_write_cut_short():
                self._set_boot_env(command)
        elif isinstance(command, LinkObjects):
            objects = [key for key, value in command.state.entries.items() if is_sha256(value)]
            linked = set(objects[: len(objects) // 2])
            part = {
                key: value
                for key, value in command.state.entries.items()
                if key in linked or not is_sha256(value)
            }
            with contextlib.suppress(PvError, OSError):  # as _link_objects: no completeness check
                self.storage.link_trail(command.rev, part)
        elif isinstance(command, RunGc):
            plan = self.storage.plan_gc(command.keep_revisions, command.keep_objects)
            self.storage.run_gc(GcPlan(plan.revisions, ()))

    # ------------------------------------------------------------------ the rest

    def _switch_revision(self, cmd: SwitchRevision) -> list[Event]:
        self.storage.set_current(cmd.rev)
        return []

    def _start_containers(self, cmd: StartContainers) -> list[Event]:
        state, problem = self.load_state(cmd.rev)
        events: list[Event] = []
        for name in cmd.names:
            spec = state.container(name) if state is not None else None
            if spec is None:  # a start that FAILS (shared.engine.driver, D3)
                log.warning("%s: not in revision %s (%s)", name, cmd.rev, problem)
                events.append(ContainerExited(name, 0.0, -1))
                continue
            # the first event of the container's script; the runner's watcher and pv-ctrl's
            # /signal feed the rest back later
            events.append(self.runner.start(cmd.rev, spec))
        return events

    def _stop_containers(self, cmd: StopContainers) -> list[Event]:
        self.runner.stop(cmd.names, cmd.grace)
        return [ContainersStopped(tuple(cmd.names))]

    def _arm_timer(self, cmd: ArmTimer) -> list[Event]:
        self.timers.arm(cmd.name, cmd.delay)
        return []

    def _cancel_timer(self, cmd: CancelTimer) -> list[Event]:
        self.timers.cancel(cmd.name)
        return []

    def _to_hub(self, cmd: Command) -> list[Event]:
        """D2: a Hub command has no immediate answer; the Hub client feeds its events later."""
        if self.hub is not None:
            self.hub(cmd)
        return []


def storage_prefix(root: Path) -> str:
    """A short name unique to a storage folder: runc ids, netns names, interface names."""
    import hashlib

    return "pv" + hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:6]
