"""The Updater: one device's update state machine (pantavisor.md §3, §4), table-driven like h11.

Phases (what the device is doing; the progress record is what it says about it):

    IDLE           running a revision, no update in progress
    QUEUED         remote step accepted, object metadata requested
    GC_FOR_SPACE   the space check failed once; GC runs before the second check
    DOWNLOADING    fetching missing objects
    TRANSITIONING  non-reboot transition: affected containers being stopped
    INPROGRESS     the new revision runs; waiting for the Hub (remote) and the status goals
    TESTING        goals met; commit delay and stable_timeout windows running
    REBOOTING      a Reboot was issued; this Updater is finished

TABLE maps (phase, event key) to a handler; the handler returns the next phase. The event key is
the event class name, `timer:<kind>` for TimerFired, or a verdict of the container sub-machine
(`container:failed`, `goals:achieved`, `goals:timedout`, `containers:stable`).

Rules that do not fit the table, kept here:
  R1. REBOOTING handles nothing.
  R2. Container events and container timers (goal/recovery/stable/backoff) go to the container
      sub-machine in every phase; its verdict is then dispatched through TABLE.
  R3. pv-ctrl events (CtrlCommand, ObjectPut, LocalStepStarted, LocalStepUploaded), RUN_GC and
      WaitTick are handled in every phase: their rules depend on whether an update is active, not
      on the phase.
  R4. GcDone outside GC_FOR_SPACE only updates what the engine knows of the object pool.
  R5. Any other (phase, event) pair is ignored: e.g. a late ObjectFetched after WONTGO.
  R6. Boot (`Updater.boot`) is not an event: it decides normal / try / rolled-back boot (§3.7),
      the factory revision (§3.8) and, in the hardened ordering, repairs a commit cut short.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import TYPE_CHECKING, cast

from shared.diff import StateDiff, Transition, diff_states
from shared.engine import ctrl, gc
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
    StopContainers,
    SwitchRevision,
    WriteDoneMarker,
    WriteTrail,
)
from shared.engine.config import DEFAULT_CONFIG, Config, Ordering
from shared.engine.containers import Containers, CStatus, Verdict
from shared.engine.ctrl import CtrlDecision, Op
from shared.engine.events import (
    EVENT_TYPES,
    TIMER_KINDS,
    ContainerExited,
    ContainerMounted,
    ContainerReady,
    ContainersStopped,
    ContainerStarted,
    CtrlCommand,
    DiskView,
    Event,
    GcDone,
    HubReached,
    HubRequestFailed,
    LocalStepStarted,
    LocalStepUploaded,
    MetadataFailed,
    MetadataReceived,
    ObjectFetched,
    ObjectPut,
    PendingSteps,
    StorageStats,
    TimerFired,
    WaitTick,
    timer_key,
)
from shared.engine.progress import Msg, Progress, Status
from shared.errors import PvError

if TYPE_CHECKING:
    from shared.state import State

LOCAL_PREFIX = "locals/"
# pantahub_proto.c: the failed-request count starts here (offline until the first answer)
_UNRESPONSIVE_REQUESTS_MAX = 256
_NO_REVS: frozenset[str] = frozenset()


class Phase(StrEnum):
    IDLE = "IDLE"
    QUEUED = "QUEUED"
    GC_FOR_SPACE = "GC_FOR_SPACE"
    DOWNLOADING = "DOWNLOADING"
    TRANSITIONING = "TRANSITIONING"
    INPROGRESS = "INPROGRESS"
    TESTING = "TESTING"
    REBOOTING = "REBOOTING"


UPDATE_PHASES = frozenset(
    {
        Phase.QUEUED,
        Phase.GC_FOR_SPACE,
        Phase.DOWNLOADING,
        Phase.TRANSITIONING,
        Phase.INPROGRESS,
        Phase.TESTING,
    }
)
# Phases in which the new revision runs: a failure there is an update failure (rollback).
TRYING_PHASES = frozenset({Phase.TRANSITIONING, Phase.INPROGRESS, Phase.TESTING})


@dataclass(frozen=True, slots=True)
class Rule:
    handler: str  # Updater method name
    targets: tuple[Phase, ...]  # phases the handler can return (for the diagram and tests)
    label: str = ""


P = Phase
_INSTALL = (P.TRANSITIONING, P.INPROGRESS, P.REBOOTING, P.IDLE)
_FAIL = (P.REBOOTING,)

TABLE: Mapping[tuple[Phase, str], Rule] = {
    # remote intake (§3.3)
    (P.IDLE, PendingSteps.key): Rule(
        "_on_pending_steps", (P.IDLE, P.QUEUED, *_INSTALL), "first pending step"
    ),
    (P.QUEUED, MetadataReceived.key): Rule(
        "_on_metadata", (P.DOWNLOADING, P.GC_FOR_SPACE, P.IDLE), "space check"
    ),
    (P.QUEUED, MetadataFailed.key): Rule("_on_metadata_failed", (P.QUEUED, P.IDLE), "retry / WONTGO"),
    (P.GC_FOR_SPACE, GcDone.key): Rule("_on_space_gc_done", (P.DOWNLOADING, P.IDLE), "re-check"),
    (P.DOWNLOADING, ObjectFetched.key): Rule(
        "_on_object_fetched", (P.DOWNLOADING, P.IDLE, *_INSTALL), "object in pool / retry"
    ),
    # non-reboot transition (§3.6)
    (P.TRANSITIONING, ContainersStopped.key): Rule("_on_stopped", (P.INPROGRESS,), "merge, restart"),
    (P.TRANSITIONING, Verdict.FAILED): Rule("_on_container_failed", _FAIL, "ERROR, roll back"),
    # testing (§3.5)
    (P.INPROGRESS, HubReached.key): Rule(
        "_on_hub_reached", (P.INPROGRESS, P.TESTING, *_FAIL), "hub ok"
    ),
    (P.INPROGRESS, timer_key("network")): Rule(
        "_on_network_timeout", (P.INPROGRESS, *_FAIL), "ERROR Hub not reachable if offline"
    ),
    (P.INPROGRESS, Verdict.ACHIEVED): Rule(
        "_on_goals", (P.INPROGRESS, P.TESTING, *_FAIL), "goals met"
    ),
    (P.INPROGRESS, Verdict.TIMEDOUT): Rule("_on_goals", (P.INPROGRESS, *_FAIL), "goal timeout"),
    (P.INPROGRESS, Verdict.FAILED): Rule("_on_container_failed", _FAIL, "ERROR, roll back"),
    (P.INPROGRESS, HubRequestFailed.key): Rule(
        "_on_hub_failed", (P.INPROGRESS, *_FAIL), "offline after the rollback timer"
    ),
    (P.TESTING, HubRequestFailed.key): Rule("_on_hub_failed", (P.TESTING, *_FAIL), "hub unstable"),
    (P.TESTING, timer_key("commit")): Rule("_on_commit_timer", (P.TESTING, P.IDLE), "commit"),
    (P.TESTING, Verdict.STABLE): Rule("_on_stable", (P.TESTING, P.IDLE), "commit if due"),
    (P.TESTING, Verdict.FAILED): Rule("_on_container_failed", _FAIL, "ERROR, roll back"),
    # steady state (§4.3): a container that exits reboots the device
    (P.IDLE, Verdict.FAILED): Rule("_on_steady_failure", (P.REBOOTING,), "reboot"),
    (P.QUEUED, Verdict.FAILED): Rule("_on_steady_failure", (P.REBOOTING,), "reboot"),
    (P.GC_FOR_SPACE, Verdict.FAILED): Rule("_on_steady_failure", (P.REBOOTING,), "reboot"),
    (P.DOWNLOADING, Verdict.FAILED): Rule("_on_steady_failure", (P.REBOOTING,), "reboot"),
}

# Transitions made by the rules beside the table (R3), listed for the generated diagram.
BESIDE_EDGES: tuple[tuple[Phase, Phase, str], ...] = (
    (P.IDLE, P.TRANSITIONING, "CtrlCommand LOCAL_RUN"),
    (P.IDLE, P.INPROGRESS, "CtrlCommand LOCAL_RUN"),
    (P.IDLE, P.REBOOTING, "CtrlCommand LOCAL_RUN_COMMIT / REBOOT_DEVICE"),
)

_CONTAINER_TIMERS = frozenset(map(timer_key, ("goal", "recovery", "stable", "backoff")))


class _Update:
    """The update object (§3.1): one at a time."""

    __slots__ = (
        "rev",
        "state",
        "remote",
        "retries",
        "tried",
        "transition",
        "todo",
        "inflight",
        "sizes",
        "gc_tried",
        "hub_ok",
        "hub_failures",
        "hub_reported",
        "hub_any_failed",
        "network_expired",
        "list_rounds",
        "round_failed",
        "commit_due",
        "waiting_stable",
        "space",
    )

    def __init__(self, rev: str, state: State | None, retries: int, *, tried: bool = False):
        self.rev = rev
        self.state = state
        self.remote = not rev.startswith(LOCAL_PREFIX)
        self.retries = retries
        self.tried = tried  # the device booted into this revision via the try latch
        self.transition = Transition.REBOOT
        self.todo: list[str] = []
        self.inflight: set[str] = set()
        self.sizes: Mapping[str, int] = {}
        self.gc_tried = False
        # The Hub client as pantahub_proto.c keeps it: hub_ok is "online and reporting"
        # (pv_pantahub_is_reporting), hub_failures its consecutive failed requests,
        # hub_reported whether it entered the report state (which resets hub_any_failed, the
        # session's "any failed request" flag); network_expired: the remote rollback timer ran out.
        self.hub_ok = not self.remote  # local updates skip the Hub checks (§3.4.6)
        self.hub_failures = 0
        self.hub_reported = False
        self.hub_any_failed = False
        self.network_expired = False
        # _enroll_object_list: listing rounds of the current list (metadata, then download) and
        # the objects of the current download round that failed
        self.list_rounds = 0
        self.round_failed: list[str] = []
        self.commit_due = False
        self.waiting_stable = False
        # the storage figures of the space check that ran GC (GC_FOR_SPACE only): the second check
        # falls back to them when GcDone brings none
        self.space: StorageStats | None = None

    def copy(self) -> _Update:
        new = _Update.__new__(_Update)
        for name in _Update.__slots__:
            setattr(new, name, getattr(self, name))
        new.todo = list(self.todo)
        new.inflight = set(self.inflight)
        new.round_failed = list(self.round_failed)
        return new

    def fingerprint(self) -> tuple:
        """Every field, as a hashable value (see Updater.fingerprint)."""
        return (
            self.rev,
            self.state,
            self.remote,
            self.retries,
            self.tried,
            self.transition,
            tuple(self.todo),  # an ordered queue: fetched from its end
            frozenset(self.inflight),
            frozenset(self.sizes.items()),
            self.gc_tried,
            self.hub_ok,
            self.hub_failures,
            self.hub_reported,
            self.hub_any_failed,
            self.network_expired,
            self.list_rounds,
            tuple(self.round_failed),
            self.commit_due,
            self.waiting_stable,
            self.space,
        )


class Updater:
    """One device's update logic. Build it with `Updater.boot`, then feed events to `handle`."""

    __slots__ = (
        "config",
        "phase",
        "booted_rev",
        "running_rev",
        "running_state",
        "pv_rev",
        "pv_try",
        "_trails",
        "_progress",
        "_gone",
        "objects",
        "update",
        "containers",
        "local_mode",
        "_out",
    )

    def __init__(self, disk: DiskView, config: Config = DEFAULT_CONFIG):
        self.config = config
        self.phase = Phase.IDLE
        self.booted_rev = disk.booted_rev
        self.running_rev = disk.booted_rev
        self.running_state: State | None = None
        self.pv_rev = disk.pv_rev
        self.pv_try = disk.pv_try
        self._trails = disk.trails
        self._progress: dict[str, Progress] = {}  # records written since boot
        # revisions deleted since boot; an empty frozenset until the first (most engines never
        # delete one, and an empty set costs 216 bytes a device), see _forget
        self._gone: frozenset[str] | set[str] = _NO_REVS
        self.objects: frozenset[str] = disk.objects
        self.update: _Update | None = None
        self.containers: Containers | None = None
        self.local_mode = disk.booted_rev.startswith(LOCAL_PREFIX)
        self._out: list[Command] = []

    # ================================================================== public API

    @classmethod
    def boot(cls, disk: DiskView, config: Config = DEFAULT_CONFIG) -> tuple[Updater, list[Command]]:
        """A boot: decide what the booted revision means (§3.7, §3.8) and start it."""
        self = cls(disk, config)
        self._boot()
        return self, self._take()

    def handle(self, event: Event) -> list[Command]:
        """Feed one event; returns the commands to execute, durable ones in order."""
        phase = self.phase
        if phase is Phase.REBOOTING:  # R1
            return []
        key = event.key
        rule = TABLE.get((phase, key))
        if rule is not None:
            self.phase = getattr(self, rule.handler)(event)
        elif key in _CONTAINER_EVENT_KEYS or key in _CONTAINER_TIMERS:  # R2
            self._container_event(event)
        elif key in _ANY_PHASE:  # R3, R4
            getattr(self, _ANY_PHASE[key])(event)
        return self._take()  # R5: anything else changes nothing

    def copy(self) -> Updater:
        """An independent copy: the same future for the same events. Immutable parts (config,
        states, progress records, object sets, the disk's trail view) are shared, not copied."""
        new = Updater.__new__(Updater)
        new.config = self.config
        new.phase = self.phase
        new.booted_rev = self.booted_rev
        new.running_rev = self.running_rev
        new.running_state = self.running_state
        new.pv_rev = self.pv_rev
        new.pv_try = self.pv_try
        new._trails = self._trails
        new._progress = dict(self._progress)
        new._gone = set(self._gone) if self._gone else _NO_REVS
        new.objects = self.objects
        new.update = self.update.copy() if self.update is not None else None
        new.containers = self.containers.copy() if self.containers is not None else None
        new.local_mode = self.local_mode
        new._out = list(self._out)
        return new

    def fingerprint(self) -> tuple:
        """Everything that decides this engine's future, as one hashable value: two engines with
        equal fingerprints answer every sequence of events with the same commands. A simulator may
        therefore let devices whose engines are equal share one (pvsim's EngineMemo). The disk's
        trail view is read as it was at boot (backends pass a snapshot)."""
        assert not self._out, "fingerprint between handle calls only"
        u, c = self.update, self.containers
        return (
            self.config,
            self.phase,
            self.booted_rev,
            self.running_rev,
            self.running_state,
            self.pv_rev,
            self.pv_try,
            frozenset(self._trails.items()),
            frozenset(self._progress.items()),
            frozenset(self._gone),
            self.objects,
            u.fingerprint() if u is not None else None,
            c.fingerprint() if c is not None else None,
            self.local_mode,
        )

    def memo_key(self, event: Event) -> object | None:
        """A hashable value that decides this engine's answer to `event` as fully as the event
        does, or None when only the event itself does and it should not be remembered.

        It exists for a simulator sharing engines between devices (pvsim.engine_memo): metadata
        answers carry each device's storage figures, but when the missing objects fit (the usual
        case) the figures decide nothing more (_on_metadata keeps none of them), so devices whose
        objects fit get the same answer."""
        if type(event) is not MetadataReceived:
            return None
        u = self.update
        if self.phase is not Phase.QUEUED or u is None or event.rev != u.rev:
            return event.rev  # ignored (R5 or the rev check): no field decides anything
        required, available = self._space(u, event.sizes, event.storage)
        if required > available:
            return None  # GC or WONTGO: the figures matter
        return (event.rev, frozenset(event.sizes.items()))

    @property
    def update_active(self) -> bool:
        return self.phase in UPDATE_PHASES

    def ctrl_decision(
        self, op: str, *, command_queued: bool = False, payload: str | None = None
    ) -> CtrlDecision:
        """pv-ctrl's answer to `POST /commands {"op": op, "payload": payload}` now, from this
        engine's state: the one place that gives `shared.engine.ctrl.ctrl_decision` its inputs.
        A backend that answers a second command while one is queued asks here with
        `command_queued`."""
        return ctrl.ctrl_decision(
            op,
            update_active=self.update_active,
            command_queued=command_queued,
            control_remote=self.config.control_remote,
            local_mode=self.local_mode,
            debug_shell=self.config.debug_shell,
            payload=payload,
        )

    def signal_decision(self, container: str) -> CtrlDecision:
        """pv-ctrl's answer to a container's ready signal (`shared.engine.ctrl.signal_decision`):
        the container must run in this revision with status goal READY. A backend asks before it
        feeds ContainerReady."""
        rec = self.containers.recs.get(container) if self.containers is not None else None
        return ctrl.signal_decision(container, rec.spec.status_goal if rec is not None else None)

    @property
    def update_rev(self) -> str | None:
        """The revision of the update in progress, if any."""
        return self.update.rev if self.update is not None else None

    @property
    def finished(self) -> bool:
        """A Reboot was issued: build a new Updater from the disk after the boot."""
        return self.phase is Phase.REBOOTING

    @property
    def remote_enabled(self) -> bool:
        """The Hub client consumes steps (local mode turns it off, §3.4.5)."""
        cfg = self.config
        return cfg.control_remote and (not self.local_mode or cfg.control_remote_always)

    @property
    def accepts_remote_steps(self) -> bool:
        """Poll the Hub and send PendingSteps now (pending steps are ignored otherwise)."""
        return self.phase is Phase.IDLE and self.remote_enabled

    @property
    def watches_hub(self) -> bool:
        """Hub request outcomes matter now (remote update running INPROGRESS or TESTING)."""
        u = self.update
        return u is not None and u.remote and self.phase in (Phase.INPROGRESS, Phase.TESTING)

    def progress_of(self, rev: str) -> Progress | None:
        """The progress record of `rev` as it is on disk (as far as this engine knows)."""
        record = self._progress.get(rev)
        if record is not None or rev in self._gone:
            return record
        trail = self._trails.get(rev)
        return trail.progress if trail is not None else None

    # ================================================================== boot (R6)

    def _boot(self) -> None:
        booted, pv_try = self.booted_rev, self.pv_try
        trail = self._trails.get(booted)
        state = trail.state if trail is not None else None
        if pv_try and booted == pv_try:
            self._try_boot(booted, state)
            return
        if pv_try:
            self._rolled_back_boot(pv_try)
        elif self.config.ordering is Ordering.HARDENED and booted == self.pv_rev:
            self._repair_cut_commit(booted)
        if booted == gc.FACTORY_REV and not pv_try:
            self._factory_boot(booted, state)
            return
        self._run_booted(booted, state)

    def _run_booted(self, rev: str, state: State | None) -> None:
        """Run the booted revision outside an update: start it, or reboot when it cannot load."""
        if not self._load_running(rev, state):
            self._out.append(Reboot("bad revision: " + rev))
            self.phase = Phase.REBOOTING
            return
        self._start_containers()

    def _factory_boot(self, rev: str, state: State | None) -> None:
        """`pv_update_resume` then `pv_update_set_factory` (§3.8): a factory revision whose record
        is neither DONE nor failed says INPROGRESS "Trying new revision", is loaded, and is then
        DONE "Factory revision" with its done marker. A failed record stays as it is."""
        record = self.progress_of(rev)
        if record is not None and record.is_failed:
            self._fail_update_env()
        elif record is None or record.status is not Status.DONE:
            self.update = _Update(rev, state, record.retries if record is not None else 0)
            self._set_progress(Status.INPROGRESS, Msg.TRYING)
            if not self._load_running(rev, state):
                return  # _load_running failed the update
            self._set_progress(Status.DONE, Msg.FACTORY)
            self._out.append(WriteDoneMarker(rev))
            self.update = None
            self._start_containers()
            return
        self._run_booted(rev, state)

    def _try_boot(self, rev: str, state: State | None) -> None:
        """pv_try == booted pv_rev: the latch gave this revision its try (§3.7)."""
        record = self.progress_of(rev)
        retries = record.retries if record is not None else 0
        if record is not None and record.is_failed:
            self._out.append(Reboot("rollback: " + rev + " already failed"))
            self.phase = Phase.REBOOTING
            return
        if record is not None and record.status is Status.DONE:
            # pv_update_resume: DONE is finished, nothing is tried again. Faithful: the revision
            # runs uncommitted (pv_rev old, pv_try set). Hardened: DONE was written after the
            # env, so the commit is finished here (docs/orderings.md).
            if self.config.ordering is Ordering.HARDENED:
                self._set_env(pv_rev=rev, pv_try="")
            self._run_booted(rev, state)
            return
        self.update = _Update(rev, state, retries, tried=True)
        if not self._load_running(rev, state):
            return  # _load_running failed the update
        self._set_progress(Status.INPROGRESS, Msg.TRYING)
        self.phase = Phase.INPROGRESS
        self._arm_network_timer()
        self._start_containers()
        self.phase = self._check_goals(self.update)  # a revision without containers

    def _rolled_back_boot(self, tried: str) -> None:
        """pv_try set but another revision booted: the try of `tried` failed (§3.7)."""
        record = self.progress_of(tried)
        hardened = self.config.ordering is Ordering.HARDENED
        if record is not None and record.is_failed:
            pass  # pv_update_resume finishes without a report: the next poll re-reports it
        elif record is not None and record.status is Status.DONE and not hardened:
            # Faithful: DONE means "nothing to do" and pv_try stays set (the §3.9 window).
            return
        else:
            retries = record.retries if record is not None else 0
            self._persist(tried, Progress.make(Status.ERROR, Msg.UNEXPECTED_ROLLBACK, retries))
        self._set_env(pv_try="")

    def _repair_cut_commit(self, rev: str) -> None:
        """Hardened: pv_rev was committed but the DONE record not yet written; finish it."""
        record = self.progress_of(rev)
        if record is not None and not record.is_final and record.status is not Status.NEW:
            self._persist(rev, Progress.make(Status.DONE, Msg.DONE, record.retries))
            self._out.append(WriteDoneMarker(rev))

    def _load_running(self, rev: str, state: State | None) -> bool:
        """Load and validate the booted revision's state (§3.5 RUN steps 2-3)."""
        msg = None
        if state is None:
            msg = Msg.NOT_FOUND
        else:
            msg = self._signature_problem(state)
            checksum = self.config.boot_checksum
            if msg is None and checksum and not _shas(state) <= self.objects:
                msg = Msg.OBJECT_VALIDATION
        if msg is not None:
            if self.update is not None:
                self.phase = self._fail(msg)
            return False
        assert state is not None  # msg is NOT_FOUND whenever state is None
        self.running_state = state
        self.containers = Containers(rev, state, self.config.goals_timeout)
        return True

    def _signature_problem(self, state: State) -> str | None:
        """The configured pure signature check (§1.8), unless PV_SECUREBOOT_MODE is disabled."""
        verify = self.config.verify_signature
        if verify is None or self.config.secureboot_mode == "disabled":
            return None
        return verify(state) or None

    # ================================================================== remote intake (§3.3)

    def _on_pending_steps(self, event: PendingSteps) -> Phase:
        """`pv_update_start_install`: QUEUED with the count as read, then one more try counted."""
        if not event.steps or not self.remote_enabled:
            return Phase.IDLE
        step = event.steps[0]
        rev = step.rev
        if step.state is None and step.raw is None:
            return Phase.IDLE  # a step without a state: C returns before creating an update
        on_disk = self.progress_of(rev)
        if on_disk is not None and on_disk.is_final:
            # re-report what the Hub missed (PR #481); C saves the record again on the way
            self._persist(rev, on_disk)
            if on_disk.is_failed:
                self._fail_update_env()
            return Phase.IDLE
        # the Hub's copy is only read when the disk has none, and its status is not checked
        record = on_disk or step.hub_progress
        retries = record.retries if record is not None else 0
        self.update = u = _Update(rev, None, retries)
        limit = self.config.revision_retries
        self._set_progress(Status.QUEUED, Msg.retried(retries, limit))
        u.retries += 1
        if u.retries >= limit:
            return self._wontgo(Msg.MAX_RETRIES)
        if step.signature_error:
            return self._wontgo(step.signature_error)
        state = step.state
        if state is None:
            state = _parse(step.raw, rev)
            if state is None:
                return self._wontgo(Msg.BAD_FORMAT)
        problem = self._signature_problem(state)
        if problem:
            return self._wontgo(problem)
        u.state = state
        self._out.append(WriteTrail(rev, state))
        missing = _shas(state) - self.objects
        if not missing:
            return self._install(u)
        u.todo = sorted(missing)
        return self._list_metadata(u)

    def _enroll(self, u: _Update) -> bool:
        """`_enroll_object_list`: a listing round; every round after a list's first counts as a
        retry, and more retries than PV_REVISION_RETRIES (`>`) is the end. False: give up."""
        u.list_rounds += 1
        if u.list_rounds > 1:
            u.retries += 1
            if u.retries > self.config.revision_retries:
                return False
        return True

    def _list_metadata(self, u: _Update) -> Phase:
        """`pv_update_get_unrecorded_objects`: one metadata round for every unrecorded object."""
        if not self._enroll(u):
            return self._wontgo(Msg.MAX_DOWNLOAD_RETRIES)
        limit = self.config.revision_retries
        self._set_progress(Status.QUEUED, Msg.metadata_retry(u.retries, limit))
        self._out.append(FetchMetadata(u.rev, frozenset(u.todo)))
        return Phase.QUEUED

    def _on_metadata(self, event: MetadataReceived) -> Phase:
        u = self.update
        if u is None or event.rev != u.rev:
            return self.phase
        u.sizes = event.sizes
        return self._space_check(u, event.storage, allow_gc=True)

    def _on_metadata_failed(self, event: Event) -> Phase:
        """The round's answers are in and some failed: the list is built again (a new round)."""
        u = self.update
        if u is None:
            return self.phase
        return self._list_metadata(u)

    def _on_space_gc_done(self, event: GcDone) -> Phase:
        self._gc_done(event)
        u = self.update
        assert u is not None
        storage = event.storage or u.space
        if storage is None:
            return self._wontgo(Msg.INTERNAL)
        return self._space_check(u, storage, allow_gc=False)

    def _space_check(self, u: _Update, storage: StorageStats, *, allow_gc: bool) -> Phase:
        """§2.3 trigger 1: missing objects must fit in real free space; GC once, then WONTGO."""
        required, available = self._space(u, u.sizes, storage)
        if required > available:
            if allow_gc and not u.gc_tried:
                u.gc_tried = True
                u.space = storage
                self._out.append(self._gc_command("space"))
                return Phase.GC_FOR_SPACE
            return self._wontgo(Msg.space_required(required, available))
        # _finish_object_metadata_setting: a new list (rounds from 0), DOWNLOADING; then
        # pv_update_get_unavailable_objects enrolls its first round and says DOWNLOADING again
        u.list_rounds = 0
        limit = self.config.revision_retries
        self._set_progress(Status.DOWNLOADING, Msg.download_retry(u.retries, limit))
        u.todo = [sha for sha in u.todo if sha not in self.objects]
        return self._download_round(u)

    def _download_round(self, u: _Update) -> Phase:
        """`pv_update_get_unavailable_objects`: a download round for every object not installed."""
        if not u.todo:
            return self._install(u)
        if not self._enroll(u):
            return self._wontgo(Msg.MAX_DOWNLOAD_RETRIES)
        limit = self.config.revision_retries
        self._set_progress(Status.DOWNLOADING, Msg.download_retry(u.retries, limit))
        return self._fetch_more(u)

    def _space(self, u: _Update, sizes: Mapping[str, int], storage: StorageStats) -> tuple[int, int]:
        """(bytes the missing objects need, real free bytes)."""
        required = sum(sizes.get(sha, 0) for sha in u.todo if sha not in self.objects)
        # pv_storage_new: real free space is 0, not negative, once the reserve is eaten into
        return required, max(storage.real_free(self.config.gc_reserved), 0)

    def _fetch_more(self, u: _Update) -> Phase:
        while u.todo and len(u.inflight) < self.config.transfer_max_count:
            sha = u.todo.pop()
            u.inflight.add(sha)
            self._out.append(FetchObject(u.rev, sha, u.sizes.get(sha, 0)))
        if u.todo or u.inflight:
            return Phase.DOWNLOADING
        if not u.round_failed:
            return self._install(u)
        # the round is over and some objects failed: the list is built again from them
        u.todo, u.round_failed = sorted(u.round_failed), []
        return self._download_round(u)

    def _on_object_fetched(self, event: ObjectFetched) -> Phase:
        u = self.update
        if u is None or event.sha not in u.inflight:
            return self.phase
        u.inflight.discard(event.sha)
        if event.ok:
            self.objects = _with_object(self.objects, event.sha)
        else:
            u.round_failed.append(event.sha)
        return self._fetch_more(u)

    # ================================================================== install (§3.3.5, §3.6)

    def _install(self, u: _Update, *, force_reboot: bool = False) -> Phase:
        state = u.state
        assert state is not None and self.running_state is not None
        if not _shas(state) <= self.objects:
            # pv_state_prepare_run cannot link a missing object (a local run whose objects were
            # never uploaded or were collected): ERROR before pv_try is ever written.
            self._set_progress(Status.ERROR, Msg.INTERNAL)
            self._fail_update_env()
            self.update = None
            return Phase.IDLE
        self._out.append(LinkObjects(u.rev, state))
        self._set_env(pv_try=u.rev)
        diff = _diff(self.running_state, state)
        u.transition = Transition.REBOOT if force_reboot else diff.transition
        if u.transition is Transition.REBOOT:
            # LOCAL_RUN_COMMIT (_pv_command): the record follows pv_run_update's choice; the
            # reboot is issued on top of it
            reboot = diff.transition is Transition.REBOOT
            self._set_progress(Status.INPROGRESS, Msg.REBOOTING if reboot else Msg.TRANSITIONING)
            self._out.append(Reboot("update " + u.rev))
            return Phase.REBOOTING
        self._set_progress(Status.INPROGRESS, Msg.TRANSITIONING)
        assert self.containers is not None
        affected = frozenset(diff.containers)
        to_stop = tuple(n for n in self.containers.running() if n in affected)
        if to_stop:
            self.containers.mark_stopping(to_stop)
            self._out.append(StopContainers(to_stop, self.config.stop_grace))
            return Phase.TRANSITIONING
        return self._switch(u, affected)

    def _on_stopped(self, event: Event) -> Phase:
        u = self.update
        assert u is not None and u.state is not None and self.running_state is not None
        return self._switch(u, frozenset(_diff(self.running_state, u.state).containers))

    def _switch(self, u: _Update, affected: frozenset[str]) -> Phase:
        """Merge the pending state into the running one and re-enter RUN (§3.6)."""
        assert self.containers is not None and u.state is not None
        # _pv_run starts with pv_update_resume, which finds the update of a non-reboot
        # transition still there and says INPROGRESS "Trying new revision" again
        self._set_progress(Status.INPROGRESS, Msg.TRYING)
        self.containers = self.containers.merged(
            u.rev, u.state, affected, self.config.goals_timeout
        )
        self.running_rev, self.running_state = u.rev, u.state
        self.local_mode = u.rev.startswith(LOCAL_PREFIX)
        self._out.append(SwitchRevision(u.rev))
        self._arm_network_timer()
        self.phase = Phase.INPROGRESS
        self._start_containers()
        # Nothing may be left to start (untouched containers already at their goals).
        return self._check_goals(u)

    # ================================================================== testing (§3.5)

    def _arm_network_timer(self) -> None:
        u = self.update
        if u is not None and u.remote:
            self._out.append(ArmTimer("network", self.config.network_timeout))

    def _on_hub_reached(self, event: Event) -> Phase:
        """`_on_request_responsive`: online again, failures reset. The first answer of the update
        enters the report state, which clears the "any failed request" flag (`_run_state_report`).
        The remote rollback timer runs on: it is read again whenever the client goes offline."""
        u = self.update
        assert u is not None
        u.hub_ok = True
        u.hub_failures = 0
        if not u.hub_reported:
            u.hub_reported = True
            u.hub_any_failed = False
        return self._check_goals(u)

    def _on_network_timeout(self, event: Event) -> Phase:
        u = self.update
        if u is None:
            return self.phase
        u.network_expired = True
        if u.hub_ok:
            return self.phase
        return self._fail(Msg.HUB_NOT_REACHABLE)

    def _on_goals(self, event: Event) -> Phase:
        u = self.update
        assert u is not None
        return self._check_goals(u)

    def _check_goals(self, u: _Update) -> Phase:
        """Goal checking does not run until the Hub has answered (remote, §3.5 WAIT step 2)."""
        c = self.containers
        if not u.hub_ok or c is None:
            return Phase.INPROGRESS
        if c.any_timedout():
            return self._fail(Msg.GOAL_NOT_REACHED)
        if not c.all_achieved():
            return Phase.INPROGRESS
        msg = Msg.TESTING_NON_REBOOT if not u.tried else Msg.TESTING_REBOOT
        self._set_progress(Status.TESTING, msg)
        if u.remote and u.hub_any_failed:
            # pv_wait_network's next pass: TESTING with a failed request since the report state
            return self._fail(Msg.HUB_NOT_STABLE)
        self._out.append(ArmTimer("commit", self.config.commit_delay))
        return Phase.TESTING

    def _on_hub_failed(self, event: Event) -> Phase:
        """`_on_request_unresponsive` and `pv_wait_network`: every failure sets the session's
        flag, which fails a TESTING update whatever the threshold; more consecutive failures than
        PH_ONLINE_REQUEST_THRESHOLD take the client offline, which in INPROGRESS fails the update
        once the remote rollback timer has run out (and stops goal checking until then)."""
        u = self.update
        assert u is not None
        if not u.remote:
            return self.phase
        u.hub_any_failed = True
        u.hub_failures = min(u.hub_failures + 1, _UNRESPONSIVE_REQUESTS_MAX)
        if u.hub_failures > self.config.online_request_threshold:
            u.hub_ok = False
        if self.phase is Phase.TESTING:
            return self._fail(Msg.HUB_NOT_STABLE)
        if not u.hub_ok and u.network_expired:
            return self._fail(Msg.HUB_NOT_REACHABLE)
        return self.phase

    def _on_commit_timer(self, event: Event) -> Phase:
        u = self.update
        assert u is not None and self.containers is not None
        u.commit_due = True
        if not self.containers.all_stable():
            if not u.waiting_stable:
                u.waiting_stable = True
                self._set_progress(Status.TESTING, Msg.TESTING_STABLE)
            return Phase.TESTING
        return self._commit(u)

    def _on_stable(self, event: Event) -> Phase:
        u = self.update
        assert u is not None
        return self._commit(u) if u.commit_due else Phase.TESTING

    def _commit(self, u: _Update) -> Phase:
        """`pv_update_set_final` (§3.5); the order of the writes is the ordering's business."""
        if not u.tried:  # non-reboot: UPDATED, the old revision stays the rollback point
            self._set_progress(Status.UPDATED, Msg.UPDATED)
            return self._end_update()
        done = Progress.make(Status.DONE, Msg.DONE, u.retries)
        if self.config.ordering is Ordering.HARDENED:
            self._set_env(pv_rev=u.rev, pv_try="")
            self._persist(u.rev, done)
        else:
            # pv_update_set_final, pv_bootloader_pre_commit_update: DONE, then two env writes
            # (set pv_rev, unset pv_try), then the done marker
            self._persist(u.rev, done)
            self._set_env(pv_rev=u.rev)
            self._set_env(pv_try="")
        self._out.append(WriteDoneMarker(u.rev))
        return self._end_update()

    def _end_update(self) -> Phase:
        self._out.append(CancelTimer("network"))
        self.update = None
        return Phase.IDLE

    # ================================================================== failures

    def _fail(self, msg: str) -> Phase:
        """ERROR during INPROGRESS/TESTING → ROLLBACK (§3.5, §3.7)."""
        u = self.update
        assert u is not None
        self._set_progress(Status.ERROR, msg)
        self._fail_update_env()
        self._out.append(Reboot("rollback: " + msg))
        self.update = None
        return Phase.REBOOTING

    def _wontgo(self, msg: str) -> Phase:
        self._set_progress(Status.WONTGO, msg)
        self._fail_update_env()
        self.update = None
        return Phase.IDLE

    def _fail_update_env(self) -> None:
        """`pv_update_finish` after WONTGO or ERROR: unless this boot is the try of pv_try
        (`pv_bootloader_trying_update`), the bootloader's fail-update unsets pv_try. After a
        non-reboot update that makes the next boot a plain boot of pv_rev. C writes the env even
        when pv_try is already unset; hardened skips that no-op write (docs/orderings.md)."""
        if self.pv_try and self.pv_try == self.booted_rev:
            return
        if not self.pv_try and self.config.ordering is Ordering.HARDENED:
            return
        self._set_env(pv_try="")

    def _on_container_failed(self, event: Event) -> Phase:
        return self._fail(Msg.CONTAINER_FAILED)

    def _on_steady_failure(self, event: Event) -> Phase:
        self._out.append(Reboot("a container exited"))
        self.update = None
        return Phase.REBOOTING

    # ================================================================== rules beside the table

    def _container_event(self, event: Event) -> None:  # R2
        c = self.containers
        if c is None:
            return
        if isinstance(event, ContainerExited):
            out, verdict = c.on_exit(event.name, event.uptime, self.phase in TRYING_PHASES)
        elif isinstance(event, TimerFired):
            out, verdict = c.on_timer(event.name)
        else:  # handle() sends only the keys of _CONTAINER_EVENT_KEYS here
            status_event = cast("ContainerMounted | ContainerStarted | ContainerReady", event)
            out, verdict = c.on_status(status_event.name, _STATUS_OF[type(event)])
        self._out.extend(out)
        if verdict is not None:
            rule = TABLE.get((self.phase, verdict))
            if rule is not None:
                self.phase = getattr(self, rule.handler)(event)

    def _on_ctrl(self, event: CtrlCommand) -> None:  # R3
        decision = self.ctrl_decision(event.op, payload=event.payload)
        if not decision.accepted:
            self._out.append(CtrlReply(decision.status, decision.retry_after, decision.reason))
            return
        self._out.append(CtrlReply(200))
        op = event.op
        if op in ctrl.REBOOTING_OPS:
            self._out.append(Reboot(op, poweroff=op == Op.POWEROFF_DEVICE))
            self.phase = Phase.REBOOTING
        elif op == Op.RUN_GC:
            self._out.append(self._gc_command("command"))
        elif op == Op.GO_REMOTE:
            self.local_mode = False
        elif op in ctrl.OPS_WITH_REVISION:
            self.phase = self._local_run(event, force_reboot=op == Op.LOCAL_RUN_COMMIT)

    def _local_run(self, event: CtrlCommand, *, force_reboot: bool) -> Phase:
        """`pv_update_run` (§3.4.3): no object or space check."""
        rev = event.payload
        # a fresh update object: the record's retries start from 0, not from the trail's record
        self.update = u = _Update(rev, event.state, 0)
        if event.state_error or event.state is None:
            return self._wontgo(event.state_error or Msg.NOT_FOUND)
        return self._install(u, force_reboot=force_reboot)

    def _revision_in_use(self, rev: str) -> str | None:
        """Why a step upload may not replace `rev`: the device runs it, tries it, updates to it or
        keeps it as its rollback point. Pantavisor leaves this to whoever calls pv-ctrl; pvtwin
        refuses (docs/engine.md), since overwriting such a trail loses the record of its outcome."""
        uses = (
            (self.running_rev, "the running revision"),
            (self.update_rev, "the revision being updated to"),
            (self.pv_try, "the revision being tried (pv_try)"),
            (self.pv_rev, "the rollback point (pv_rev)"),
        )
        return next((what for used, what in uses if used == rev), None)

    def _on_local_step_started(self, event: LocalStepStarted) -> None:
        named = ctrl.revision_decision(event.rev)  # never a progress under a name that escapes
        if not named.accepted:
            self._out.append(CtrlReply(named.status, None, named.reason))
            return
        in_use = self._revision_in_use(event.rev)
        if in_use is not None:
            self._out.append(CtrlReply(409, None, f"{event.rev} is {in_use}"))
            return
        self._persist(event.rev, Progress.make(Status.NEW, Msg.NOT_INSTALLED))
        self._out.append(CtrlReply(200))

    def _on_local_step_uploaded(self, event: LocalStepUploaded) -> None:
        named = ctrl.revision_decision(event.rev)
        if not named.accepted:
            self._out.append(CtrlReply(named.status, None, named.reason))
            return
        in_use = self._revision_in_use(event.rev)
        if in_use is not None:  # a backend that skipped LocalStepStarted
            self._out.append(CtrlReply(409, None, f"{event.rev} is {in_use}"))
            return
        if event.error or event.state is None:
            self._out.append(DeleteRevision(event.rev))
            self._forget(event.rev)
            self._progress.pop(event.rev, None)
            self._out.append(CtrlReply(422, None, event.error or Msg.BAD_FORMAT))
            return
        self._persist(event.rev, Progress.make(Status.NEW, Msg.READY_TO_RUN))
        self._out.append(CtrlReply(200))

    def _on_wait_tick(self, event: WaitTick) -> None:
        """§2.3 trigger 2: threshold GC, never while downloading or just after an object PUT."""
        s = event.storage
        cfg = self.config
        if cfg.gc_threshold <= 0 or self.phase in (Phase.DOWNLOADING, Phase.GC_FOR_SPACE):
            return
        if (
            event.since_object_put is not None
            and event.since_object_put < cfg.gc_threshold_defertime
        ):
            return
        if s.total > 0 and s.real_free(cfg.gc_reserved) * 100 < cfg.gc_threshold * s.total:
            self._out.append(self._gc_command("threshold"))

    def _on_object_put(self, event: ObjectPut) -> None:
        self.objects = _with_object(self.objects, event.sha)

    def _gc_done(self, event: GcDone) -> None:  # R4
        if event.removed_objects:
            self.objects = self.objects - event.removed_objects
        for rev in event.removed_revisions:
            self._forget(rev)
            self._progress.pop(rev, None)

    def _gc_command(self, reason: str) -> RunGc:
        u = self.update
        keep = gc.keep_revisions(
            running=self.running_rev,
            in_flight=u.rev if u is not None else None,
            pv_rev=self.pv_rev,
            pv_try=self.pv_try,
            config=self.config,
        )
        keep_objects = (
            _shas(u.state) if u is not None and u.state is not None else frozenset()
        )
        return RunGc(keep, keep_objects, reason)

    # ================================================================== helpers

    def _start_containers(self) -> None:
        if self.containers is not None:
            self._out.extend(self.containers.start_eligible())

    def _set_progress(self, status: Status, msg: str) -> None:
        u = self.update
        assert u is not None
        self._persist(u.rev, Progress.make(status, msg, u.retries))

    def _persist(self, rev: str, record: Progress) -> None:
        """Every status change is written to disk first, then queued to the Hub (§3.2)."""
        self._progress[rev] = record
        if rev in self._gone:
            self._gone.discard(rev)  # type: ignore[union-attr]  # non-empty: a set
        self._out.append(PersistProgress(rev, record))
        self._report(rev, record)

    def _report(self, rev: str, record: Progress) -> None:
        if not rev.startswith(LOCAL_PREFIX):
            self._out.append(ReportProgress(rev, record))

    def _set_env(self, *, pv_rev: str | None = None, pv_try: str | None = None) -> None:
        if pv_rev is not None:
            self.pv_rev = pv_rev
        if pv_try is not None:
            self.pv_try = pv_try
        redundant = self.config.ordering is Ordering.HARDENED
        self._out.append(SetBootEnv(pv_rev=pv_rev, pv_try=pv_try, redundant=redundant))

    def _forget(self, rev: str) -> None:
        """`rev` was deleted from disk: its trail's records no longer count."""
        if not self._gone:
            self._gone = set()
        self._gone.add(rev)  # type: ignore[union-attr]

    def _take(self) -> list[Command]:
        out, self._out = self._out, []
        return out


