"""The `pantavisor` update model: a simulated device that interprets the shared engine's commands.

Nothing here decides anything Pantavisor decides (statuses, retries, rollback, commit, the latch):
the engine (`shared.engine`) does, through `Updater.boot` / `Updater.handle`. This module only
gives each command a modelled duration and an outcome, and feeds the resulting events back:

| command | here |
|---|---|
| durable steps (progress, trail, links, env, done, GC) | storage latency + size / write speed, in order; a power cut keeps the ones completed before it, loses the rest, and tears a non-redundant env write |
| FetchMetadata | instant Hub request: sizes and storage figures, or MetadataFailed when unreachable |
| FetchObject | transfer over the device link and the hub's shared egress; fails at outages and dropped connections; corrupt release objects fail their hash |
| ReportProgress | instant Hub request: HubReached / HubRequestFailed; the Hub's copy of the step's progress |
| Start/StopContainers | modelled start and ready times; release defects crash a container or keep it from being ready |
| ArmTimer / CancelTimer | a deadline in the device's agenda |
| Reboot | boot delay, then the bootloader latch (`shared.engine.bootloader.choose_boot`) and a new Updater from what survived |

Event economy: a batch of commands returned by one `handle` call costs at most one SimPy event
(the sum of its durable writes); everything else the device is waiting for (timers, transfers,
containers, the next poll) sits in a small per-device agenda and the device sleeps until the
earliest entry. Waits are `call_later` events that call the device's next step (`DeviceUpdate`),
not generator processes; only what a power cut can interrupt runs as a process. Engine calls are
plain Python calls, through `pvsim.engine_memo`: devices whose engines are equal share one.
"""

from __future__ import annotations

import functools
import heapq
import math
import os
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Generator
from typing import Any

from pvsim.device import INF, DeviceRun, PowerCut
from pvsim.engine_memo import EngineMemo, EngineState
from pvsim.world import BRICKED_OUT, COMMITTED, FAIL, OK, ROLLED_BACK, SILENT, WONTGO, World
from shared.engine import Config, Ordering, Progress, Status
from shared.engine import commands as C
from shared.engine import events as E
from shared.engine.bootloader import Latch, choose_boot
from shared.engine.events import TrailView
from shared.engine.progress import FINAL_STATUSES, Msg

MB = 1_000_000
APP_DEFECTS = ("container_crash", "never_ready", "breaks_network")
# Events without fields, and a cache of the others (pvsim.model_pantavisor.PantavisorModel.event):
# events are values, so devices can share them instead of building millions of equal ones.
HUB_REACHED = E.HubReached()
HUB_REQUEST_FAILED = E.HubRequestFailed()


def _new_event(kind: type, *fields: Any) -> Any:
    return kind(*fields)


# A request to an unreachable Hub fails when it times out (PH_LIBEVENT_HTTP_TIMEOUT, 60 s);
# requests to a reachable Hub are modelled as instantaneous.
HTTP_TIMEOUT_S = 60.0


def _updater_class() -> Any:
    from shared.engine.updater import Updater  # imported late: the engine may land after pvsim

    return Updater


class DaemonCrash(Exception):
    """A durable write failed with an I/O error. The engine has no event for that, so the daemon
    is taken to die on it; Pantavisor's init stub reboots the board 5 s later (§3.9)."""


CRASH_REBOOT_S = 5.0


class SimDisk:
    """What survives a power cut on one device: boot env, latch, trails, object pool."""

    __slots__ = ("pv_rev", "pv_try", "latch", "trails", "objects", "torn")

    def __init__(self, pv_rev: str, pv_try: str, latch: Latch, trails: dict, objects: frozenset) -> None:
        self.pv_rev = pv_rev
        self.pv_try = pv_try
        self.latch = latch
        self.trails = trails
        self.objects = objects
        self.torn = False

    def copy(self) -> SimDisk:
        return SimDisk(self.pv_rev, self.pv_try, self.latch, dict(self.trails), self.objects)


