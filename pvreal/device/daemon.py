"""The device daemon: shared.engine's Updater driven by real effects (docs/device.md).

One thread owns the engine. Everything else (the control sockets' request threads, the container
watcher) hands it events through one queue and, for pv-ctrl requests, waits for the engine's
`CtrlReply`. The loop is the one of shared/engine/__init__.py:

    boot: latch → DiskView → Updater.boot → commands
    execute each command in order (durable ones are synced before the next); the events they
    produce are fed back before anything else; then wait for the next queued event or timer.

A `Reboot` outside QEMU stops every container (lenient, then forced), unmounts, forgets the
timers and the container events of the old boot, and boots again through the same latch on
disk: a new Updater built from what survived, exactly as after a real reboot. POWEROFF stops the
daemon.

No input stops the loop: pv-ctrl refuses what the engine could not store, and should a command
still fail (a bug, a disk error), the failure is logged, counted in `status()` (`failures`,
`last_failure`), answered with 500 if a request waits for it, and the device reboots to recover,
since the engine's view and the disk may then disagree. Only a failing boot stops the daemon.
One daemon per storage folder: `Device()` takes the folder's lock (`pvreal.device.storagelock`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvreal.device import machine, report
from pvreal.device.clock import Timers
from pvreal.device.containers import ContainerRunner
from pvreal.device.executor import Executor, storage_prefix
from pvreal.device.latch import BootFiles, apply_latch, boot_files
from pvreal.device.secureboot import TrustOptions, with_verifier
from pvreal.device.storagelock import StorageLock
from pvreal.storage import Storage
from shared.engine.commands import Command, CtrlReply, Reboot, StopContainers
from shared.engine.config import Config, Ordering
from shared.engine.ctrl import CtrlDecision, ctrl_decision
from shared.engine.events import (
    ContainerExited,
    ContainerMounted,
    ContainerReady,
    ContainerStarted,
    CtrlCommand,
    Event,
    GcDone,
    TimerFired,
)
from shared.engine.updater import Updater

if TYPE_CHECKING:
    from pvreal.device.remote import HubLink

log = logging.getLogger(__name__)
RUN_ROOT = Path("/run/pvtwin")
REPLY_TIMEOUT_S = 120.0
MAX_BOOT_LOOP = 8  # consecutive boots that reboot at once: give up instead of spinning
_CONTAINER_EVENTS = (ContainerExited, ContainerStarted, ContainerMounted, ContainerReady)


class DeviceError(Exception):
    """The daemon cannot go on (e.g. every revision it can boot is unbootable)."""


@dataclass
class _Item:
    event: Event | None  # None: wake up (shutdown)
    reply: Future[CtrlReply] | None = None
    boot: int = 0  # the boot it belongs to (container events of an older boot are dropped)


@dataclass
class HubOptions:
    url: str
    token: str  # the fleet's registration token (used once; the device keeps its credentials)
    nick: str | None = None
    timeout: float | None = None  # None: pvreal.device.remote.REQUEST_TIMEOUT_S


@dataclass
class DeviceOptions:
    storage: Path
    bootloader: str = "uboot"
    ordering: str = Ordering.HARDENED.value
    config: Mapping[str, Any] = field(default_factory=dict)  # Pantavisor keys (overrides)
    run_dir: Path | None = None  # default /run/pvtwin/<prefix>
    network: bool = True
    subnet: str | None = None
    trust: TrustOptions = field(default_factory=TrustOptions)  # pvs@2 trust material (§1.8)
    device_netns: str | None = ""  # "": a netns of its own; None: the current one (QEMU PID 1)
    hub: HubOptions | None = None  # remote mode: updates come from this Hub (pvreal.device.remote)
    # Pantavisor reads `pv_quickboot` from its environment (getenv, state.c); so does this daemon
    quickboot: bool = field(default_factory=lambda: "pv_quickboot" in os.environ)


class Device:
    """One real device. `start()` boots it in a thread; `stop()` shuts it down cleanly."""

    def __init__(self, options: DeviceOptions):
        self.options = options
        # First of all: a second daemon on this storage must not touch anything of the first.
        self.storage_lock = StorageLock(options.storage).acquire()
        config = Config.from_mapping(
            {**options.config, "PVTWIN_ORDERING": options.ordering,
             "PV_BOOTLOADER_TYPE": options.bootloader},
            source="device config",
        )
        config = replace(config, quickboot=options.quickboot)
        self.storage = Storage(options.storage, reserved_percent=config.gc_reserved)
        self.prefix = storage_prefix(options.storage)
        self.run_dir = Path(options.run_dir or RUN_ROOT / self.prefix)
        # Container sockets: a short path of their own (AF_UNIX paths stop at 107 bytes).
        self.ctrl_dir = RUN_ROOT / self.prefix / "ctrl"
        # Signatures are checked for real: at boot by the engine, on intake and LOCAL_RUN by
        # pv-ctrl, all through this one verifier (trust read once, certificates at wall time).
        self.config = with_verifier(config, options.trust.load())
        self.boot_files: BootFiles = boot_files(
            self.storage.root / "boot", options.bootloader, options.ordering
        )
        self.timers = Timers()
        self.network = None
        if options.network:
            from pvreal.netns import DEFAULT_SUBNET, DeviceNetwork

            self.network = DeviceNetwork(
                self.prefix, options.subnet or DEFAULT_SUBNET, device_netns=options.device_netns
            )
        self.runner = ContainerRunner(
            self.storage,
            self.run_dir / "containers",
            self.prefix,
            self._emit,
            network=self.network,
            ctrl_opener=None,  # set by the control server (pvreal.ctrl.server.serve_device)
        )
        self.hub: HubLink | None = None
        if options.hub is not None:
            # imported only here: a device without a Hub does not load the Hub client at boot
            # (docs/qemu.md, "Fifth pass")
            from pvreal.device.remote import HubLink

            h = options.hub
            self.hub = HubLink(h.url, h.token, self.storage, self.config, self.post,
                               watching=self._watches_hub, nick=h.nick, timeout=h.timeout)  # fmt: skip
        self.executor = Executor(self.storage, self.boot_files, self.timers, self.runner,
                                 self.config, self.hub.execute if self.hub else None)  # fmt: skip
        self.updater: Updater | None = None
        self.booted_rev = ""
        self.boots = 0
        self.last_gc: dict[str, Any] | None = None
        self._queue: queue.Queue[_Item] = queue.Queue()
        self._queued_commands = 0
        self._lock = threading.Lock()
        self._status: dict[str, Any] = {}
        self._stopping = threading.Event()
        self._booted = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        # What the loop is busy with right now, for `status` (the engine's phase stays IDLE while
        # a REBOOT_DEVICE stops containers, for instance): None when it waits for events.
        self.activity: str | None = None
        self._rebooting = False
        self.failures = 0
        self.last_failure: str | None = None

    # ================================================================== outside API

    def start(self) -> None:
        """Prepare the machine, boot, and run the engine loop in a thread."""
        self._prepare()
        if self.hub is not None:
            self.hub.start()
        self._thread = threading.Thread(target=self._main, name="pv-engine", daemon=True)
        self._thread.start()

    def wait_booted(self, timeout: float = 60.0) -> bool:
        return self._booted.wait(timeout)

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def stop(self) -> None:
        """Clean shutdown: containers stopped, mounts and network namespaces removed."""
        self._stopping.set()
        self._queue.put(_Item(None))
        self.join()
        if self.hub is not None:
            self.hub.close()
        self._shutdown_machine()
        self.storage_lock.release()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, event: Event, timeout: float = REPLY_TIMEOUT_S) -> CtrlReply:
        """Hand a pv-ctrl event to the engine and wait for its answer."""
        if isinstance(event, CtrlCommand):
            with self._lock:
                busy = self._queued_commands > 0
                if not busy:
                    self._queued_commands += 1
            if busy:
                decision = self._queued_decision(event.op, event.payload)
                return CtrlReply(decision.status, decision.retry_after, decision.reason)
        reply: Future[CtrlReply] = Future()
        self._queue.put(_Item(event, reply))
        try:
            return reply.result(timeout)
        except TimeoutError:
            return CtrlReply(503, 10, "the device did not answer in time")

    def _queued_decision(self, op: str, payload: str | None = None) -> CtrlDecision:
        """The answer to a command while another is queued: asked of the engine itself, with the
        inputs it decides every command with (read from this request thread: a stale answer is
        what a queued command would have got a moment earlier anyway)."""
        updater = self.updater
        if updater is None:  # not booted yet: no update, no local mode
            return ctrl_decision(op, update_active=False, command_queued=True, payload=payload)
        return updater.ctrl_decision(op, command_queued=True, payload=payload)

    def post(self, event: Event) -> None:
        """Queue an event without waiting (the ready signal, container exits)."""
        self._queue.put(_Item(event, None, self.boots))

    def status(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._status)

    def inspection_lines(self) -> list[str]:
        """What a person needs to look inside this device by hand (pvreal.device.report)."""
        return report.inspection_lines(self)

    # ================================================================== the loop

    def _prepare(self) -> None:
        machine.prepare(self)

    def _main(self) -> None:
        try:
            self._boot()
            while not self._stopping.is_set():
                delay = self.timers.next_delay()
                try:
                    item = self._queue.get(timeout=0.5 if delay is None else min(delay, 0.5))
                except queue.Empty:
                    item = None
                for name in self.timers.due():
                    self._guarded(TimerFired(name), None)
                if item is not None and item.event is not None:
                    self._handle_item(item)
                self._hub_tick()
                self._publish()
        except BaseException as exc:  # the engine thread must never die silently
            log.exception("device loop stopped")
            self.error = exc
            self._stopping.set()
            self._publish()

    def _watches_hub(self) -> bool:
        u = self.updater  # read from the Hub client's threads: a moment stale at worst (R5)
        return u is not None and u.watches_hub

    def _hub_tick(self) -> None:
        """Remote mode: let the Hub client make its periodic request, of the kind the engine's
        phase calls for (its answers come back through the queue)."""
        u = self.updater
        if self.hub is not None and u is not None and not u.finished:
            self.hub.tick(accepts_steps=u.accepts_remote_steps, watches_hub=u.watches_hub,
                          running_rev=u.running_rev)  # fmt: skip

    def updater_handle(self, event: Event) -> list[Command]:
        assert self.updater is not None
        return self.updater.handle(event)

    def _handle_item(self, item: _Item) -> None:
        event = item.event
        assert event is not None
        if isinstance(event, _CONTAINER_EVENTS) and item.reply is None and item.boot != self.boots:
            return  # from a boot that is over
        if isinstance(event, ContainerReady) and item.reply is not None:
            # pv-ctrl's /signal: the engine says whether this container may signal ready
            assert self.updater is not None
            decision = self.updater.signal_decision(event.name)
            if not decision.accepted:
                item.reply.set_result(
                    CtrlReply(decision.status, decision.retry_after, decision.reason)
                )
                return
        # A reboot that follows a pv-ctrl request (REBOOT_DEVICE, LOCAL_RUN_COMMIT, a failed
        # upload's recovery, ...) is never a boot loop, however soon after the boot it comes:
        # the next one needs another request. Only reboots the device makes by itself count.
        self._requested = item.reply is not None
        try:
            self._guarded(event, item.reply)
        finally:
            self._requested = False
            if isinstance(event, CtrlCommand):
                with self._lock:
                    self._queued_commands = max(0, self._queued_commands - 1)
            if item.reply is not None and not item.reply.done():
                item.reply.set_result(CtrlReply(200))

    def _guarded(self, event: Event, reply: Future[CtrlReply] | None) -> None:
        """Feed `event` and run what follows; a failure is reported and recovered from by a
        reboot instead of ending the loop (module docstring)."""
        try:
            self._run(self.updater_handle(event), reply)
        except Exception as exc:
            what = type(event).__name__
            log.exception("%s failed; rebooting to recover", what)
            self.failures += 1
            self.last_failure = f"{what}: {exc}"
            if reply is not None and not reply.done():
                reply.set_result(CtrlReply(500, None, f"internal error: {exc}"))
            self._reboot(Reboot(f"recovering from a failed {what}"))

    def _run(self, commands: Iterable[Command], reply: Future[CtrlReply] | None) -> None:
        """Execute commands in order; events they produce are fed back first. A Reboot ends the
        batch: the machine reboots and a new Updater takes over."""
        work: deque[Command] = deque(commands)
        events: deque[Event] = deque()
        while work or events:
            if not work:
                work.extend(self.updater_handle(events.popleft()))
                continue
            command = work.popleft()
            if isinstance(command, CtrlReply):
                if reply is not None and not reply.done():
                    reply.set_result(command)
                continue
            if isinstance(command, Reboot):
                if reply is not None and not reply.done():
                    reply.set_result(CtrlReply(200))
                self._reboot(command)
                return
            if isinstance(command, StopContainers):
                self._set_activity("stopping containers " + ", ".join(command.names))
            try:
                produced = self.executor.execute(command)
            finally:
                if isinstance(command, StopContainers):
                    self._set_activity(None)
            for event in produced:
                if isinstance(event, GcDone):
                    self.last_gc = {
                        "reclaimed": event.reclaimed,
                        "removed_revisions": sorted(event.removed_revisions),
                        "removed_objects": len(event.removed_objects),
                    }
            events.extend(produced)

    # ================================================================== boot and reboot

    def _boot(self, depth: int = 0) -> None:
        if depth >= MAX_BOOT_LOOP:
            raise DeviceError(f"{MAX_BOOT_LOOP} boots in a row rebooted at once; giving up")
        self.boots += 1
        self._set_activity("booting")
        self.storage.objects.discard_partials()
        rev, env = self._choose_boot()
        self.booted_rev = rev
        with contextlib.suppress(Exception):
            self.storage.set_current(rev)
        disk = self.executor.disk_view(rev, env)
        log.info("boot %d: %s (pv_rev=%s pv_try=%s)", self.boots, rev,
                 env.get("pv_rev", ""), env.get("pv_try", ""))
        self.updater, commands = Updater.boot(disk, self.config)
        self._boot_depth, self._booted_at = depth, time.monotonic()
        self._rebooting = False
        self._set_activity("starting containers")
        self._run(commands, None)
        self._booted.set()
        self._set_activity(None)

    def _choose_boot(self) -> tuple[str, dict[str, str]]:
        """The revision this boot runs and the Pantavisor env. Outside QEMU the daemon is its own
        bootloader; PID 1 in QEMU overrides this (GRUB already chose: pvreal.device.guest)."""
        choice, env = apply_latch(self.boot_files, self.config)
        return choice.rev, env

    def _reboot(self, command: Reboot) -> None:
        log.info("reboot: %s", command.reason)
        self._rebooting = True
        self._set_activity(f"stopping containers to {'power off' if command.poweroff else 'reboot'}"
                           f" ({command.reason})")
        self.runner.stop_all(self.config.stop_grace)
        self.timers.clear()
        if self.hub is not None:
            self.hub.rebooted()
        self.last_reboot = command.reason
        if command.poweroff:
            self._set_activity("powered off")
            self._stopping.set()
            return
        # A boot that reboots by itself within a second is a boot loop in the making: count them.
        quick = not self._requested and time.monotonic() - self._booted_at < 1.0
        self._requested = False
        self._boot(self._boot_depth + 1 if quick else 0)

    _booted_at = 0.0
    _boot_depth = 0
    _requested = False  # the event being handled is a pv-ctrl command
    last_reboot = ""

    def _shutdown_machine(self) -> None:
        machine.shut_down(self)

    # ================================================================== helpers

    def _emit(self, event: Event) -> None:
        self.post(event)

    def _set_activity(self, activity: str | None) -> None:
        self.activity = activity
        self._publish()

    def _publish(self) -> None:
        status = report.status_of(self)
        with self._lock:
            self._status = status