@lru_cache(maxsize=4096)
def _diff(old: State, new: State) -> StateDiff:
    """diff_states, shared by every device making the same update (States are flyweights)."""
    return diff_states(old, new)


@lru_cache(maxsize=4096)
def _shas(state: State) -> frozenset[str]:
    """The objects of a state, one frozenset per State (States are flyweights, hashed by digest)."""
    return state.object_shas()


@lru_cache(maxsize=65536)
def _with_object(objects: frozenset[str], sha: str) -> frozenset[str]:
    """`objects | {sha}`, shared by every device that fetches the same object onto the same pool
    (a value: the result is the same set whichever device asks)."""
    return objects | {sha}


def _parse(raw: object, rev: str) -> State | None:
    from shared.state import parse_state

    try:
        return parse_state(raw, source=f"trails/{rev}/.pvr/json")  # type: ignore[arg-type]
    except PvError:
        return None


_STATUS_OF = {
    ContainerMounted: CStatus.MOUNTED,
    ContainerStarted: CStatus.STARTED,
    ContainerReady: CStatus.READY,
}
_CONTAINER_EVENT_KEYS = frozenset(
    c.key for c in (ContainerMounted, ContainerStarted, ContainerReady, ContainerExited)
)
_ANY_PHASE: Mapping[str, str] = {
    CtrlCommand.key: "_on_ctrl",
    LocalStepStarted.key: "_on_local_step_started",
    LocalStepUploaded.key: "_on_local_step_uploaded",
    WaitTick.key: "_on_wait_tick",
    GcDone.key: "_gc_done",
    ObjectPut.key: "_on_object_put",
}


