"""Hypothesis stateful testing: random event sequences and power cuts against the hardened engine.

The world (an in-memory device from pvsim.memdevice) stays plausible: timers fire only when armed,
objects arrive only when fetched; everything else (container exits, readiness, Hub answers, pv-ctrl
commands, power cuts in the middle of a command batch) is random. After every step the checks are
the crash-check invariants that must hold at *any* moment, not only at quiescence.
"""

from __future__ import annotations

import hypothesis.strategies as st
from enginekit import build_state
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pvsim.memdevice import Behaviour, BootFailure, MemDevice, MemDisk
from shared.engine.bootloader import choose_boot
from shared.engine.commands import (
    ArmTimer,
    CancelTimer,
    PersistProgress,
    Reboot,
    ReportProgress,
    RunGc,
    SetBootEnv,
)
from shared.engine.config import Config, Ordering
from shared.engine.events import (
    ContainerExited,
    ContainerReady,
    ContainerStarted,
    CtrlCommand,
    HubReached,
    HubRequestFailed,
    LocalStepUploaded,
    PendingSteps,
    Step,
    TimerFired,
    TrailView,
    WaitTick,
)
from shared.engine.progress import PENDING_STATUSES, Progress, Status
from shared.engine.updater import TABLE

OLD = build_state()
CANDIDATES = {
    "1": build_state(kernel="k2"),
    "2": build_state(app="a2", app_goal="READY"),
    "3": build_state(sysc="s2", app="a3"),
}
LOCAL = build_state(app="a4")
CONFIG = Config(ordering=Ordering.HARDENED, gc_threshold=50)


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        objects = {sha: 1000 for sha in OLD.object_shas() | LOCAL.object_shas()}
        storage = MemDisk.settled({"0": TrailView(OLD)}, objects, "0")
        self.device = MemDevice(storage, CONFIG, Behaviour())
        self.armed: set[str] = set()
        self.failures: dict[str, tuple[Status, str]] = {}
        self.hub_progress: dict[str, Progress] = {}  # what the Hub heard (reports always arrive)
        self.boots = 0
        self._boot()

    # ------------------------------------------------------------------ harness

    def _boot(self) -> None:
        self.armed.clear()
        self.boots += 1
        try:
            commands = self.device.boot()
        except BootFailure as exc:  # I1
            raise AssertionError(f"no bootable revision: {exc}") from exc
        self._run(commands, cut=None)

    def _run(self, commands, cut: int | None) -> None:
        """Execute a batch; `cut` = number of durable commands that complete before power fails."""
        done = 0
        for command in commands:
            if command.durable:
                if cut is not None and done >= cut:
                    self._boot()
                    return
                done += 1
                self._check_durable(command)
            self.device._apply(command, torn=False)
            if isinstance(command, ReportProgress):
                self.hub_progress[command.rev] = command.record
            elif isinstance(command, RunGc):
                # GC forgets collected revisions, failed ones included (§2.3): a later offer of
                # the same step starts over (with the Hub's retry count).
                for rev in list(self.failures):
                    if rev not in self.device.storage.trails:
                        del self.failures[rev]
            if isinstance(command, ArmTimer):
                self.armed.add(command.name)
            elif isinstance(command, CancelTimer):
                self.armed.discard(command.name)
            elif isinstance(command, Reboot):
                self._boot()
                return

    def _check_durable(self, command) -> None:
        env = self.device.storage.env()
        assert env is not None
        if isinstance(command, PersistProgress):
            r = command.record
            first = self.failures.get(command.rev)
            assert first is None, f"failure reason of {command.rev} {first} overwritten by {r}"
            if r.is_failed:
                self.failures[command.rev] = (r.status, r.status_msg)
            if r.status is Status.DONE and command.rev != "0":
                # hardened: the env is committed before the DONE record
                assert env.get("pv_rev") == command.rev
        if isinstance(command, SetBootEnv) and command.pv_rev:
            trail = self.device.storage.trails.get(command.pv_rev)
            assert trail is not None and trail.progress is not None
            assert trail.progress.status is Status.TESTING, "commit only after TESTING"

    def _feed(self, event, cut: int | None) -> None:
        """Deliver a world event, then the device's immediate answers, as a backend loop does."""
        self._deliver(event, cut)
        queue = self.device._queue
        for _ in range(200):
            if not queue:
                break
            self._deliver(queue.popleft(), None)

    def _deliver(self, event, cut: int | None) -> None:
        updater = self.device.updater
        if updater is None or updater.finished:
            return
        rule = TABLE.get((updater.phase, event.key))
        commands = updater.handle(event)
        if rule is not None:  # the table's declared targets are the truth the diagram shows
            assert updater.phase in rule.targets, (rule.handler, updater.phase)
        self._run(commands, cut)

    # ------------------------------------------------------------------ rules

    cuts = st.none() | st.integers(min_value=0, max_value=4)

    @rule(data=st.data(), cut=cuts)
    def fire_timer(self, data, cut):
        if self.armed:
            name = data.draw(st.sampled_from(sorted(self.armed)))
            self.armed.discard(name)
            self._feed(TimerFired(name), cut)

    @rule(
        name=st.sampled_from(["sysc", "app"]),
        what=st.sampled_from(["started", "ready", "exited"]),
        uptime=st.sampled_from([1.0, 500.0]),
        cut=cuts,
    )
    def container(self, name, what, uptime, cut):
        event = {"started": ContainerStarted(name), "ready": ContainerReady(name)}.get(
            what
        ) or ContainerExited(name, uptime)
        self._feed(event, cut)

    @rule(ok=st.sampled_from([True, True, True, False]), cut=cuts)
    def hub(self, ok, cut):
        self._feed(HubReached() if ok else HubRequestFailed(), cut)

    @precondition(
        lambda self: self.device.updater is not None and self.device.updater.accepts_remote_steps
    )
    @rule(rev=st.sampled_from(sorted(CANDIDATES)), cut=cuts)
    def hub_offers(self, rev, cut):
        record = self.hub_progress.get(rev)
        if record is None or record.status in PENDING_STATUSES:
            self._feed(PendingSteps((Step(rev, CANDIDATES[rev], hub_progress=record),)), cut)

    @rule(
        op=st.sampled_from(
            ["LOCAL_RUN", "LOCAL_RUN_COMMIT", "RUN_GC", "REBOOT_DEVICE", "GO_REMOTE"]
        ),
        cut=cuts,
    )
    def ctrl(self, op, cut):
        rev = "locals/x"
        if op.startswith("LOCAL_RUN"):
            trail = self.device.storage.trails.get(rev)
            if rev in self.failures or (
                trail is not None and trail.progress and trail.progress.is_final
            ):
                return  # a person does not re-run a finished local revision in this model
            self.device.storage.write_trail(rev, LOCAL)
            self._feed(LocalStepUploaded(rev, LOCAL), None)
        self._feed(CtrlCommand(op, rev, LOCAL), cut)

    @rule(free=st.integers(min_value=0, max_value=1 << 30))
    def wait_tick(self, free):
        stats = self.device.stats()
        self._feed(WaitTick(type(stats)(stats.total, min(free, stats.total))), None)

    @rule(cut=cuts)
    def time_passes(self, cut):
        """Readiness windows and the commit delay run out (in the order a clock would)."""
        for name in sorted(self.armed, key=lambda n: (n != "commit", n.startswith("stable"))):
            if name.startswith(("stable:", "commit")) and name in self.armed:
                self.armed.discard(name)
                self._feed(TimerFired(name), cut)

    @rule()
    def power_cut(self):
        self._boot()

    # ------------------------------------------------------------------ invariants

    @invariant()
    def bootable_and_committed_revisions_are_intact(self):
        storage = self.device.storage
        env = storage.env()
        assert env is not None, "env unreadable"
        for key in ("pv_rev", "pv_try"):
            rev = env.get(key, "")
            if rev:
                assert self.device.unbootable(rev) is None, (
                    f"{key}={rev}: {self.device.unbootable(rev)}"
                )
        choice = choose_boot(env.get("pv_rev", ""), env.get("pv_try", ""), storage.latch)
        assert self.device.unbootable(choice.rev) is None

    @invariant()
    def runs_old_committed_or_tried(self):
        env = self.device.storage.env() or {}
        running = self.device.running
        updater = self.device.updater
        if running is not None and updater is not None and not updater.finished:
            assert (
                running in (env.get("pv_rev"), env.get("pv_try")) or running == updater.booted_rev
            )

    @invariant()
    def bounded_boots(self):
        assert self.boots < 200


TestEngineStateful = EngineMachine.TestCase
TestEngineStateful.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
