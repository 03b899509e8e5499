"""One daemon process of a crash check: the real `Device` (pvreal.device.daemon) on a storage
folder, run to quiescence one event at a time, so that a replay reaches the same step again.

What is the daemon's own runs for real: the latch files and the boot choice, `Updater.boot` from
the disk, the executor and every durable write, pv-ctrl's endpoints (`CtrlApi`: uploads, the
state checks, commands), reboots as a restart of the boot loop. What stands in:

- containers: the real `ContainerRunner` over mounts and a runc that do nothing (standins.py);
  an init that crashes exits one (virtual) second after it started, one with goal READY signals
  ready one second after it started through pv-ctrl's /signal path, unless it never does;
- the clock: timers run on a virtual clock that jumps to the next deadline whenever the device
  has nothing else to do, so a 60 s goal timeout costs nothing;
- the person at pv-ctrl: once per boot, when the device is quiet, uploads what the kind updates
  to and runs it (`RUN_GC` first in the GC kind);
- remote kinds: the daemon's real Hub client talks to a real Hub (`hub_url`), one request at a
  time on the engine's thread and on the virtual clock (pvreal.crashcheck.hub). It makes its
  periodic request every PH_UPDATER_INTERVAL of virtual time while the engine watches the Hub,
  and while the engine is idle until a poll changes nothing (the device is then quiet).

The process is killed from inside by `PVTWIN_CRASH_AT_STEP` (pvreal.device.crashpoint); when it
is not, it writes what the invariants need (`result.json`) and exits 0.
"""

from __future__ import annotations

import heapq
import io
import json
import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pvreal.bootenv.errors import EnvCorrupt
from pvreal.crashcheck.hub import SyncRequests, Unreachable
from pvreal.crashcheck.kinds import RealKind
from pvreal.crashcheck.standins import MountsOnPaper, NoRunc
from pvreal.ctrl.api import CtrlApi
from pvreal.device import daemon as device_module
from pvreal.device import remote as remote_module
from pvreal.device.daemon import Device, DeviceError, DeviceOptions, HubOptions, _Item
from pvreal.storage import Storage
from shared import canonical
from shared.engine.driver import StartOutcome, container_events
from shared.engine.events import (
    ContainerExited,
    ContainerStarted,
    Event,
    TimerFired,
)
from shared.engine.invariants import MAX_BOOTS
from shared.engine.progress import Progress, Status
from shared.engine.updater import Phase
from shared.errors import PvError
from shared.state import Container

MAX_EVENTS = 5000  # per process: more is no quiescence (I5)
RESULT = "result.json"
NOTEBOOK = "operator.json"


@dataclass(order=True)
class _Later:
    at: float
    seq: int
    event: Event = field(compare=False)
    boot: int = field(compare=False)
    signal: bool = field(compare=False)  # goes through pv-ctrl's /signal (waits for an answer)