class DeviceBrain:
    """A live device between updates: its (shared) engine state, its disk and what it is waiting for."""

    __slots__ = ("engine", "disk", "booted", "agenda", "seq", "timers", "hub_progress", "hub_confirmed")

    def __init__(self, engine: EngineState, disk: SimDisk, booted: str) -> None:
        self.engine = engine  # shared with every device whose engine is equal (pvsim.engine_memo)
        self.disk = disk
        self.booted = booted
        self.agenda: list[tuple[float, int, Any]] = []
        self.seq = 0
        self.timers: dict[str, int] = {}
        self.hub_progress: dict[str, Progress] = {}
        self.hub_confirmed = False  # a Hub request succeeded since the network timer was armed


class DeviceUpdate:
    """One device-update, driven by calls from the SimPy queue rather than a generator process.

    The common path (step the engine, wait for a batch of writes, sleep until the next agenda
    entry or poll) schedules one `call_later` per wait and returns. Everything that can be
    interrupted by a power cut or a daemon crash (a batch the cut or a failed write falls into,
    reboots, the wait for power) runs as a SimPy process (`_slow`), the same generators as ever;
    when it is over the device goes back to the common path. Idle devices still cost nothing:
    a device-update that is over schedules nothing.
    """

    __slots__ = ("model", "run", "brain", "rev", "queue", "done", "writes", "poll_at")

    def __init__(
        self, model: PantavisorModel, run: DeviceRun, brain: DeviceBrain, rev: str, done: Callable[[Any], None]
    ) -> None:
        self.model = model
        self.run = run
        self.brain = brain
        self.rev = rev
        self.queue: deque[Any] = deque()
        self.done = done
        self.writes: list = []
        self.poll_at = INF

    def start(self) -> None:
        self.brain.hub_progress.pop(self.rev, None)
        self.model._poll(self.run, self.brain, self.rev, self.queue)
        self.drain()

    def drain(self) -> None:
        """Feed the engine everything queued; stop at the first batch that takes time."""
        model, run, brain, queue = self.model, self.run, self.brain, self.queue
        now = run.env._now
        step = model.memo.handle
        while queue:
            brain.engine, commands = step(brain.engine, queue.popleft())
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
                    self.writes = writes
                    run.env.call_later(end - now, self._wrote)
                    return
                for _, _, command in writes:
                    model._apply(run, brain, command)
        self._rest()

    def _wrote(self, _call: Any) -> None:
        model, run, brain = self.model, self.run, self.brain
        for _, _, command in self.writes:
            model._apply(run, brain, command)
        self.drain()

    def _rest(self) -> None:
        """Nothing queued: the update is over, or the device sleeps until the earliest agenda entry
        or its next Hub request."""
        model, run, brain = self.model, self.run, self.brain
        if brain.disk.torn:
            return self._end((BRICKED_OUT, SILENT))  # no readable boot env: nothing boots any more
        heard = brain.hub_progress.get(self.rev)
        if heard is not None and heard.status in FINAL_STATUSES:
            outcome = model._outcome(brain, self.rev, heard)
            if outcome is not None:
                return self._end(outcome)
        env = run.env
        now = env._now
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
        while agenda and agenda[0][2][0] == "timer" and timers.get(agenda[0][2][1]) != agenda[0][2][2]:
            heapq.heappop(agenda)  # a cancelled or re-armed timer: nothing to wake up for
        wake = agenda[0][0] if agenda and agenda[0][0] < poll_at else poll_at
        if wake == INF:
            # nothing left to wait for and the Hub has not heard a final status: a device that is
            # up but will not move (the step stays pending). Sleep to the end of the run.
            wake = model.world.until_s + 1.0
        if wake >= run.cut_at:  # as DeviceRun.wait: the power goes first
            self._slow(run.wait(wake - now))
            return
        env.call_later(wake - now if wake > now else 0.0, self._woke)

    def _woke(self, _call: Any) -> None:
        """Queue what became due while the device slept, then carry on."""
        model, run, brain, queue = self.model, self.run, self.brain, self.queue
        now = run.env._now
        agenda = brain.agenda
        while agenda and agenda[0][0] <= now:
            item = heapq.heappop(agenda)[2]
            kind = item[0]
            if kind == "event":
                queue.append(item[1])
            elif kind == "timer":
                _, name, seq = item
                if brain.timers.get(name) == seq:
                    del brain.timers[name]
                    queue.append(model.event(E.TimerFired, name))
            else:
                model._fetched(run, brain, item, queue)
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
                return self._end((BRICKED_OUT, SILENT))  # without feeding the engine what was queued
        self.drain()

    def _end(self, outcome: tuple[str, bool | None]) -> None:
        # transfers still listed stop counting against the Hub's egress (the engine ignores late
        # answers, R5) and a resting device's timers are not simulated (idle devices cost no events)
        self.model._lose_volatile(self.run, self.brain)
        self.done(outcome)


