"""Run a trace case on the crashcheck device (`pvsim.memdevice`) and say what happened.

The device interprets the engine's commands under the driver contract (shared/engine/driver.py):
after each step, the events a command is answered with at once (D2) are fed back until none is
left; later ones (a container's ready signal or exit, a timer, a Hub poll) wait for a `wait`,
`settle` or `timer` step. A `Reboot` boots again at once through the bootloader latch (D6), as
does a power cut. What is written down is what a person watching Pantavisor would see: every
progress record (and whether the Hub is told), every boot env write, every reboot and boot,
pv-ctrl's answers, power cuts, and where the device ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pvsim.memdevice import (
    Behaviour,
    BootFailure,
    CutPoint,
    HubStep,
    MemDevice,
    MemDisk,
    PowerCut,
    describe,
)
from pvsim.trace.case import TraceCase, TraceStep, World
from shared.engine.bootloader import Latch
from shared.engine.commands import (
    Command,
    CtrlReply,
    FetchMetadata,
    FetchObject,
    PersistProgress,
    Reboot,
    ReportProgress,
    SetBootEnv,
)
from shared.engine.events import (
    ContainerExited,
    ContainerMounted,
    ContainerReady,
    ContainerStarted,
    CtrlCommand,
    Event,
    HubReached,
    HubRequestFailed,
    LocalStepStarted,
    LocalStepUploaded,
    MetadataFailed,
    ObjectFetched,
    ObjectPut,
    PendingSteps,
    Step,
    TimerFired,
    TrailView,
)
from shared.engine.progress import Msg, Status
from shared.errors import PvError

Entry = dict[str, Any]
MAX_BOOTS_PER_STEP = 10
SETTLE_LIMIT_S = 7 * 86400.0  # a `settle` that has not settled after a week of device time

_CONTAINER_EVENTS = {
    "mounted": ContainerMounted,
    "started": ContainerStarted,
    "ready": ContainerReady,
}


class TraceError(PvError):
    """A step that cannot happen on the device as it is (a timer that is not armed, ...)."""


class TraceDevice(MemDevice):
    """The crashcheck device with a world a case can change: the Hub up or down, failing
    metadata and object requests, containers that fail to start."""

    def __init__(self, case: TraceCase, ordering: str | None) -> None:
        revs = case.revisions
        on_disk = {name: r for name, r in revs.items() if r.on_disk}
        trails = {
            name: TrailView(r.state, r.progress.progress() if r.progress else None, r.done)
            for name, r in on_disk.items()
        }
        objects = frozenset().union(*(r.state.object_shas() for r in on_disk.values()))
        links = {name: r.state.object_shas() for name, r in on_disk.items()}
        disk = MemDisk(
            {"pv_rev": case.disk.pv_rev, "pv_try": case.disk.pv_try},
            Latch(),
            trails,
            objects,
            links,
            total=case.disk.total,
            other_used=case.disk.used_by_others,
        )
        super().__init__(disk, case.config_for(ordering), Behaviour(), [])
        self.case = case
        self.entries: list[Entry] = []
        self.step_index = 0
        self.world = case.world
        self.world_changed(case.world)
        self.cut_write = ""  # the durable write a cut fell before or inside

    # ------------------------------------------------------------------ the world

    def world_changed(self, world: World) -> None:
        self.world = world
        self.metadata_failures = world.metadata_failures
        self.object_failures = world.object_failures
        corrupt = frozenset().union(
            *(self.case.revisions[r].state.object_shas() for r in world.corrupt if r in self.case.revisions)
        )
        pairs = lambda names: frozenset(tuple(n.rsplit(":", 1)) for n in names)  # noqa: E731
        self.behaviour = Behaviour(
            crashes=pairs(world.crashes),
            never_ready=pairs(world.never_ready),
            panics=frozenset(world.panics),
            corrupt_objects=corrupt - self.storage.objects,
        )
        self.fails_to_start = pairs(world.fails_to_start)

    def size(self, sha: str) -> int:
        return self.world.object_size

    def _hub_down(self, updater: Any) -> bool:
        return self.world.hub == "down"

    def _apply(self, command: Command, *, torn: bool) -> None:
        if isinstance(command, FetchMetadata) and (self.metadata_failures or self._hub_down(None)):
            self.metadata_failures = max(0, self.metadata_failures - 1)
            self._queue.append(MetadataFailed(command.rev))
            return
        if isinstance(command, FetchObject) and (self.object_failures or self._hub_down(None)):
            self.object_failures = max(0, self.object_failures - 1)
            self._queue.append(ObjectFetched(command.sha, ok=False))
            return
        super()._apply(command, torn=torn)

    def _start(self, rev: str, names: tuple[str, ...]) -> None:
        failing = tuple(n for n in names if (rev, n) in self.fails_to_start)
        for name in names:  # one at a time, so the start order stays the engine's
            if name in failing:
                self._queue.append(ContainerExited(name, 0.0, -1))
            else:
                super()._start(rev, (name,))

    # ------------------------------------------------------------------ what is seen

    def note(self, what: str, **fields: Any) -> None:
        self.entries.append({"step": self.step_index, "what": what, **fields})

    def execute(self, command: Command) -> None:
        try:
            super().execute(command)
        except PowerCut:
            self.cut_write = describe(command)
            raise
        self._seen(command)

    def _seen(self, command: Command) -> None:
        if isinstance(command, PersistProgress):
            r = command.record
            self.note(
                "record", rev=command.rev, status=r.status.value, message=r.status_msg,
                progress=r.progress, retries=r.retries, reported="no",
            )
        elif isinstance(command, ReportProgress):
            told = "lost" if self._hub_down(None) else "yes"
            last = self.entries[-1] if self.entries else {}
            if last.get("what") == "record" and last["rev"] == command.rev and last["reported"] == "no":
                last["reported"] = told
            else:
                r = command.record
                self.note(
                    "report", rev=command.rev, status=r.status.value, message=r.status_msg,
                    progress=r.progress, retries=r.retries, reported=told,
                )
        elif isinstance(command, SetBootEnv):
            keys = {k: v for k, v in (("pv_rev", command.pv_rev), ("pv_try", command.pv_try)) if v is not None}
            self.note("env", **keys, redundant=command.redundant)
        elif isinstance(command, Reboot):
            self.note("reboot", reason=command.reason)
        elif isinstance(command, CtrlReply):
            self.note("ctrl", status=command.status, reason=command.body)


# ----------------------------------------------------------------------------- running


def run_trace(case: TraceCase, ordering: str | None = None) -> list[Entry]:
    """Every entry of the trace, in order; the last one says where the device ended."""
    device = TraceDevice(case, ordering)
    alive = _power_on(device)
    for index, step in enumerate(case.step, start=1):
        device.step_index = index
        if not alive:
            break
        alive = _run_step(device, step)
    if alive:
        _end(device)
    return device.entries


def _power_on(device: TraceDevice) -> bool:
    """Boot (again) and feed the immediate answers; False when the device cannot boot."""
    for _ in range(MAX_BOOTS_PER_STEP):
        env = device.storage.env()
        try:
            commands = device.boot()
        except BootFailure as exc:
            device.note("boot-failed", reason=str(exc))
            return False
        booted = device.boots[-1]
        device.note(
            "boot", rev=booted.lstrip("!").removeprefix("panic:"), pv_rev=env["pv_rev"] if env else "",
            pv_try=env["pv_try"] if env else "", panic=booted.startswith("!panic:"),
        )
        if _feed(device, commands) != "reboot":
            return True
    raise TraceError(f"more than {MAX_BOOTS_PER_STEP} boots in one step: a reboot loop")


def _feed(device: TraceDevice, commands: list[Command]) -> str:
    """Carry out `commands`, then the events they are answered with at once: "reboot" when the
    device reboots, else "ok"."""
    while True:
        if device.execute_batch(commands):
            return "reboot"
        answer = device.next_answer()
        if answer is None:
            return "ok"
        assert device.updater is not None
        commands = device.updater.handle(answer)


def _handle(device: TraceDevice, event: Event) -> bool:
    """Feed one event; reboot when the engine asks. False when the device no longer boots."""
    assert device.updater is not None
    if _feed(device, device.updater.handle(event)) == "reboot":
        return _power_on(device)
    return True


def _run_step(device: TraceDevice, step: TraceStep) -> bool:
    if step.cut_before_write or step.cut_inside_write:
        at = (step.cut_before_write or step.cut_inside_write or 1) - 1
        device.cut = CutPoint(len(device.steps) + at, torn=bool(step.cut_inside_write))
    try:
        alive = _act(device, step)
    except PowerCut:
        alive = _cut(device, torn=bool(step.cut_inside_write))
    if device.cut is not None:
        device.cut = None
        raise TraceError(f"step {device.step_index}: fewer durable writes than the cut asks for")
    return alive


def _cut(device: TraceDevice, *, torn: bool) -> bool:
    device.cut = None
    device.note("power-cut", torn=torn, write=device.cut_write)
    device.cut_write = ""
    return _power_on(device)


def _act(device: TraceDevice, step: TraceStep) -> bool:
    if step.world is not None:
        device.world_changed(step.world)
        return True
    if step.power_cut:
        return _cut(device, torn=False)
    if step.wait is not None or step.settle:
        return _pass_time(device, device.now + step.wait if step.wait else None)
    return all(_handle(device, event) for event in _events(device, step))


def _events(device: TraceDevice, step: TraceStep) -> Iterator[Event]:
    case = device.case
    if step.offer is not None:
        yield PendingSteps((_hub_step(device, step),))
    elif step.upload is not None:
        state = case.revisions[step.upload].state
        # the person PUTs the missing objects first; the PUT of the step writes .pvr/json itself
        for sha in sorted(state.object_shas() - device.storage.objects):
            device.storage.objects = device.storage.objects | {sha}
            yield ObjectPut(sha)
        device.storage.write_trail(step.upload, state)
        yield LocalStepStarted(step.upload)
        yield LocalStepUploaded(step.upload, state)
    elif step.ctrl is not None:
        rev = step.payload
        state, error = None, None
        if rev:
            trail = device.storage.trails.get(rev)
            state = trail.state if trail is not None else None
            error = None if state is not None else Msg.NOT_FOUND
        yield CtrlCommand(step.ctrl, rev, state, error)
    elif step.hub is not None:
        if step.hub in ("up", "down"):
            device.world_changed(replace_world(device.world, hub=step.hub))
        else:
            yield HubReached() if step.hub == "reached" else HubRequestFailed()
    elif step.container is not None:
        if step.event == "exited":
            yield ContainerExited(step.container, step.uptime, 1)
        else:
            yield _CONTAINER_EVENTS[str(step.event)](step.container)
    elif step.timer is not None:
        if not device._timers.fire(step.timer, device._timers.get(step.timer, -1)):
            armed = ", ".join(sorted(device._timers)) or "none"
            raise TraceError(f"step {device.step_index}: timer {step.timer!r} is not armed (armed: {armed})")
        yield TimerFired(step.timer)


def replace_world(world: World, **changes: Any) -> World:
    return world.model_copy(update=changes)


def _hub_step(device: TraceDevice, step: TraceStep) -> Step:
    rev = str(step.offer)
    known = next((s for s in device.hub if s.rev == rev), None)
    state = device.case.revisions[rev].state
    if known is None:
        known = HubStep(rev, state, None, step.signature_error)
        device.hub.append(known)
    if step.hub_progress is not None:
        known.progress = step.hub_progress.progress()
    if step.bad_format:
        return Step(rev, None, "{not json", known.progress)
    return Step(rev, state, None, known.progress, step.signature_error)


def _pass_time(device: TraceDevice, until: float | None) -> bool:
    """Later events in time order (timers, containers, Hub polls) up to `until`, or until none."""
    limit = until if until is not None else device.now + SETTLE_LIMIT_S
    while True:
        updater = device.updater
        assert updater is not None
        event = device.next_scheduled(updater, limit)
        if event is None:
            if until is not None:
                device.now = until
            return True
        if not _handle(device, event):
            return False


def _end(device: TraceDevice) -> None:
    env = device.storage.env() or {}
    updater = device.updater
    device.step_index = len(device.case.step) + 1
    device.note(
        "end",
        running=device.running or "",
        pv_rev=env.get("pv_rev", ""),
        pv_try=env.get("pv_try", ""),
        phase=updater.phase.value if updater is not None else "",
        records={
            rev: f"{t.progress.status.value} {t.progress.status_msg}"
            for rev, t in sorted(device.storage.trails.items())
            if t.progress is not None and t.progress.status is not Status.NEW
        },
    )


__all__ = ["Entry", "TraceDevice", "TraceError", "run_trace"]