class World:
    """What happens outside the engine, in virtual time: the containers' later events."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[_Later] = []
        self._seq = 0

    def clock(self) -> float:
        return self.now

    def later(self, delay: float, event: Event, boot: int, *, signal: bool = False) -> None:
        self._seq += 1
        heapq.heappush(self._heap, _Later(self.now + delay, self._seq, event, boot, signal))

    def next_at(self) -> float | None:
        return self._heap[0].at if self._heap else None

    def pop(self) -> _Later:
        return heapq.heappop(self._heap)


class _HeldReply(Future[Any]):
    """A pv-ctrl request's answer, handed over only once the engine thread has carried out
    everything that event led to. The real daemon answers as soon as the engine replies, so a
    request thread may run on (write a state, an object) while a GC or a progress write is still
    under way: which of the two reaches the disk first would then vary from run to run."""

    def __init__(self) -> None:
        super().__init__()
        self._held: list[Any] = []

    def set_result(self, result: Any) -> None:
        if not self._held:
            self._held.append(result)

    def done(self) -> bool:
        return bool(self._held) or super().done()

    def release(self) -> None:
        super().set_result(self._held[0] if self._held else None)


class CrashDaemon:
    """The real Device, driven synchronously (see the module docstring). Meant for a process of
    its own (`runner` forks one per daemon run): it sets the daemon module's clock."""

    def __init__(self, storage: Path, run_dir: Path, kind: RealKind | None, ordering: str,
                 hub_url: str | None = None, hub_token: str = ""):  # fmt: skip
        self.kind = kind
        self.world = World()
        hub = HubOptions(hub_url, hub_token, nick="crashcheck", timeout=30.0) if hub_url else None
        self.device = device = Device(
            DeviceOptions(storage=storage, ordering=ordering, network=False, run_dir=run_dir, hub=hub)
        )
        # The daemon's own clock (its quick-reboot rule, the timers, the Hub client's interval)
        # is the virtual one.
        device_module.time = SimpleNamespace(monotonic=self.world.clock)  # type: ignore[assignment]
        remote_module.time = SimpleNamespace(monotonic=self.world.clock)  # type: ignore[assignment]
        self.requests: SyncRequests | None = None
        self._idle_poll: tuple[Any, ...] | None = None
        if device.hub is not None:
            self.requests = SyncRequests(device.hub)
            client = device.hub.client
            reachable = client._connection
            client._connection = lambda: (  # type: ignore[method-assign]
                Unreachable(client.host, client.port) if self._hub_down() else reachable()
            )
        device.timers = device.executor.timers = device_module.Timers(now=self.world.clock)
        runner = device.runner
        runner.ops = MountsOnPaper()
        runner.runc = NoRunc()  # type: ignore[assignment]
        self._start = runner.start
        runner.start = self._start_container  # type: ignore[method-assign]
        device.submit = self._submit  # type: ignore[method-assign]
        self.api = CtrlApi(device)
        self.events = 0
        self._acted_in_boot = 0

    # ------------------------------------------------------------------ containers

    def _start_container(self, rev: str, spec: Container) -> Event:
        first = self._start(rev, spec)
        if isinstance(first, ContainerStarted):
            outcome = self._outcome(rev, spec.name)
            _, *later = container_events(str(spec.status_goal), outcome)
            for kind in later:
                if kind is ContainerExited:
                    self.world.later(1.0, ContainerExited(spec.name, 1.0, 1), self.device.boots)
                else:
                    self.world.later(1.0, kind(spec.name), self.device.boots, signal=True)
        return first

    def _outcome(self, rev: str, name: str) -> StartOutcome:
        kind = self.kind
        if kind is None or rev != kind.rev:
            return StartOutcome.OK
        if name in kind.crashes:
            return StartOutcome.CRASHES
        if name in kind.never_ready:
            return StartOutcome.NEVER_READY
        return StartOutcome.OK

    def _submit(self, event: Event, timeout: float = 120.0) -> Any:
        reply = _HeldReply()
        self.device._queue.put(_Item(event, reply))
        return reply.result(timeout)

    def _handle(self, item: _Item) -> None:
        if item.event is not None:
            self.device._handle_item(item)
        if isinstance(item.reply, _HeldReply):
            item.reply.release()

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict[str, Any]:
        """Boot and run to quiescence; what the invariants need."""
        device = self.device
        device.storage.init_layout()
        (device.storage.trails_dir / "locals").mkdir(exist_ok=True)
        error = None
        try:
            device._boot()
            self._settle()
        except EnvCorrupt as exc:  # the bootloader has nothing to boot (pvsim says the same)
            error = f"I1 no bootable revision: boot env unreadable (torn write): {exc}"
        except (DeviceError, RuntimeError) as exc:
            error = f"I5 {exc}"
        updater = device.updater
        try:
            env = device.boot_files.env.load()
        except EnvCorrupt:
            env = {}
        return {
            "running": updater.running_rev if updater is not None else None,
            "pv_rev": env.get("pv_rev", ""),
            "pv_try": env.get("pv_try", ""),
            "boots": device.boots,
            "error": error,
            "failures": device.failures,
            "last_failure": device.last_failure,
        }

    def _settle(self) -> None:
        device = self.device
        while True:
            if device.boots > MAX_BOOTS + 1:
                raise RuntimeError(f"reboot loop: {device.boots} boots without quiescence")
            try:
                item = device._queue.get_nowait()
            except queue.Empty:
                item = None
            if item is not None:
                self._count()
                self._handle(item)
                continue
            if self.requests:  # the Hub client's next request, once the engine is idle
                self._count()
                self.requests.run_next()
                continue
            if self._next_in_time():
                continue
            if self._acted_in_boot != device.boots:
                self._acted_in_boot = device.boots
                self._act()
                continue
            return

    def _next_in_time(self) -> bool:
        """Let time pass to the next container event, timer or periodic Hub request; False when
        there is none."""
        device, world = self.device, self.world
        delay = device.timers.next_delay()
        timer_at = None if delay is None else world.now + delay
        later_at = world.next_at()
        hub_at = self._hub_tick_at()
        if hub_at is not None and all(t is None or hub_at <= t for t in (timer_at, later_at)):
            self._count()
            world.now = max(world.now, hub_at)
            self._hub_tick()
            return True
        if timer_at is None and later_at is None:
            return False
        self._count()
        if later_at is not None and (timer_at is None or later_at <= timer_at):
            entry = world.pop()
            world.now = max(world.now, entry.at)
            if entry.boot == device.boots:  # a container of an earlier boot is gone
                reply: Future[Any] | None = Future() if entry.signal else None
                device._handle_item(_Item(entry.event, reply, entry.boot))
            return True
        assert timer_at is not None
        world.now = max(world.now, timer_at)
        for name in device.timers.due():
            device._guarded(TimerFired(name), None)
        return True

    # ------------------------------------------------------------------ the Hub client

    def _hub_down(self) -> bool:
        updater = self.device.updater
        return bool(
            self.kind is not None and self.kind.hub_down_in_testing
            and updater is not None and updater.phase is Phase.TESTING
        )  # fmt: skip

    def _idle_snapshot(self) -> tuple[Any, ...]:
        updater, link = self.device.updater, self.device.hub
        assert updater is not None and link is not None
        return (self.device.boots, updater.phase, updater.running_rev, tuple(sorted(link._unsent)))

    def _hub_tick_at(self) -> float | None:
        """When the Hub client's next periodic request is due (virtual time), or None when it
        makes none: the engine neither watches the Hub nor takes steps, or it is idle and the
        last poll changed nothing (a device that stays idle would poll forever: that is quiet)."""
        device, link = self.device, self.device.hub
        updater = device.updater
        if link is None or updater is None or updater.finished:
            return None
        if not (updater.watches_hub or updater.accepts_remote_steps):
            return None
        if not updater.watches_hub and self._idle_poll == self._idle_snapshot():
            return None
        return link._next_tick

    def _hub_tick(self) -> None:
        updater = self.device.updater
        if updater is not None and not updater.watches_hub:
            self._idle_poll = self._idle_snapshot()
        self.device._hub_tick()

    def _count(self) -> None:
        self.events += 1
        if self.events > MAX_EVENTS:
            raise RuntimeError("no quiescence: event limit reached")

    # ------------------------------------------------------------------ the person at pv-ctrl

    def _act(self) -> None:
        """The operator's requests, made from a thread of their own as pv-ctrl's request threads
        do; this thread handles what they queue, one at a time, until they are answered."""
        if self.kind is None or self.kind.hub:  # a Hub step: nobody at pv-ctrl
            return
        done = threading.Event()
        failure: list[BaseException] = []

        def requests() -> None:
            try:
                self._requests()
            except BaseException as exc:  # reported by the engine thread below
                failure.append(exc)
            finally:
                done.set()

        threading.Thread(target=requests, name="pv-ctrl-operator", daemon=True).start()
        device = self.device
        while not done.is_set() or not device._queue.empty():
            try:
                item = device._queue.get(timeout=0.01)
            except queue.Empty:
                continue
            self._count()
            self._handle(item)
        if failure:
            raise failure[0]

    def _requests(self) -> None:
        """What the person asks, in order. They remember a final record (their notebook, outside
        the storage folder, as the Hub keeps a step's record in pvsim) and never run that update
        again, even once GC has removed its trail."""
        kind = self.kind
        assert kind is not None
        api, storage = self.api, self.device.storage
        record = _read_record(storage, kind.rev) or self.noted()
        if record is not None and record.is_final:
            self.note(record)
        if kind.gc_base:
            api.post_command(canonical.dump_bytes({"op": "RUN_GC", "payload": ""}))
        if record is not None and record.status is not Status.NEW:
            return
        if not storage.has_state(kind.rev):
            for sha, data in sorted(kind.objects.items()):
                api.put_object(sha, io.BytesIO(data), len(data))
            body = canonical.dump_bytes(dict(kind.state.entries))
            name = kind.rev.removeprefix("locals/")
            api.put_step(name, io.BytesIO(body), len(body), "application/json")
        api.post_command(canonical.dump_bytes({"op": kind.op, "payload": kind.rev}))

    @property
    def notebook(self) -> Path:
        return self.device.storage.root.parent / NOTEBOOK

    def noted(self) -> Progress | None:
        return read_notebook(self.notebook)

    def note(self, record: Progress) -> None:
        self.notebook.write_bytes(canonical.dump_bytes(dict(record.to_json())))


def read_notebook(path: Path) -> Progress | None:
    """The final record the person at pv-ctrl saw, if any."""
    if not path.is_file():
        return None
    return Progress.from_json(canonical.loads_object(path.read_bytes(), source=str(path)), source=str(path))


def _read_record(storage: Storage, rev: str) -> Progress | None:
    try:
        raw = storage.read_progress(rev)
        return Progress.from_json(raw, source="progress") if raw is not None else None
    except (OSError, PvError):  # an unreadable record: as none
        return None


def run_daemon(storage: Path, run_dir: Path, kind: RealKind | None, ordering: str,
               hub_url: str | None = None, hub_token: str = "") -> None:  # fmt: skip
    """The body of one daemon process: run, write result.json next to the storage folder."""
    logging.disable(logging.CRITICAL)
    result = CrashDaemon(storage, run_dir, kind, ordering, hub_url, hub_token).run()
    (storage.parent / RESULT).write_text(json.dumps(result))