class PantavisorModel:
    def __init__(self, world: World) -> None:
        self.world = world
        cfg = world.scenario.update_model
        self.Updater = _updater_class()
        overrides = dict(cfg.engine)
        overrides.setdefault("PVTWIN_ORDERING", Ordering.HARDENED.value if cfg.hardened else Ordering.FAITHFUL.value)
        self.config: Config = Config.from_mapping(overrides, source=f"{world.scenario.name}: update_model.engine")
        self.brains: dict[int, DeviceBrain] = {}
        # one shared instance per distinct event (names and object ids are few)
        self.event = functools.lru_cache(maxsize=None)(_new_event)
        self.pools: dict[frozenset, frozenset] = {}
        revs = world.revisions
        factory = revs[0]
        self.factory_disk = SimDisk(
            "0",
            "",
            Latch(),
            {"0": E.TrailView(factory.state, Progress.make(Status.DONE, Msg.FACTORY), True)},
            frozenset(factory.state.object_shas()),
        )
        # Devices share engines (pvsim.engine_memo) and the factory wake's result (_wake_factory).
        # PVSIM_ENGINE_MEMO=0 gives each device its own engine and settles each one on its own:
        # the same results, slower (tests/test_sim_perf.py checks that they are the same).
        shared = os.environ.get("PVSIM_ENGINE_MEMO", "1") != "0"
        self.memo = EngineMemo(self.Updater, self.config, shared=shared)
        self._factory_template: Any = None if shared else False
        self.settled_disk: SimDisk | None = None
        # MB used by each object pool (pools are interned, so few distinct ones)
        self._used_mb: dict[frozenset, float] = {}
        self._sizes: dict[frozenset, dict[str, int]] = {}
        self.size_mb = {}
        for rev in revs.revisions:
            self.size_mb.update(rev.sizes)
        self.factory_mb = factory.image_mb
        self.defects = {
            str(r.index): (r.release.defect, r.release.defect_fraction)
            for r in revs.revisions[1:]
            if r.release.defect != "none"
        }
        # objects whose bytes are corrupt at the source: those a corrupt_object release introduced
        self.corrupt: dict[str, int] = {}
        for rev in revs.revisions[1:]:
            if rev.release.defect == "corrupt_object":
                before = revs[rev.index - 1].state.object_shas()
                for sha in rev.state.object_shas() - before:
                    self.corrupt[sha] = rev.index

    def transfer_mb(self, old: int, new: int) -> float:
        return self.world.revisions.transfer(old, new)[0]

    def footprint_mb(self, old: int, new: int) -> float:
        revs = self.world.revisions
        shas = revs[old].state.object_shas() | revs[new].state.object_shas()
        return math.fsum(self.size_mb[s] for s in shas)  # fsum: independent of set order

    # -- per-device helpers ---------------------------------------------------------------------------
    def _storage(self, device: int, disk: SimDisk) -> E.StorageStats:
        free_mb = self.world.table.free_mb[device]
        objects = disk.objects
        used = self._used_mb.get(objects)
        if used is None:
            used = self._used_mb[objects] = math.fsum(self.size_mb.get(s, 0.0) for s in objects) - self.factory_mb
        total = int((free_mb + self.factory_mb) * MB)
        return E.StorageStats(total, max(0, int((free_mb - used) * MB)))

    def _view(self, device: int, disk: SimDisk, booted: str) -> E.DiskView:
        # the engine keeps the trails as they were at boot: a copy, since the disk's own dict goes on
        # changing (and the engine may be shared with devices whose disks are not this one)
        trails = dict(disk.trails)
        return E.DiskView(booted, disk.pv_rev, disk.pv_try, trails, disk.objects, self._storage(device, disk))

    def _defect(self, device: int, rev: str) -> str:
        """The defect revision `rev` shows on this device (hot: a dict miss for good releases)."""
        hit = self.defects.get(rev)
        if hit is None:
            return "none"
        return hit[0] if self.world.table.defect_u[device] < hit[1] else "none"

    # -- one device-update ------------------------------------------------------------------------------
    def begin(self, run: DeviceRun, target: int, done: Callable[[tuple[str, bool | None]], None]) -> None:
        """Start one device-update; `done((outcome, report))` is called when it is over."""
        device = run.device
        brain = self.brains.get(device)
        if brain is None:
            brain = self._wake_factory(run)
            self.brains[device] = brain
        DeviceUpdate(self, run, brain, str(target), done).start()

    @staticmethod
    def _outcome(brain: DeviceBrain, rev: str, heard: Progress) -> tuple[str, bool | None] | None:
        """The device-update is over when the Hub holds a final status for the step (`heard`)."""
        if heard.status in (Status.DONE, Status.UPDATED):
            return COMMITTED, OK
        if heard.status is Status.WONTGO:
            return WONTGO, FAIL
        if brain.booted == rev:
            return None  # ERROR reported but the rollback reboot has not happened yet
        return ROLLED_BACK, FAIL

    # -- waiting ------------------------------------------------------------------------------------------
    def _push(self, brain: DeviceBrain, at: float, item: Any) -> None:
        brain.seq += 1
        heapq.heappush(brain.agenda, (at, brain.seq, item))

    def _poll(self, run: DeviceRun, brain: DeviceBrain, rev: str, queue: deque) -> None:
        """A Hub poll now: the pending step (if the Hub still lists it) or a failed request."""
        engine = brain.engine
        if engine.watches_hub:
            # the Hub client keeps talking to the Hub while a remote update is tried (§3.5)
            if self._hub_ok(run, brain):
                brain.hub_confirmed = True
                queue.append(HUB_REACHED)
            else:
                queue.append(HUB_REQUEST_FAILED)
            return
        if not engine.accepts_remote_steps:
            return
        if not self._hub_ok(run, brain):
            if engine.watches_hub:
                queue.append(HUB_REQUEST_FAILED)
            return
        heard = brain.hub_progress.get(rev)
        if heard is not None and heard.is_final:
            return
        revision = self.world.revisions[int(rev)]
        signature_error = Msg.SIG_FAILED if self._defect(run.device, rev) == "bad_signature" else None
        if signature_error:
            self.world.count("bad_signature")
        step = self.event(E.Step, rev, revision.state, None, heard, signature_error)
        queue.append(self.event(E.PendingSteps, (step,)))

    def _hub_ok(self, run: DeviceRun, brain: DeviceBrain) -> bool:
        if self._defect(run.device, brain.booted) == "breaks_network":
            return False
        return run.hub_reachable()

    def _next_failed_contact(self, run: DeviceRun, brain: DeviceBrain, now: float) -> float:
        """While the engine watches the Hub, the Hub client talks to it every PH_UPDATER_INTERVAL.
        Once a request succeeded, further successes change nothing, so only the first request that
        will fail is worth an event; it is found from the outage intervals, not by polling."""
        interval = self.config.updater_interval
        first = now + interval
        if self._defect(run.device, brain.booted) == "breaks_network":
            return first

        def first_poll_in(start: float, end: float) -> float:
            t = first if start <= first else first + math.ceil((start - first) / interval) * interval
            return t if t < end else INF

        best = INF
        until = self.world.until_s
        run.net_down_until(first)
        while run.net_start < min(best, until):
            best = min(best, first_poll_in(run.net_start, run.net_end))
            if best < INF:
                break
            run.net_down_until(run.net_end)
        outages = self.world.hub_outages
        k = max(0, bisect_right(outages.starts, first) - 1)
        while k < len(outages.starts) and outages.starts[k] < min(best, until):
            if outages.ends[k] > first:
                best = min(best, first_poll_in(outages.starts[k], outages.ends[k]))
            k += 1
        return best

    def _fetched(self, run: DeviceRun, brain: DeviceBrain, item: Any, queue: deque) -> None:
        """A transfer ended (ok, failed or corrupt): it leaves the Hub's egress."""
        _, event, mb = item
        self.world.egress.active -= 1
        run.mb_downloaded += mb
        if event.ok:
            # renamed into place after its hash matched: the object is in the pool
            run.mb_written += mb
            disk = self._own_disk(brain)
            disk.objects = self._intern(disk.objects | {event.sha})
        queue.append(event)

    # -- executing one batch of commands ---------------------------------------------------------------
    def _execute(self, run: DeviceRun, brain: DeviceBrain, commands: list, queue: deque) -> Generator[Any, Any, bool]:
        """Run one `handle` result. Durable steps are timed back to back with one timeout; returns
        True when the batch ends in a Reboot."""
        writes, failed_at, rebooting = self._plan(run, brain, commands, queue)
        return (yield from self._finish_batch(run, brain, writes, failed_at, rebooting))

    def _plan(self, run: DeviceRun, brain: DeviceBrain, commands: list, queue: deque) -> tuple[list, float, bool]:
        """The instant part of a batch: non-durable commands take effect, durable writes are timed
        back to back. Returns (writes, time of a failed write or INF, ends in a Reboot)."""
        world = self.world
        env = run.env
        rng = world.rng
        t = env._now
        writes: list[tuple[float, float, Any]] = []  # (start, end, command)
        rebooting = False
        latency = world.device_cfg.storage_latency_s
        env_write = world.device_cfg.env_write_s
        p_error = world.faults.storage_write_error_probability
        failed_at = INF
        for command in commands:
            if command.durable:
                duration = latency.sample(rng)
                kind = type(command)
                if kind is C.LinkObjects or kind is C.WriteTrail:
                    duration *= 2
                elif kind is C.SetBootEnv:
                    duration = env_write.sample(rng)
                if p_error > 0 and rng.random() < p_error:
                    failed_at = t + duration
                    break
                writes.append((t, t + duration, command))
                t += duration
                continue
            kind = type(command)
            if kind is C.ReportProgress:
                self._report(run, brain, command, t, queue)
            elif kind is C.ArmTimer:
                if command.name == "network":
                    brain.hub_confirmed = False
                brain.seq += 1
                brain.timers[command.name] = brain.seq
                heapq.heappush(brain.agenda, (t + command.delay, brain.seq, ("timer", command.name, brain.seq)))
            elif kind is C.CancelTimer:
                brain.timers.pop(command.name, None)
            elif kind is C.FetchMetadata:
                self._metadata(run, brain, command, t, queue)
            elif kind is C.FetchObject:
                self._fetch(run, brain, command, t)
            elif kind is C.StartContainers:
                self._start_containers(run, brain, command, t)
            elif kind is C.StopContainers:
                self._push(brain, t + min(command.grace, 1.0), ("event", self.event(E.ContainersStopped, tuple(command.names))))
            elif kind is C.SwitchRevision:
                brain.booted = command.rev
                world.set_running(run.device, int(command.rev))
            elif kind is C.Reboot:
                rebooting = True
                break
            # CtrlReply: no pv-ctrl client in the fleet simulation
        return writes, failed_at, rebooting

    def _finish_batch(
        self, run: DeviceRun, brain: DeviceBrain, writes: list, failed_at: float, rebooting: bool
    ) -> Generator[Any, Any, bool]:
        """The timed part of a batch: wait for the writes (a power cut keeps those completed before
        it), apply them, and die on a failed write."""
        world = self.world
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
            world.count("storage_write_errors")
            raise DaemonCrash
        return rebooting

    def _apply_until(self, run: DeviceRun, brain: DeviceBrain, writes: list, cut: float) -> None:
        for start, end, command in writes:
            if end <= cut:
                self._apply(run, brain, command)
            else:
                if type(command) is C.SetBootEnv and start < cut and not command.redundant:
                    self.world.count("torn_env_writes")
                    self._own_disk(brain).torn = True
                break

    def _intern(self, objects: frozenset) -> frozenset:
        """Devices with the same object pool share one frozenset (flyweight, ~1 KB a device)."""
        return self.pools.setdefault(objects, objects)

    def _own_disk(self, brain: DeviceBrain) -> SimDisk:
        """Copy-on-write: devices share the factory disk (and then the settled factory disk) until
        they first write."""
        if brain.disk is self.factory_disk or brain.disk is self.settled_disk:
            brain.disk = brain.disk.copy()
        return brain.disk

    def _apply(self, run: DeviceRun, brain: DeviceBrain, command: Any) -> None:
        disk = self._own_disk(brain)
        kind = type(command)
        trails = disk.trails
        run.mb_written += 0.004
        if kind is C.PersistProgress:
            old = trails.get(command.rev)
            trails[command.rev] = (
                TrailView(old.state, command.record, old.done) if old else TrailView(None, command.record)
            )
        elif kind is C.WriteTrail:
            old = trails.get(command.rev)
            trails[command.rev] = TrailView(command.state, old.progress, old.done) if old else TrailView(command.state)
        elif kind is C.SetBootEnv:
            if command.pv_rev is not None:
                disk.pv_rev = command.pv_rev
            if command.pv_try is not None:
                disk.pv_try = command.pv_try
        elif kind is C.WriteDoneMarker:
            old = trails.get(command.rev)
            trails[command.rev] = TrailView(old.state, old.progress, True) if old else TrailView(None, None, True)
        elif kind is C.DeleteRevision:
            trails.pop(command.rev, None)
        elif kind is C.RunGc:
            self._gc(run, brain, command)
        # LinkObjects: hard links cost metadata writes only; the objects are already in the pool

    def _gc(self, run: DeviceRun, brain: DeviceBrain, command: Any) -> None:
        disk = self._own_disk(brain)
        removed_revs = frozenset(r for r in disk.trails if r not in command.keep_revisions)
        for r in removed_revs:
            del disk.trails[r]
        referenced = set(command.keep_objects)
        for trail in disk.trails.values():
            if trail.state is not None:
                referenced |= trail.state.object_shas()
        removed = frozenset(s for s in disk.objects if s not in referenced)
        disk.objects = self._intern(disk.objects - removed)
        reclaimed = int(math.fsum(self.size_mb.get(s, 0.0) for s in removed) * MB)
        self._push(
            brain,
            run.env._now,
            ("event", E.GcDone(reclaimed, self._storage(run.device, disk), removed, removed_revs)),
        )

    # -- non-durable commands ----------------------------------------------------------------------------
    def _report(self, run: DeviceRun, brain: DeviceBrain, command: Any, t: float, queue: deque) -> None:
        ok = self._hub_ok(run, brain)
        if ok:
            brain.hub_progress[command.rev] = command.record
        if brain.engine.watches_hub:
            brain.hub_confirmed = brain.hub_confirmed or ok
            queue.append(HUB_REACHED if ok else HUB_REQUEST_FAILED)

    def _metadata(self, run: DeviceRun, brain: DeviceBrain, command: Any, t: float, queue: deque) -> None:
        if not self._hub_ok(run, brain):
            self._push(brain, t + HTTP_TIMEOUT_S, ("event", E.MetadataFailed(command.rev)))
            return
        if self.world.table.full[run.device]:
            self.world.count("disk_full")
        # one sizes mapping per set of requested objects, shared by devices (the engine only reads it)
        sizes = self._sizes.get(command.shas)
        if sizes is None:
            sizes = self._sizes[command.shas] = {sha: int(self.size_mb.get(sha, 0.0) * MB) for sha in command.shas}
        queue.append(E.MetadataReceived(command.rev, sizes, self._storage(run.device, brain.disk)))

    def _fetch(self, run: DeviceRun, brain: DeviceBrain, command: Any, t: float) -> None:
        """Plan one object transfer: when it ends and how (ok, dropped, outage, hash mismatch)."""
        world = self.world
        sha = command.sha
        mb = self.size_mb.get(sha, command.size / MB)
        now = run.env._now
        start = max(t, now)
        if not self._hub_ok(run, brain):
            self._push(brain, start + HTTP_TIMEOUT_S, ("event", E.ObjectFetched(sha, ok=False)))
            return
        rate = world.egress.share(run.link_mb_s)
        world.egress.active += 1
        # the object streams to `objects/<sha>.tmp`: the slower of link and storage sets the pace
        end = start + max(mb / rate, mb / run.write_mb_s)
        stop = min(run.net_start if run.net_start > start else INF, world.hub_outages.next_start(start))
        p = world.faults.network_loss_probability
        if end > stop:
            world.count("transfers_cut_by_outage")
            # the connection stalls at the outage and fails when the request times out
            failed = stop + HTTP_TIMEOUT_S
            self._push(brain, failed, ("fetch", E.ObjectFetched(sha, ok=False), (stop - start) * rate))
        elif p > 0 and world.rng.random() < p:
            world.count("network_losses")
            drop = start + (end - start) * world.rng.random()
            self._push(brain, drop, ("fetch", E.ObjectFetched(sha, ok=False), (drop - start) * rate))
        elif sha in self.corrupt and self._defect(run.device, str(self.corrupt[sha])) == "corrupt_object":
            world.count("corrupt_object")
            self._push(brain, end, ("fetch", E.ObjectFetched(sha, ok=False, hash_mismatch=True), mb))
        else:
            self._push(brain, end, ("fetch", self.event(E.ObjectFetched, sha), mb))

    def _start_containers(self, run: DeviceRun, brain: DeviceBrain, command: Any, t: float) -> None:
        world = self.world
        rng = world.rng
        revision = world.revisions[int(command.rev)]
        defect = self._defect(run.device, command.rev)
        hit = self._defect_targets(revision) if defect in APP_DEFECTS else ()
        if hit or defect == "breaks_network":
            run.exposed = True
        goals = {c.name: c.status_goal for c in revision.state.containers}
        for name in command.names:
            goal = goals.get(name, "STARTED")
            if goal == "MOUNTED":
                self._push(brain, t, ("event", self.event(E.ContainerMounted, name)))
                continue
            started = t + world.device_cfg.container_start_s.sample(rng)
            self._push(brain, started, ("event", self.event(E.ContainerStarted, name)))
            if name in hit and defect == "container_crash":
                world.count("container_crash")
                uptime = world.device_cfg.ready_s.sample(rng)
                self._push(brain, started + uptime, ("event", E.ContainerExited(name, uptime, 1)))
                continue
            if goal == "READY":
                if name in hit and defect == "never_ready":
                    world.count("never_ready")
                    continue
                self._push(brain, started + world.device_cfg.ready_s.sample(rng), ("event", self.event(E.ContainerReady, name)))
        if defect == "breaks_network":
            world.count("breaks_network")

    @staticmethod
    def _defect_targets(revision: Any) -> tuple[str, ...]:
        apps = [p[4:] for p in revision.release.parts if p.startswith("app:")]
        if apps:
            return tuple(apps)
        return tuple(c.name for c in revision.state.containers if c.group == "app")

    # -- power and boots -------------------------------------------------------------------------------
    def _lose_volatile(self, run: DeviceRun, brain: DeviceBrain) -> None:
        """A power cut: running transfers, timers and containers are gone."""
        for _, _, item in brain.agenda:
            if item[0] == "fetch":
                self.world.egress.active -= 1
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

    def _reboot_safely(self, run: DeviceRun, brain: DeviceBrain, queue: deque) -> Generator[Any, Any, None]:
        """Reboot; a power cut or a crash during the boot's own writes means booting again."""
        while True:
            try:
                yield from self._reboot(run, brain, queue)
                return
            except (PowerCut, DaemonCrash) as fault:
                yield from self._recover(run, brain, fault)

    def _reboot(self, run: DeviceRun, brain: DeviceBrain, queue: deque) -> Generator[Any, Any, None]:
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
                self._factory_template = (brain.engine, dict(brain.hub_progress), brain.seq)
            else:
                self._factory_template = False
            return brain
        if template is False:
            return self._settle_factory(run)[0]
        engine, hub_progress, seq = template
        brain = DeviceBrain(engine, self.settled_disk, "0")
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
            events: list[Any] = []
            kind = type(command)
            if kind is C.RunGc:
                reusable = False
            if command.durable:
                self._apply(run, brain, command)
                events.extend(item[1] for _, _, item in brain.agenda if item[0] == "event")
                brain.agenda = [entry for entry in brain.agenda if entry[2][0] != "event"]
            elif kind is C.StartContainers:
                revision = self.world.revisions[int(command.rev)]
                goals = {c.name: c.status_goal for c in revision.state.containers}
                for name in command.names:
                    if goals.get(name) == "MOUNTED":
                        events.append(E.ContainerMounted(name))
                    else:
                        events.append(E.ContainerStarted(name))
                        if goals.get(name) == "READY":
                            events.append(E.ContainerReady(name))
            elif kind is C.ArmTimer:
                events.append(E.TimerFired(command.name))  # it ran out long before the simulation
            elif kind is C.ReportProgress:
                brain.hub_progress[command.rev] = command.record
                if brain.engine.watches_hub:
                    events.append(E.HubReached())
            for event in events:
                brain.engine, more = self.memo.handle(brain.engine, event)
                pending.extend(more)
        run.mb_written = 0.0
        return brain, reusable and not brain.agenda and not brain.timers
