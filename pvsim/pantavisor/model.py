"""PantavisorModel: the fleet's Pantavisor devices, interpreters of the shared engine's commands.

The model is assembled from its parts, one module each: `network` (the Hub), `storage` (durable
writes, the disk, GC), `containers`, `power` (boots, cuts, factory devices). Here: the fleet-wide
tables they share, the dispatch of one engine batch to them (`_plan`), and the outcome of a
device-update.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Generator
from heapq import heapify, heappop, heappush
from math import exp
from typing import Any

from pvsim.device import INF, DeviceRun
from pvsim.engine_memo import EngineMemo
from pvsim.pantavisor.agenda import DeviceBrain, FlowEnd, Queue, TransferDue
from pvsim.pantavisor.containers import Containers
from pvsim.pantavisor.network import HUB_REACHED, HUB_REQUEST_FAILED, Network
from pvsim.pantavisor.power import Power
from pvsim.pantavisor.storage import Storage, Write
from pvsim.pantavisor.update import DeviceUpdate, Outcome
from pvsim.simdisk import SimDisk
from pvsim.world import COMMITTED, FAIL, OK, ROLLED_BACK, WONTGO, World
from shared.engine import Config, Ordering, Progress, Status
from shared.engine import commands as C
from shared.engine import events as E
from shared.engine.bootloader import Latch
from shared.engine.progress import Msg
from shared.engine.updater import Updater


class PantavisorModel(Network, Storage, Containers, Power):
    def __init__(self, world: World) -> None:
        self.world = world
        cfg = world.scenario.update_model
        overrides = dict(cfg.engine)
        overrides.setdefault("PVTWIN_ORDERING", Ordering.HARDENED.value if cfg.hardened else Ordering.FAITHFUL.value)
        self.config: Config = Config.from_mapping(overrides, source=f"{world.scenario.name}: update_model.engine")
        self.brains: dict[int, DeviceBrain] = {}
        # one shared instance per distinct event (names and object ids are few): events are values,
        # so devices share them instead of building millions of equal ones
        self.event = functools.lru_cache(maxsize=None)(self._new_event)
        # ids of the events that live as long as the model (the cache above never drops one, the
        # fieldless Hub answers are module constants): DeviceUpdate.drain looks their steps up by id
        self.interned_ids: set[int] = {id(HUB_REACHED), id(HUB_REQUEST_FAILED)}
        self.pools: dict[frozenset[str], frozenset[str]] = {}
        self._timer_fired: dict[str, E.TimerFired] = {}
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
        self.memo = EngineMemo(Updater, self.config, shared=shared)
        # (mu, sigma) of a lognormal storage latency, which _plan draws inline (None: other kinds)
        latency = world.device_cfg.storage_latency_s.lognormal_params(world.rng)
        self._latency_ln = latency[:2] if latency is not None else None
        self._factory_template = None if shared else False
        self.factory_disk.shared = True
        self.settled_disk = None
        self.shared_disks = {}  # disks devices share between updates, by SimDisk.sharing_key
        # MB used by each object pool (pools are interned, so few distinct ones)
        self._used_mb = {}
        self._sizes = {}
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
        self.corrupt = {}
        for rev in revs.revisions[1:]:
            if rev.release.defect == "corrupt_object":
                before = revs[rev.index - 1].state.object_shas()
                for sha in rev.state.object_shas() - before:
                    self.corrupt[sha] = rev.index

    def _new_event(self, kind: type[Any], *fields: Any) -> Any:
        event = kind(*fields)
        self.interned_ids.add(id(event))
        return event

    def transfer_mb(self, old: int, new: int) -> float:
        return self.world.revisions.transfer(old, new)[0]

    def footprint_mb(self, old: int, new: int) -> float:
        revs = self.world.revisions
        shas = revs[old].state.object_shas() | revs[new].state.object_shas()
        return math.fsum(self.size_mb[s] for s in shas)  # fsum: independent of set order

    # -- per-device helpers ---------------------------------------------------------------------------
    def _view(self, device: int, disk: SimDisk, booted: str) -> E.DiskView:
        return disk.view(booted, self._storage(device, disk))

    def _defect(self, device: int, rev: str) -> str:
        """The defect revision `rev` shows on this device (hot: a dict miss for good releases)."""
        hit = self.defects.get(rev)
        if hit is None:
            return "none"
        return hit[0] if self.world.table.defect_u[device] < hit[1] else "none"

    # -- one device-update ------------------------------------------------------------------------------
    def begin(self, run: DeviceRun, target: int, done: Callable[[Outcome], None]) -> None:
        """Start one device-update; `done((outcome, report))` is called when it is over."""
        device = run.device
        brain = self.brains.get(device)
        if brain is None:
            brain = self._wake_factory(run)
            self.brains[device] = brain
        DeviceUpdate(self, run, brain, str(target), done).start()

    @staticmethod
    def _outcome(brain: DeviceBrain, rev: str, heard: Progress) -> Outcome | None:
        """The device-update is over when the Hub holds a final status for the step (`heard`)."""
        if heard.status in (Status.DONE, Status.UPDATED):
            return COMMITTED, OK
        if heard.status is Status.WONTGO:
            return WONTGO, FAIL
        if brain.booted == rev:
            return None  # ERROR reported but the rollback reboot has not happened yet
        return ROLLED_BACK, FAIL

    # -- executing one batch of commands ---------------------------------------------------------------
    def _execute(
        self, run: DeviceRun, brain: DeviceBrain, commands: list[C.Command], queue: Queue
    ) -> Generator[Any, Any, bool]:
        """Run one `handle` result. Durable steps are timed back to back with one timeout; returns
        True when the batch ends in a Reboot."""
        writes, failed_at, rebooting = self._plan(run, brain, commands, queue)
        return (yield from self._finish_batch(run, brain, writes, failed_at, rebooting))

    def _plan(
        self, run: DeviceRun, brain: DeviceBrain, commands: list[C.Command], queue: Queue
    ) -> tuple[list[Write], float, bool]:
        """The instant part of a batch: non-durable commands take effect, durable writes are timed
        back to back. Returns (writes, time of a failed write or INF, ends in a Reboot)."""
        world = self.world
        env = run.env
        rng = world.rng
        t = env._now
        writes: list[Write] = []
        rebooting = False
        latency = world.device_cfg.storage_latency_s
        env_write = world.device_cfg.env_write_s
        p_error = world.faults.storage_write_error_probability
        failed_at = INF
        lognormal = self._latency_ln
        if lognormal is not None:
            mu, sigma = lognormal
            normals = rng._normals  # type: ignore[attr-defined]  # a SimRandom (lognormal_params)
        for command in commands:
            kind = type(command)
            if command.durable:
                if lognormal is not None:  # latency.sample(rng), inlined: the hottest draw
                    if not normals:
                        rng.refill()  # type: ignore[attr-defined]  # a SimRandom (lognormal_params)
                    duration = exp(mu + sigma * normals.pop())
                else:
                    duration = latency.sample(rng)
                if kind is C.LinkObjects or kind is C.WriteTrail:
                    duration *= 2
                elif kind is C.SetBootEnv:
                    duration = env_write.sample(rng)
                if p_error > 0 and rng.random() < p_error:
                    failed_at = t + duration
                    break
                writes.append((t, t + duration, command))
                t += duration
            elif kind is C.ReportProgress:
                self._report(run, brain, command, queue)  # type: ignore[arg-type]
            elif kind is C.ArmTimer:
                name = command.name  # type: ignore[attr-defined]
                if name == "network":
                    brain.hub_confirmed = False
                brain.seq += 1  # the generation of this arming (D4)
                brain.timers[name] = brain.seq  # TimerGenerations.arm, inlined (hot path)
                fired = self._timer_fired.get(name)  # the entry: the (shared) event it fires
                if fired is None:
                    fired = self._timer_fired[name] = self.event(E.TimerFired, name)
                heappush(brain.agenda, (t + command.delay, brain.seq, fired))  # type: ignore[attr-defined]
            elif kind is C.CancelTimer:
                brain.timers.pop(command.name, None)  # type: ignore[attr-defined]  # TimerGenerations.cancel
            elif kind is C.FetchMetadata:
                self._metadata(run, brain, command, t, queue)  # type: ignore[arg-type]
            elif kind is C.FetchObject:
                self._fetch(run, brain, command, t)  # type: ignore[arg-type]
            elif kind is C.StartContainers:
                self._start_containers(run, brain, command, t)  # type: ignore[arg-type]
            elif kind is C.StopContainers:
                names = tuple(command.names)  # type: ignore[attr-defined]
                brain.push(t + min(command.grace, 1.0), self.event(E.ContainersStopped, names))  # type: ignore[attr-defined]
            elif kind is C.SwitchRevision:
                brain.booted = command.rev  # type: ignore[attr-defined]
                world.set_running(run.device, int(command.rev))  # type: ignore[attr-defined]
            elif kind is C.Reboot:
                rebooting = True
                break
            # CtrlReply: no pv-ctrl client in the fleet simulation
        return writes, failed_at, rebooting

    # -- without the clock ------------------------------------------------------------------------------
    def interpret(self, run: DeviceRun, brain: DeviceBrain, commands: list[C.Command]) -> list[E.Event]:
        """The batch's effects and answers with the timing left out (the conformance test's view
        of this backend): durable writes land at once, then everything the batch put in the
        agenda is answered in time order, except armed timers (`pass_time`)."""
        queue: Queue = []
        writes, _, _ = self._plan(run, brain, commands, queue)
        self._apply_writes(run, brain, writes)
        for flow, answer in list((brain.transfers or {}).items()):  # transfers complete at once
            self.world.egress.stop(flow)
            brain.push(run.env._now, TransferDue(answer, flow.size))
        brain.transfers = None
        timers = [entry for entry in brain.agenda if type(entry[2]) is E.TimerFired]
        answers = [entry for entry in brain.agenda if type(entry[2]) not in (E.TimerFired, FlowEnd)]
        brain.agenda[:] = timers
        heapify(brain.agenda)
        for _, _, entry in sorted(answers, key=lambda e: (e[0], e[1])):
            if type(entry) is TransferDue:
                self._fetched(run, brain, entry.event, entry.mb, queue)
            else:
                queue.append(entry)  # type: ignore[arg-type]
        return list(queue)

    def pass_time(self, brain: DeviceBrain) -> list[E.Event]:
        """The armed timers run out: the ones still armed fire, in deadline order (D4)."""
        fired: list[E.Event] = []
        while brain.agenda:
            _, seq, entry = heappop(brain.agenda)
            if type(entry) is E.TimerFired and brain.timers.fire(entry.name, seq):
                fired.append(entry)
        return fired

