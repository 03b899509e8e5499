"""One device-update of the pantavisor model: the engine loop of shared.engine, in simulated time.

The common path (step the engine, wait for a batch of writes, sleep until the next agenda entry or
poll) schedules one call per wait and returns. A batch after which the device would only go back to
sleep is not waited for on its own: it is applied when it is planned, and the sleep is timed from
its end (`SLEEP_THROUGH_WRITES`: on the quickstart at 20 000 devices, 15.4 events per
device-update become 10.4, and the results stay the same). Everything that a power cut or a daemon
crash can interrupt (a batch the cut or a failed write falls into, reboots, the wait for power)
runs as a SimPy process (`_slow`); when it is over the device goes back to the common path. Idle
devices still cost nothing: a device-update that is over schedules nothing.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from pvsim.device import INF, DeviceRun, PowerCut
from pvsim.engine_memo import PER_DEVICE
from pvsim.pantavisor.agenda import DeviceBrain, FlowEnd, Queue, TransferDue
from pvsim.pantavisor.storage import DaemonCrash
from pvsim.world import BRICKED_OUT, SILENT
from shared.engine.events import TimerFired
from shared.engine.progress import FINAL_STATUSES, Progress

if TYPE_CHECKING:
    from pvsim.pantavisor.model import PantavisorModel

Outcome = tuple[str, "bool | None"]
_NO_WRITES = ()
# not a Pantavisor message: a device whose boot env was torn never reports again
TORN_ENV = "boot env torn by a power cut (the device never reports again)"


class DeviceUpdate:
    """One device-update, driven by calls from the SimPy queue rather than a generator process."""

    # Whether a batch of writes after which the device only sleeps is applied when it is planned
    # (one event: the wake-up), rather than when it lands (two: the landing, then the wake-up).
    # The same results either way (tests/test_sim_perf.py); off only to show that.
    SLEEP_THROUGH_WRITES = True

    __slots__ = (
        "model", "run", "brain", "rev", "queue", "done", "writes", "poll_at", "sleeping", "wake_at", "busy_until",
    )  # fmt: skip

    def __init__(
        self, model: PantavisorModel, run: DeviceRun, brain: DeviceBrain, rev: str, done: Callable[[Outcome], None]
    ) -> None:
        self.model = model
        self.run = run
        self.brain = brain
        self.rev = rev
        self.queue: Queue = []
        self.done = done
        self.writes: Any = _NO_WRITES  # the batch being waited for
        self.poll_at = INF
        self.sleeping: Any = None  # the pending wake-up while the device sleeps; others are stale
        self.wake_at = INF
        self.busy_until = 0.0  # the end of the batch of writes under way while the device sleeps

    def start(self) -> None:
        self.brain.waker = self.nudge
        self.brain.hub_progress.pop(self.rev, None)
        self.model._poll(self.run, self.brain, self.rev, self.queue)
        self.drain()

    def drain(self) -> None:
        """Feed the engine everything queued; stop at the first batch that takes time."""
        model, run, brain, queue = self.model, self.run, self.brain, self.queue
        now = run.env._now
        memo = model.memo
        step = memo.handle
        while queue:
            event = queue.pop(0)
            engine = brain.engine
            # memo.handle's lookup, inlined: by id for an interned event, else by value (most steps
            # are hits; both tables stay empty without sharing)
            hit = engine.after_id.get(id(event))
            if hit is None:
                hit = engine.after.get(event) if type(event) not in PER_DEVICE else None
                if hit is None:
                    hit = step(engine, event)
                if memo.shared and id(event) in model.interned_ids:
                    engine.after_id[id(event)] = hit
            brain.engine, commands = hit
            if not commands:
                continue  # most events change nothing outside the engine
            writes, failed_at, rebooting = model._plan(run, brain, commands, queue)
            if rebooting or failed_at < INF or (writes and writes[-1][1] >= run.cut_at):
                # a reboot, a failed write or a power cut inside the batch
                self._slow(model._finish_batch(run, brain, writes, failed_at, rebooting))
                return
            if writes:
                end = writes[-1][1]
                if end > now:
                    if (
                        self.SLEEP_THROUGH_WRITES
                        and end < model.world.until_s
                        and self._final_heard() is None
                        and self._only_sleep_after()
                    ):
                        # When the writes land the device only goes to sleep: they are applied
                        # now (nothing else reads the disk meanwhile, and no cut or failure falls
                        # in them: checked above) and the sleep is planned from their end. One
                        # event instead of two, the same results.
                        model._apply_writes(run, brain, writes, end)
                        self._doze(end)
                        return
                    self.writes = writes
                    run.env.call_later(end - now, self._wrote)
                    return
                model._apply_writes(run, brain, writes)
        self._rest()

    def _wrote(self, _call: Any) -> None:
        writes, self.writes = self.writes, _NO_WRITES  # not kept while the device sleeps on
        self.model._apply_writes(self.run, self.brain, writes)
        self.drain()

    def _rest(self) -> None:
        """Nothing queued: the update is over, or the device sleeps until the earliest agenda entry
        or its next Hub request."""
        model, run, brain = self.model, self.run, self.brain
        if brain.disk.torn:
            run.reason = TORN_ENV
            return self._end((BRICKED_OUT, SILENT))  # no readable boot env: nothing boots any more
        heard = self._final_heard()
        if heard is not None:
            outcome = model._outcome(brain, self.rev, heard)
            if outcome is not None:
                run.reason = heard.status_msg  # the final record's status message, as the Hub shows it
                return self._end(outcome)
        self._doze(run.env._now)

    def _only_sleep_after(self) -> bool:
        """Whether what is queued changes nothing outside the engine (most often a Hub answer the
        engine only notes): then it is stepped now rather than when the writes land. The same
        steps in the same order: the queue is the device's own, and an engine step depends on
        nothing but the engine and the event."""
        queue = self.queue
        if not queue:
            return True
        model = self.model
        memo = model.memo
        engine = self.brain.engine
        for event in queue:
            hit = engine.after_id.get(id(event))
            if hit is None:
                if type(event) in PER_DEVICE:
                    return False  # figures of this device (storage, a GC): taken when the writes land
                hit = memo.peek(engine, event)
                if memo.shared and id(event) in model.interned_ids:
                    engine.after_id[id(event)] = hit  # as drain files it
            if hit[1]:
                return False
            engine = hit[0]
        self.brain.engine = engine
        queue.clear()
        return True

    def _final_heard(self) -> Progress | None:
        """The step's progress record the Hub holds, if its status is final."""
        heard = self.brain.hub_progress.get(self.rev)
        return heard if heard is not None and heard.status in FINAL_STATUSES else None

    def _doze(self, now: float) -> None:
        """Sleep from `now` (the present, or the end of the writes under way) until the earliest
        agenda entry or the next Hub request."""
        model, run, brain = self.model, self.run, self.brain
        engine = brain.engine
        poll_at = INF
        if engine.watches_hub:
            if brain.hub_confirmed:
                poll_at = model._next_failed_contact(run, brain, now)
            else:
                poll_at = now + model.config.updater_interval
        elif engine.accepts_remote_steps:
            poll_at = now + model.world.poll_s
        self.poll_at = poll_at
        agenda = brain.agenda
        timers = brain.timers
        while agenda:
            _, seq, head = agenda[0]
            if type(head) is not TimerFired or timers.get(head.name) == seq:  # type: ignore[union-attr]  # TimerGenerations.live
                break
            heapq.heappop(agenda)  # a cancelled or re-armed timer: nothing to wake up for
        wake = agenda[0][0] if agenda and agenda[0][0] < poll_at else poll_at
        if wake == INF:
            # nothing left to wait for and the Hub has not heard a final status: a device that is
            # up but will not move (the step stays pending). Sleep to the end of the run.
            wake = model.world.until_s + 1.0
        if wake >= run.cut_at:
            wake = run.cut_at  # as DeviceRun.wait: at a tie the power goes first
        self.busy_until = now
        self.wake_at = wake
        # _sleep(wake, now), inlined
        self.sleeping = run.env.call_at(now + (wake - now) if wake > now else now, self._woke)

    def _sleep(self, until: float, since: float) -> None:
        """Wake up at `until`, timed from `since` as `call_later` would time it then."""
        self.wake_at = until
        self.sleeping = self.run.env.call_at(since + (until - since) if until > since else since, self._woke)

    def nudge(self, at: float) -> None:
        """An agenda entry due at `at` was added from outside (a transfer ended): wake up for it,
        at once when it is due now (no event spent; the pending wake-up goes stale). While the
        writes of the last batch are still under way, not before they land."""
        sleeping = self.sleeping
        if sleeping is None:
            return
        now = self.run.env._now
        writing = now < self.busy_until  # the entry waits for the writes under way to land
        if at < self.wake_at:
            # The stale wake-up stays queued until its time, often the device's next power cut,
            # past the end of the run: pointed at `_stale`, it no longer keeps this update (its run,
            # queue, closures) alive that long. Measured on the quickstart: ~4 000 ended updates
            # held at any time, a third more objects for the cache and for the collector.
            sleeping[0] = _stale
            if at <= now and not writing and self.model.world.egress.in_tick:
                self._woke(sleeping)  # the egress's own event delivers it: no need for another
            else:
                self._sleep(at, self.busy_until if writing else now)

    def _woke(self, call: Any) -> None:
        """Queue what became due while the device slept, then carry on."""
        if call is not self.sleeping:
            return  # superseded by an earlier wake-up (nudge)
        self.sleeping = None
        model, run, brain, queue = self.model, self.run, self.brain, self.queue
        now = run.env._now
        if now >= run.cut_at:
            self._slow(_power_cut())
            return
        agenda = brain.agenda
        while agenda and agenda[0][0] <= now:
            _, seq, entry = heapq.heappop(agenda)
            kind = type(entry)
            if kind is TimerFired:
                timers = brain.timers
                if timers.get(entry.name) == seq:  # type: ignore[union-attr]  # TimerGenerations.fire, inlined (hot path)
                    del timers[entry.name]  # type: ignore[union-attr]
                    queue.append(entry)  # type: ignore[arg-type]
            elif kind is FlowEnd:
                model._flow_end(run, brain, entry, queue)  # type: ignore[arg-type]
            elif kind is TransferDue:
                model._fetched(run, brain, entry.event, entry.mb, queue)  # type: ignore[union-attr]
            else:
                queue.append(entry)  # type: ignore[arg-type]
        if self.poll_at <= now:
            model._poll(run, brain, self.rev, queue)
        self.drain()

    def _slow(self, first: Generator[Any, Any, Any]) -> None:
        self.run.env.process(self._interruptible(first))

    def _interruptible(self, first: Generator[Any, Any, Any]) -> Generator[Any, Any, None]:
        """Run `first` (its result: whether a reboot follows), then recover from a power cut or a
        crash in it as the board would, and go back to the common path."""
        model, run, brain, queue = self.model, self.run, self.brain, self.queue
        try:
            if (yield from first):
                yield from model._reboot_safely(run, brain, queue)
        except (PowerCut, DaemonCrash) as fault:
            yield from model._recover(run, brain, fault)
            if not brain.disk.torn:
                yield from model._reboot_safely(run, brain, queue)
            if brain.disk.torn:
                run.reason = TORN_ENV
                return self._end((BRICKED_OUT, SILENT))  # without feeding the engine what was queued
        self.drain()

    def _end(self, outcome: Outcome) -> None:
        # transfers still running leave the Hub's egress (the engine ignores late answers, R5) and a
        # resting device's timers are not simulated (idle devices cost no events)
        self.model._lose_volatile(self.run, self.brain)
        self.model._share_disk(self.brain)
        self.brain.waker = None  # the brain, the update and its pending wake-up refer to each other:
        self.sleeping = None  # broken here, as the run keeps the cyclic collector off
        self.done(outcome)


def _stale(_call: Any) -> None:
    """A superseded wake-up when it comes up: nothing to do (see DeviceUpdate.nudge)."""


def _power_cut() -> Generator[Any, Any, bool]:
    """The power goes while the device sleeps (a process, so `_interruptible` recovers from it)."""
    raise PowerCut
    yield  # a generator
