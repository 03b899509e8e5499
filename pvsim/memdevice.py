"""A small in-memory device that executes the engine's commands, with a storage model for power cuts.

Storage: a `pvsim.simdisk.SimDisk` that tracks hard links one by one (its storage model is what
`pvsim crashcheck` cuts through), with a capacity and the Hub's object sizes for storage figures.
Objects land in the pool by `<sha>.tmp` + rename when the download completes. Commands are
interpreted as `shared.engine.driver` states.

Containers and revisions are modelled by flags (`Behaviour`): a container that crashes after
start, one that never signals ready, a revision whose kernel panics.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pvsim.simdisk import SimDisk
from shared.engine import driver
from shared.engine.bootloader import Latch, choose_boot
from shared.engine.commands import (
    ArmTimer,
    CancelTimer,
    Command,
    CtrlReply,
    FetchMetadata,
    FetchObject,
    Reboot,
    ReportProgress,
    StartContainers,
    StopContainers,
    SwitchRevision,
)
from shared.engine.config import Config
from shared.engine.driver import StartOutcome, TimerGenerations, container_events
from shared.engine.events import (
    ContainerExited,
    ContainersStopped,
    Event,
    GcDone,
    HubReached,
    HubRequestFailed,
    MetadataReceived,
    ObjectFetched,
    PendingSteps,
    Step,
    StorageStats,
    TimerFired,
    TrailView,
)
from shared.engine.invariants import CutPoint
from shared.engine.invariants import describe_step as describe
from shared.engine.progress import PENDING_STATUSES, Progress
from shared.engine.updater import Phase, Updater
from shared.state import State

# ------------------------------------------------------------------------------- storage

DEFAULT_OBJECT_SIZE = 1000


class MemDisk(SimDisk):
    """Everything that survives a power cut, and the partition's size."""

    __slots__ = ("total", "other_used")

    def __init__(
        self,
        env: dict[str, str],
        latch: Latch,
        trails: dict[str, TrailView],
        objects: Iterable[str],
        links: dict[str, frozenset[str]],
        total: int = 1 << 30,
        other_used: int = 0,  # logs, perm disks, ...
    ) -> None:
        super().__init__(env.get("pv_rev", ""), env.get("pv_try", ""), latch, trails, frozenset(objects), links)
        self.total = total
        self.other_used = other_used

    @classmethod
    def settled(cls, trails: dict[str, TrailView], objects: Iterable[str], pv_rev: str, **kw: int) -> MemDisk:
        """A disk whose trails link all their objects, booting `pv_rev`."""
        links = {rev: t.state.object_shas() for rev, t in trails.items() if t.state is not None}
        return cls({"pv_rev": pv_rev}, Latch(), trails, objects, links, **kw)

    def copy(self) -> MemDisk:
        new = MemDisk({}, self.latch, dict(self.trails), self.objects, dict(self.links or {}), self.total, self.other_used)
        new.pv_rev, new.pv_try, new.torn = self.pv_rev, self.pv_try, self.torn
        return new