# ================================================================== the table's own check


class TableError(Exception):
    """A TABLE rule that could never fire or names something that does not exist."""


def _event_classes() -> Mapping[str, type[Event]]:
    """Dispatch key → the event class it names (TimerFired: one key per timer kind)."""
    keys: dict[str, type[Event]] = {c.key: c for c in EVENT_TYPES if c is not TimerFired}
    keys.update((timer_key(kind), TimerFired) for kind in TIMER_KINDS)
    return keys


def check_table(
    table: Mapping[tuple[Phase, str], Rule] = TABLE,
    any_phase: Mapping[str, str] = _ANY_PHASE,
) -> None:
    """Raise TableError unless every rule can fire and is typed: its phase is a Phase the
    engine handles events in (not REBOOTING, R1), its key names a real event class of
    shared.engine.events, a timer kind or a container verdict, its handler is an Updater method
    whose `event` parameter accepts that event, and its targets are Phases. Run at import, so a
    misspelt key cannot become a silently dead rule."""
    events = _event_classes()
    verdicts = frozenset(v for k, v in vars(Verdict).items() if not k.startswith("_"))
    for (phase, key), rule in table.items():
        where = f"TABLE[{phase!r}, {key!r}]"
        if not isinstance(phase, Phase) or phase is Phase.REBOOTING:
            raise TableError(f"{where}: {phase!r} is not a phase that handles events")
        if key not in events and key not in verdicts:
            raise TableError(f"{where}: {key!r} is no event, timer kind or container verdict")
        if not rule.targets or not all(isinstance(t, Phase) for t in rule.targets):
            raise TableError(f"{where}: targets must be Phases, got {rule.targets!r}")
        # a verdict's handler gets the container event that produced it: any Event
        _check_handler(where, rule.handler, events.get(key, Event))
    for key, handler in any_phase.items():
        if key not in events:
            raise TableError(f"_ANY_PHASE[{key!r}]: no such event")
        _check_handler(f"_ANY_PHASE[{key!r}]", handler, events[key])


def _check_handler(where: str, name: str, event_class: type[Event]) -> None:
    method = getattr(Updater, name, None)
    if not callable(method):
        raise TableError(f"{where}: Updater has no handler {name!r}")
    annotation = inspect.signature(method).parameters["event"].annotation
    # annotations are strings here (postponed evaluation); handlers name one imported class
    accepted = globals().get(annotation) if isinstance(annotation, str) else annotation
    if not (isinstance(accepted, type) and issubclass(event_class, accepted)):
        raise TableError(f"{where}: {name} takes {accepted!r}, not {event_class.__name__}")


check_table()
