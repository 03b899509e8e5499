"""A small in-memory device that executes the engine's commands, with a storage model for power cuts.

Storage model (what `pvsim crashcheck` cuts through):
- Every durable command is one write followed by a sync; a power cut *between* two durable
  commands keeps the first and loses the second entirely. Progress, trail JSON and the done marker
  are written by rename, so they are atomic: cutting inside them equals cutting before them.
- The boot env is either one block rewritten in place (Pantavisor's uboot.txt; a cut inside the
  write *tears* it: the block is unreadable and U-Boot falls back to its built-in env with no
  `pv_rev`) or two redundant copies with a sequence number, as U-Boot's redundant env does (a cut
  inside the write tears only the copy being written; the other copy still reads).
- LinkObjects and RunGc are many small operations: a cut inside them leaves them partial.
- The bootloader's latch (`pv_trying`) is written by the bootloader and modelled as atomic.
- Objects land in the pool by `<sha>.tmp` + rename when the download completes.

Containers and revisions are modelled by flags (`Behaviour`): a container that crashes after
start, one that never signals ready, a revision whose kernel panics.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.engine import gc as gclib
from shared.engine.bootloader import Latch, choose_boot
from shared.engine.commands import (
    ArmTimer,
    CancelTimer,
    Command,
    CtrlReply,
    DeleteRevision,
    FetchMetadata,
    FetchObject,
    LinkObjects,
    PersistProgress,
    Reboot,
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
from shared.engine.events import (
    ContainerExited,
    ContainerMounted,
    ContainerReady,
    ContainersStopped,
    ContainerStarted,
    DiskView,
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
from shared.engine.progress import PENDING_STATUSES, Progress
from shared.engine.updater import Phase, Updater
from shared.state import State, StatusGoal

# ------------------------------------------------------------------------------- storage


@dataclass(slots=True)
class Trail:
    state: State | None = None
    progress: Progress | None = None
    done: bool = False
    linked: frozenset[str] = frozenset()

    def copy(self) -> Trail:
        return Trail(self.state, self.progress, self.done, self.linked)


@dataclass(slots=True)
class EnvStore:
    """The boot env PV writes (pv_rev, pv_try). `copies` holds (seq, values or None if torn)."""

    copies: list[tuple[int, dict[str, str] | None]]

    @classmethod
    def create(cls, values: dict[str, str], redundant: bool) -> EnvStore:
        if redundant:
            return cls([(1, dict(values)), (0, dict(values))])
        return cls([(1, dict(values))])

    def read(self) -> dict[str, str] | None:
        valid = [(seq, v) for seq, v in self.copies if v is not None]
        return max(valid, key=lambda c: c[0])[1] if valid else None

    def write(self, updates: dict[str, str], *, torn: bool) -> None:
        current = self.read() or {}
        new = {**current, **updates}
        if len(self.copies) == 1:  # in place: a torn write destroys the only copy
            self.copies = [(self.copies[0][0] + 1, None if torn else new)]
            return
        target = min(range(2), key=lambda i: self.copies[i][0] if self.copies[i][1] else -1)
        seq = max(s for s, _ in self.copies) + 1
        self.copies[target] = (seq, None if torn else new)

    def copy(self) -> EnvStore:
        return EnvStore([(s, dict(v) if v is not None else None) for s, v in self.copies])


@dataclass(slots=True)
class Storage:
    """Everything that survives a power cut."""

    env: EnvStore
    latch: Latch
    trails: dict[str, Trail]
    objects: dict[str, int]  # sha -> size
    total: int = 1 << 30
    other_used: int = 0  # logs, perm disks, ...

    def copy(self) -> Storage:
        return Storage(
            self.env.copy(),
            self.latch,
            {r: t.copy() for r, t in self.trails.items()},
            dict(self.objects),
            self.total,
            self.other_used,
        )

    def stats(self) -> StorageStats:
        return StorageStats(self.total, self.total - self.other_used - sum(self.objects.values()))


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


@dataclass(frozen=True, slots=True)
class CutPoint:
    step: int  # index of the durable step (counted from the start of the run)
    torn: bool = False  # cut inside the step instead of before it


TEARABLE = (SetBootEnv, LinkObjects, RunGc)


class BootFailure(Exception):
    """The bootloader could not boot anything usable."""


# ------------------------------------------------------------------------------- the device


class MemDevice:
    """Boots, runs the engine loop to quiescence, and records the durable steps it executed."""

    MAX_EVENTS_PER_BOOT = 5000

    def __init__(
        self,
        storage: Storage,
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
        self._timers: dict[str, int] = {}
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
        env = st.env.read()
        if env is None:
            self.boots.append("!env")
            raise BootFailure("boot env unreadable (torn write): no pv_rev to boot")
        cfg = self.config
        choice = choose_boot(
            env.get("pv_rev", ""),
            env.get("pv_try", ""),
            st.latch,
            cfg.boot_latch,
            cfg.boot_attempts,
        )
        st.latch = choice.latch
        rev = choice.rev
        problem = self.unbootable(rev)
        if problem:
            self.boots.append("!" + rev)
            raise BootFailure(f"bootloader picked revision {rev!r}: {problem}")
        if rev in self.behaviour.panics:
            self.boots.append("!panic:" + rev)
            return [Reboot("kernel panic")]
        self.boots.append(rev)
        self.running = rev
        view = DiskView(
            booted_rev=rev,
            pv_rev=env.get("pv_rev", ""),
            pv_try=env.get("pv_try", ""),
            trails={r: TrailView(t.state, t.progress, t.done) for r, t in st.trails.items()},
            objects=frozenset(st.objects),
            storage=st.stats(),
        )
        self.updater, commands = Updater.boot(view, cfg)
        return commands

    def unbootable(self, rev: str) -> str | None:
        """Why `rev` cannot be booted from this storage, or None."""
        if not rev:
            return "no revision set"
        trail = self.storage.trails.get(rev)
        if trail is None or trail.state is None:
            return "its trail is missing"
        shas = trail.state.object_shas()
        if not shas <= self.storage.objects.keys():
            return "objects missing from the pool"
        if not shas <= trail.linked:
            return "objects not linked into its trail"
        return None

    # ------------------------------------------------------------------ run loop

    def run_boot(self) -> str:
        """Boot once and run until quiescence or reboot: returns "quiet" or "reboot"."""
        commands = self.boot()
        events = 0
        operator_done = False
        while True:
            for command in commands:
                self.execute(command)
                if isinstance(command, Reboot):
                    return "reboot"
            updater = self.updater
            assert updater is not None
            if updater.finished:
                return "reboot"
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
        if updater.watches_hub and not any(isinstance(e, HubTick) for _, _, e in self._heap):
            self._schedule(self.config.updater_interval, HubTick())
        while self._heap:
            at, _, event = heapq.heappop(self._heap)
            self.now = max(self.now, at)
            if isinstance(event, _Armed):
                if self._timers.get(event.name) != event.generation:
                    continue
                del self._timers[event.name]
                return TimerFired(event.name)
            if isinstance(event, HubTick):
                if updater.watches_hub:
                    return self._hub_request(updater)
                continue
            return event
        return None

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
            tearable = isinstance(command, TEARABLE)
            if self.cut is not None and self.cut.step == index:
                if self.cut.torn and tearable:
                    self._apply(command, torn=True)
                raise PowerCut(index)
            self.steps.append(describe(command))
            self.tearable.append(tearable)
        self._apply(command, torn=False)

    def _apply(self, command: Command, *, torn: bool) -> None:
        st = self.storage
        match command:
            case PersistProgress(rev=rev, record=record):
                st.trails.setdefault(rev, Trail()).progress = record
            case WriteTrail(rev=rev, state=state):
                st.trails.setdefault(rev, Trail()).state = state
            case LinkObjects(rev=rev, state=state):
                trail = st.trails.setdefault(rev, Trail())
                trail.state = trail.state or state
                present = sorted(state.object_shas() & st.objects.keys())
                if torn:
                    present = present[: len(present) // 2]
                trail.linked = trail.linked | frozenset(present)
            case SetBootEnv(pv_rev=pv_rev, pv_try=pv_try):
                updates = {
                    k: v for k, v in (("pv_rev", pv_rev), ("pv_try", pv_try)) if v is not None
                }
                st.env.write(updates, torn=torn)
            case WriteDoneMarker(rev=rev):
                st.trails.setdefault(rev, Trail()).done = True
            case DeleteRevision(rev=rev):
                st.trails.pop(rev, None)
            case RunGc(keep_revisions=keep, keep_objects=keep_objects):
                plan = gclib.plan_gc(
                    {r: t.linked for r, t in st.trails.items()},
                    st.objects.keys(),
                    keep,
                    keep_objects,
                )
                before = sum(st.objects.values())
                for rev in plan.revisions:
                    st.trails.pop(rev, None)
                if torn:
                    return
                for sha in plan.objects:
                    st.objects.pop(sha, None)
                self._queue.append(
                    GcDone(
                        before - sum(st.objects.values()),
                        st.stats(),
                        frozenset(plan.objects),
                        frozenset(plan.revisions),
                    )
                )
            case ReportProgress(rev=rev, record=record):
                if not self._hub_down(self.updater):
                    for step in self.hub:
                        if step.rev == rev:
                            step.progress = record
            case FetchMetadata(rev=rev, shas=shas):
                sizes = {s: self.behaviour.object_sizes.get(s, 1000) for s in shas}
                self._queue.append(MetadataReceived(rev, sizes, st.stats()))
            case FetchObject(sha=sha, size=size):
                if sha in self.behaviour.corrupt_objects:
                    self._queue.append(ObjectFetched(sha, ok=False, hash_mismatch=True))
                else:
                    st.objects[sha] = size or self.behaviour.object_sizes.get(sha, 1000)
                    self._queue.append(ObjectFetched(sha))
            case StartContainers(rev=rev, names=names):
                self._start(rev, names)
            case StopContainers(names=names):
                self._queue.append(ContainersStopped(names))
            case SwitchRevision(rev=rev):
                self.running = rev
            case ArmTimer(name=name, delay=delay):
                generation = self._timers.get(name, 0) + 1
                self._timers[name] = generation
                self._schedule(delay, _Armed(name, generation))
            case CancelTimer(name=name):
                self._timers.pop(name, None)
            case CtrlReply():
                self.replies.append(command)
            case Reboot():
                pass

    def _start(self, rev: str, names: tuple[str, ...]) -> None:
        state = self.updater.running_state if self.updater else None
        b = self.behaviour
        for name in names:
            spec = state.container(name) if state is not None else None
            if spec is None:
                continue
            self._queue.append(ContainerMounted(name))
            if spec.status_goal is StatusGoal.MOUNTED:
                continue
            self._queue.append(ContainerStarted(name))
            if (rev, name) in b.crashes:
                self._schedule(1.0, ContainerExited(name, uptime=1.0, code=1))
            elif spec.status_goal is StatusGoal.READY and (rev, name) not in b.never_ready:
                self._schedule(1.0, ContainerReady(name))


@dataclass(frozen=True, slots=True)
class _Armed(Event):
    name: str
    generation: int


@dataclass(frozen=True, slots=True)
class HubTick(Event):
    """The Hub client's periodic request while an update is being tested."""


def describe(command: Command) -> str:
    """A short readable name for a durable step."""
    match command:
        case PersistProgress(rev=rev, record=r):
            return f"progress {rev} {r.status.value} '{r.status_msg}'"
        case SetBootEnv(pv_rev=pv_rev, pv_try=pv_try, redundant=redundant):
            parts = [
                f"{k}={v or '(unset)'}"
                for k, v in (("pv_rev", pv_rev), ("pv_try", pv_try))
                if v is not None
            ]
            return "env " + " ".join(parts) + (" (redundant)" if redundant else " (in place)")
        case WriteTrail(rev=rev):
            return f"trail {rev} .pvr/json"
        case LinkObjects(rev=rev):
            return f"link objects into trail {rev}"
        case WriteDoneMarker(rev=rev):
            return f"done marker {rev}"
        case DeleteRevision(rev=rev):
            return f"delete revision {rev}"
        case RunGc(reason=reason):
            return f"gc ({reason})"
    return type(command).__name__
