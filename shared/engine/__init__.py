"""The update engine: Pantavisor's update, try-boot, commit and rollback as a sans-IO state machine.

One `Updater` per device holds that device's update logic and nothing else: no files, no clock,
no sockets. Events go in, commands come out (see `events.py` and `commands.py`). Every backend
runs the same loop:

    updater, commands = Updater.boot(disk_view, config)     # a boot: what survived on disk
    while True:
        for command in commands:
            event = backend.execute(command)    # durable ones complete (synced) before the next
            if event is not None:
                queue.append(event)
            if isinstance(command, Reboot):     # terminal: boot again from the disk
                ...
        commands = updater.handle(queue.popleft() if queue else backend.wait_event())

What a backend provides
- At boot, a `DiskView`: the revision the bootloader booted (`booted_rev`, the cmdline pv_rev),
  the env's `pv_rev` / `pv_try`, each trail's parsed state / progress record / done marker, the
  object pool's sha set and storage figures. The bootloader's own choice is `bootloader.choose_boot`.
- Then events (all in `events.py`):
  * Hub: `PendingSteps` after each poll while `updater.accepts_remote_steps` (poll every
    `config.updater_interval`); `MetadataReceived`/`MetadataFailed` for `FetchMetadata`;
    `ObjectFetched` for `FetchObject`; `HubReached` / `HubRequestFailed` for the outcome of Hub
    requests (a report, a poll) while `updater.watches_hub`.
  * Containers: `ContainerMounted` / `ContainerStarted` / `ContainerReady` / `ContainerExited` for
    the containers it started; `ContainersStopped` for `StopContainers`.
  * Timers: `TimerFired(name)` for each `ArmTimer` that ran out and was not cancelled or re-armed.
  * Storage: `GcDone` for `RunGc`; optionally `WaitTick` (storage figures) for threshold GC.
  * pv-ctrl: `ObjectPut`, `LocalStepStarted`, `LocalStepUploaded`, `CtrlCommand`; answer with the `CtrlReply`
    the engine returns (a backend that answers a second, queued command asks
    `updater.ctrl_decision(op, command_queued=True)`; a ready signal, `updater.signal_decision`).

Durable commands (`command.durable` is True): PersistProgress, WriteTrail, LinkObjects, SetBootEnv,
WriteDoneMarker, DeleteRevision, RunGc. Execute them in order, each synced before the next.
`Reboot` ends this Updater. Everything else may be lost on a power cut.

The engine has no clock: it arms and cancels named timers and reacts to `TimerFired`. Pantavisor's
2 s WAIT poll is replaced by events (docs/engine.md). Events a durable command produces (GcDone,
ObjectFetched, ...) are handed back before any other event, as in the loop above.

Modules: progress (records, statuses, messages), config (Config, §6 keys), events, commands,
driver (the interpreter contract every backend follows: answers, their order, the container
script, timers, the DiskView), bootloader (the latch), containers (groups, goals, auto-recovery),
gc (what GC keeps and removes), ctrl (pv-ctrl decisions), updater (the transition table and
Updater), diagram (docs generator).
"""

from shared.engine.config import DEFAULT_CONFIG, BootLatch, Config, Ordering
from shared.engine.progress import Msg, Progress, Status

__all__ = [
    "DEFAULT_CONFIG",
    "BootLatch",
    "Config",
    "Msg",
    "Ordering",
    "Progress",
    "Status",
]