# ------------------------------------------------------------------------------- behaviour


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How the world answers: containers, kernels, the Hub."""

    crashes: frozenset[tuple[str, str]] = frozenset()  # (rev, container) exits after start
    never_ready: frozenset[tuple[str, str]] = frozenset()  # (rev, container) never signals ready
    panics: frozenset[str] = frozenset()  # revisions whose kernel panics at boot
    corrupt_objects: frozenset[str] = frozenset()  # shas the Hub always serves corrupted
    hub_fails_in_testing: bool = False  # every Hub request fails while an update is TESTING
    object_sizes: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class HubStep:
    rev: str
    state: State
    progress: Progress | None = None
    signature_error: str | None = None


class PowerCut(Exception):
    """Raised inside `execute` when the configured cut point is reached."""


class BootFailure(Exception):
    """The bootloader could not boot anything usable."""


# ------------------------------------------------------------------------------- the device


class MemDevice:
    """Boots, runs the engine loop to quiescence, and records the durable steps it executed."""

    MAX_EVENTS_PER_BOOT = 5000

    def __init__(
        self,
        storage: MemDisk,
        config: Config,
        behaviour: Behaviour,
        hub: list[HubStep] | None = None,
        operator: Callable[[MemDevice], list[Event]] | None = None,
    ):
        self.storage = storage
        self.config = config
        self.behaviour = behaviour
        self.hub = hub if hub is not None else []
        self.operator = operator  # events a person sends once the device is quiet (pv-ctrl)
        self.cut: CutPoint | None = None
        self.steps: list[str] = []  # durable steps executed, described
        self.tearable: list[bool] = []
        self.boots: list[str] = []  # revision booted at each boot ("!" prefix: failed boot)
        self.running: str | None = None
        self.updater: Updater | None = None
        self.replies: list[CtrlReply] = []
        self.now = 0.0
        self._heap: list[tuple[float, int, Event]] = []
        self._seq = 0
        self._timers = TimerGenerations()
        self._queue: deque[Event] = deque()
        self._last_offer: tuple | None = None

    # ------------------------------------------------------------------ boot

    def boot(self) -> list[Command]:
        """The bootloader, then `Updater.boot`. Raises BootFailure when nothing can boot."""
        self._heap.clear()
        self._timers.clear()
        self._queue.clear()
        self.running = None
        st = self.storage
        env = st.env()
        if env is None:
            self.boots.append("!env")
            raise BootFailure("boot env unreadable (torn write): no pv_rev to boot")
        cfg = self.config
        choice = choose_boot(env["pv_rev"], env["pv_try"], st.latch, cfg.boot_latch, cfg.boot_attempts)
        st.latch = choice.latch
        rev = choice.rev
        problem = st.unbootable(rev)
        if problem:
            self.boots.append("!" + rev)
            raise BootFailure(f"bootloader picked revision {rev!r}: {problem}")
        if rev in self.behaviour.panics:
            self.boots.append("!panic:" + rev)
            return [Reboot("kernel panic")]
        self.boots.append(rev)
        self.running = rev
        self.updater, commands = Updater.boot(st.view(rev, self.stats()), cfg)
        return commands

    def unbootable(self, rev: str) -> str | None:
        """Why `rev` cannot be booted from this storage, or None."""
        return self.storage.unbootable(rev)

    def size(self, sha: str) -> int:
        return self.behaviour.object_sizes.get(sha, DEFAULT_OBJECT_SIZE)

    def stats(self) -> StorageStats:
        st = self.storage
        return StorageStats(st.total, st.total - st.other_used - sum(map(self.size, st.objects)))

    # ------------------------------------------------------------------ run loop

    def run_boot(self) -> str:
        """Boot once and run until quiescence or reboot: returns "quiet" or "reboot"."""
        commands = self.boot()
        events = 0
        operator_done = False
        while True:
            if self.execute_batch(commands):
                return "reboot"
            updater = self.updater
            assert updater is not None
            event = self._next_event(updater)
            if event is None and not operator_done and self.operator is not None:
                operator_done = True
                self._queue.extend(self.operator(self))
                event = self._next_event(updater)
            if event is None:
                return "quiet"
            events += 1
            if events > self.MAX_EVENTS_PER_BOOT:
                raise RuntimeError("no quiescence: event limit reached in one boot")
            commands = updater.handle(event)

    def execute_batch(self, commands: list[Command]) -> bool:
        """Carry out one batch of commands in order; True when the device reboots (a Reboot, or
        an engine that is finished)."""
        for command in commands:
            self.execute(command)
            if isinstance(command, Reboot):
                return True
        assert self.updater is not None
        return self.updater.finished

    def next_answer(self) -> Event | None:
        """The next event a command was answered with at once, if any (driver.py D2)."""
        return self._queue.popleft() if self._queue else None

    def _next_event(self, updater: Updater) -> Event | None:
        if self._queue:
            return self._queue.popleft()
        if updater.accepts_remote_steps:
            pending = tuple(
                Step(s.rev, s.state, None, s.progress, s.signature_error)
                for s in self.hub
                if s.progress is None or s.progress.status in PENDING_STATUSES
            )
            key = (pending, len(self.boots))
            if pending and key != self._last_offer:  # offer each Hub view once per boot
                self._last_offer = key
                return PendingSteps(pending[:1])
        return self.next_scheduled(updater)

    def next_scheduled(self, updater: Updater, until: float | None = None) -> Event | None:
        """The next later event in time order (a live timer, a container's, a Hub poll while
        the engine watches the Hub), not later than `until`; None when there is none."""
        if updater.watches_hub and not any(isinstance(e, HubTick) for _, _, e in self._heap):
            self._schedule(self.config.updater_interval, HubTick())
        while self._heap:
            if until is not None and self._heap[0][0] > until:
                return None
            at, _, event = heapq.heappop(self._heap)
            self.now = max(self.now, at)
            if isinstance(event, _Armed):
                if self._timers.fire(event.name, event.generation):
                    return TimerFired(event.name)
                continue
            if isinstance(event, HubTick):
                if updater.watches_hub:
                    return self._hub_request(updater)
                continue
            return event
        return None

    def take_answers(self, *, pass_time: bool = False) -> list[Event]:
        """What the device feeds back without an engine (the conformance test's view): the queued
        events, then the scheduled ones in time order; armed timers only when time passes."""
        answers = list(self._queue)
        self._queue.clear()
        kept = []
        for at, seq, event in sorted(self._heap, key=lambda e: (e[0], e[1])):
            if isinstance(event, _Armed):
                if not pass_time:
                    kept.append((at, seq, event))
                elif self._timers.fire(event.name, event.generation):
                    answers.append(TimerFired(event.name))
            elif not isinstance(event, HubTick):
                answers.append(event)
        self._heap[:] = kept
        return answers

    def _schedule(self, delay: float, event: Event) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (self.now + delay, self._seq, event))

    def _hub_request(self, updater: Updater) -> Event:
        return HubRequestFailed() if self._hub_down(updater) else HubReached()

    def _hub_down(self, updater: Updater | None) -> bool:
        return (
            self.behaviour.hub_fails_in_testing
            and updater is not None
            and updater.phase is Phase.TESTING
        )

    # ------------------------------------------------------------------ commands

    def execute(self, command: Command) -> None:
        if command.durable:
            index = len(self.steps)
            tearable = isinstance(command, driver.TEARABLE)
            if self.cut is not None and self.cut.step == index:
                if self.cut.torn and tearable:
                    self._apply(command, torn=True)
                raise PowerCut(index)
            self.steps.append(describe(command))
            self.tearable.append(tearable)
        self._apply(command, torn=False)

    def _apply(self, command: Command, *, torn: bool) -> None:
        st = self.storage
        if command.durable:
            plan = st.apply(command, torn=torn)
            if plan is not None and not torn:
                removed = frozenset(plan.objects)
                reclaimed = sum(map(self.size, removed))
                self._queue.append(GcDone(reclaimed, self.stats(), removed, frozenset(plan.revisions)))
            return
        match command:
            case ReportProgress(rev=rev, record=record):
                if not self._hub_down(self.updater):
                    for step in self.hub:
                        if step.rev == rev:
                            step.progress = record
            case FetchMetadata(rev=rev, shas=shas):
                sizes = {s: self.size(s) for s in shas}
                self._queue.append(MetadataReceived(rev, sizes, self.stats()))
            case FetchObject(sha=sha):
                if sha in self.behaviour.corrupt_objects:
                    self._queue.append(ObjectFetched(sha, ok=False, hash_mismatch=True))
                else:
                    st.objects = st.objects | {sha}
                    self._queue.append(ObjectFetched(sha))
            case StartContainers(rev=rev, names=names):
                self._start(rev, names)
            case StopContainers(names=names):
                self._queue.append(ContainersStopped(names))
            case SwitchRevision(rev=rev):
                self.running = rev
            case ArmTimer(name=name, delay=delay):
                self._seq += 1
                self._timers.arm(name, self._seq)
                self._schedule(delay, _Armed(name, self._seq))
            case CancelTimer(name=name):
                self._timers.cancel(name)
            case CtrlReply():
                self.replies.append(command)
            case Reboot():
                pass

    def _start(self, rev: str, names: tuple[str, ...]) -> None:
        """D3: each container's script; the first event at once, the rest a second later."""
        trail = self.storage.trails.get(rev)
        state = trail.state if trail is not None else None
        b = self.behaviour
        for name in names:
            spec = state.container(name) if state is not None else None
            if spec is None:
                self._queue.append(ContainerExited(name, 0.0, -1))
                continue
            if (rev, name) in b.crashes:
                outcome = StartOutcome.CRASHES
            elif (rev, name) in b.never_ready:
                outcome = StartOutcome.NEVER_READY
            else:
                outcome = StartOutcome.OK
            first, *later = container_events(spec.status_goal, outcome)
            self._queue.append(first(name))
            for kind in later:
                self._schedule(1.0, ContainerExited(name, uptime=1.0, code=1) if kind is ContainerExited else kind(name))


@dataclass(frozen=True, slots=True)
class _Armed(Event):
    name: str
    generation: int


@dataclass(frozen=True, slots=True)
class HubTick(Event):
    """The Hub client's periodic request while an update is being tested."""
