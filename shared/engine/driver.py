"""The interpreter contract: what every backend does with each command, and what it feeds back.

A backend (pvsim's crashcheck device and fleet model, pvreal's executor and QEMU guest) is an
interpreter of `commands.py`. They differ in how long things take and in what fails; they must not
differ in *which* events come back and in *which order*, or the engine is tested against event
orders no device produces. `tests/test_interpreter_conformance.py` runs one command script through
each backend and compares the events and the disks.

The rules, numbered; the code below states the ones that are more than a sentence:

D1 Durable commands (`command.durable`) run in the order given, each one complete (written and
   synced) before the next starts. A power cut falls between two of them, or inside a tearable one
   (`TEARABLE`): a torn in-place env write leaves no readable env, a torn LinkObjects links part of
   the objects, a torn RunGc deletes the trails but not yet the objects.
D2 The events a command answers with at once (`ANSWERS`) are fed back in command order and before
   any event from outside (a timer, a container, the Hub, pv-ctrl). Later answers (a container's
   ready signal or exit, a fired timer, a finished download) come when they happen.
D3 `StartContainers`: for each name in order, the container's script (`container_events`). The
   first event of a script is the immediate answer; the rest come later. A name the revision on
   disk does not have is a start that FAILS.
D4 Timers: `ArmTimer` (re)arms a name, replacing an earlier deadline; `CancelTimer` forgets it; a
   replaced or cancelled arming never fires (`TimerGenerations`). A power cut or reboot loses all.
D5 `RunGc` deletes what `gc.plan_gc` says, for the trails' linked objects, and answers `GcDone`
   with the removed sets (the reclaimed bytes and storage figures are the backend's own).
D6 `Reboot` is terminal: nothing after it in the batch runs; the backend boots again from what
   survived (`disk_view`), through the bootloader latch (`bootloader.choose_boot`).
D7 Non-durable commands may be lost by a power cut; Hub commands (ReportProgress, FetchMetadata,
   FetchObject) are answered only by backends that have a Hub; a real Hub's answer comes when the
   request ends (pvreal's Hub client, pvreal/device/remote.py, answers from worker
   threads through the daemon's queue; answers to requests of an earlier boot are lost). A request
   that got no answer is a failure event (MetadataFailed, ObjectFetched(ok=False),
   HubRequestFailed), never an error of the backend; any HTTP answer, whatever its status, means
   the Hub was reached. The outcome of a Hub request (HubReached / HubRequestFailed) is fed while
   the engine watches the Hub (`Updater.watches_hub`), which every other phase ignores (R5).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import Enum

from shared.engine import commands as C
from shared.engine import events as E

TEARABLE: tuple[type[C.Command], ...] = (C.SetBootEnv, C.LinkObjects, C.RunGc)

# D2: the events each command may be answered with (at once or later), and nothing else
ANSWERS: Mapping[type[C.Command], tuple[type[E.Event], ...]] = {
    C.PersistProgress: (),
    C.WriteTrail: (),
    C.LinkObjects: (),
    C.SetBootEnv: (),
    C.WriteDoneMarker: (),
    C.DeleteRevision: (),
    C.RunGc: (E.GcDone,),
    C.ReportProgress: (E.HubReached, E.HubRequestFailed),
    C.FetchMetadata: (E.MetadataReceived, E.MetadataFailed),
    C.FetchObject: (E.ObjectFetched,),
    C.SwitchRevision: (),
    C.StartContainers: (E.ContainerMounted, E.ContainerStarted, E.ContainerReady, E.ContainerExited),
    C.StopContainers: (E.ContainersStopped,),
    C.ArmTimer: (E.TimerFired,),
    C.CancelTimer: (),
    C.CtrlReply: (),
    C.Reboot: (),
}


class StartOutcome(Enum):
    """What becomes of one container a backend starts (the backend's world decides which)."""

    OK = "ok"  # mounts, starts, signals ready if its goal is READY
    NEVER_READY = "never-ready"  # starts but never signals ready
    CRASHES = "crashes"  # starts, then its init exits
    FAILS = "fails"  # cannot be mounted or started (or is not in the revision)


ContainerEventType = (
    type[E.ContainerMounted] | type[E.ContainerStarted] | type[E.ContainerReady] | type[E.ContainerExited]
)
_MOUNTED_ONLY: tuple[ContainerEventType, ...] = (E.ContainerMounted,)
_FAILED: tuple[ContainerEventType, ...] = (E.ContainerExited,)
_STARTED: tuple[ContainerEventType, ...] = (E.ContainerStarted,)
_CRASHED: tuple[ContainerEventType, ...] = (E.ContainerStarted, E.ContainerExited)
_READY: tuple[ContainerEventType, ...] = (E.ContainerStarted, E.ContainerReady)


def container_events(goal: str, outcome: StartOutcome) -> tuple[ContainerEventType, ...]:
    """D3: the events one started container feeds back, in order (`goal`: its status goal).

    As Pantavisor (§4.2): the volumes are mounted first; a MOUNTED goal stops there and the
    container never runs, so it cannot crash or signal. Otherwise mounting is a step of the start
    and is not reported on its own: the container is STARTED once its init runs, then READY when
    it signals (goal READY only, §4.1), or it exits. A failed mount or start is an exit."""
    if outcome is StartOutcome.FAILS:
        return _FAILED
    if goal == "MOUNTED":
        return _MOUNTED_ONLY
    if outcome is StartOutcome.CRASHES:
        return _CRASHED
    if goal == "READY" and outcome is StartOutcome.OK:
        return _READY
    return _STARTED


class TimerGenerations(dict[str, int]):
    """D4 for backends that schedule each arming as an entry of their own queue: name → the
    generation (any increasing number) of its latest arming. A queue entry carries the generation
    it was armed with; `fire` says whether it still counts. (A backend that keeps one deadline per
    name, as pvreal's clock does, replaces it in place and needs no generations.)"""

    __slots__ = ()

    # arm(name, generation): dict.__setitem__ itself, without a Python frame (pvsim's hot path)
    arm = dict.__setitem__

    def cancel(self, name: str) -> None:
        self.pop(name, None)

    def live(self, name: str, generation: int) -> bool:
        return self.get(name) == generation

    def fire(self, name: str, generation: int) -> bool:
        """True when this is the latest arming of `name`; the timer is then disarmed."""
        if self.get(name) != generation:
            return False
        del self[name]
        return True


def disk_view(
    booted_rev: str,
    env: Mapping[str, str] | None,
    trails: Mapping[str, E.TrailView],
    objects: Iterable[str],
    storage: E.StorageStats | None,
) -> E.DiskView:
    """D6: what a booting engine is given, from what survived (`env` None: unreadable)."""
    env = env or {}
    return E.DiskView(
        booted_rev,
        env.get("pv_rev", ""),
        env.get("pv_try", ""),
        dict(trails),  # the engine keeps the trails as they were at boot
        objects if type(objects) is frozenset else frozenset(objects),
        storage,
    )
