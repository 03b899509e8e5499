"""The update kinds `pvsim crashcheck` runs: small revisions, what goes wrong in each kind
(`Behaviour`), the settled device each run starts from, and the person at pv-ctrl for the kinds
that need one. The runner is `pvsim.crashcheck`; the revisions and the invariants are shared
(`shared.crashrevisions`, `shared.engine.invariants`) with `pvreal crashcheck`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pvsim.memdevice import Behaviour, MemDevice, MemDisk
from shared.crashrevisions import build_state  # the revisions are pvreal crashcheck's too
from shared.engine.config import Config
from shared.engine.events import CtrlCommand, Event, LocalStepStarted, LocalStepUploaded, TrailView
from shared.engine.invariants import NEW, OLD
from shared.engine.progress import Msg, Progress, Status
from shared.state import State

# ----------------------------------------------------------------------------- kinds


@dataclass(frozen=True)
class Kind:
    name: str
    description: str
    new_rev: str
    new_state: State
    expected: str  # outcome without a power cut: OLD or NEW
    expected_status: Status
    behaviour: Behaviour = field(default_factory=Behaviour)
    signature_error: str | None = None
    local: bool = False  # LOCAL_RUN_COMMIT through pv-ctrl instead of a Hub step
    gc_base: bool = False  # storage nearly full of older revisions; RUN_GC whenever quiet


def kinds() -> dict[str, Kind]:
    base = build_state()
    app2 = build_state(app="a2")
    bsp2 = build_state(kernel="k2")
    ready2 = build_state(app="a2", app_goal="READY")
    kernel_sha = bsp2.objects["bsp/kernel.img"]
    gc_new = build_state(kernel="k3")
    sizes = {sha: 300_000 for sha in (bsp2.object_shas() | gc_new.object_shas())}
    items = [
        Kind("app-good", "app-only update, non-reboot", "1", app2, NEW, Status.UPDATED),
        Kind(
            "app-crash",
            "app-only update whose container keeps crashing",
            "1",
            app2,
            OLD,
            Status.ERROR,
            Behaviour(crashes=frozenset({("1", "app")})),
        ),
        Kind(
            "app-never-ready",
            "app with status goal READY that never signals ready",
            "1",
            ready2,
            OLD,
            Status.ERROR,
            Behaviour(never_ready=frozenset({("1", "app")})),
        ),
        Kind("bsp-good", "new kernel, reboot update", "1", bsp2, NEW, Status.DONE),
        Kind(
            "bsp-panic",
            "new kernel that panics at boot",
            "1",
            bsp2,
            OLD,
            Status.ERROR,
            Behaviour(panics=frozenset({"1"})),
        ),
        Kind(
            "system-container",
            "container with restart_policy system changed (reboot)",
            "1",
            build_state(sysc="s2"),
            NEW,
            Status.DONE,
        ),
        Kind(
            "system-container-crash",
            "system-policy container changed and crashing: try-boot, ERROR, rollback reboot",
            "1",
            build_state(sysc="s2"),
            OLD,
            Status.ERROR,
            Behaviour(crashes=frozenset({("1", "sysc")})),
        ),
        Kind(
            "bad-signature",
            "step whose signature does not verify",
            "1",
            bsp2,
            OLD,
            Status.WONTGO,
            signature_error=Msg.SIG_FAILED,
        ),
        Kind(
            "corrupt-object",
            "the Hub serves an object whose sha256 does not match",
            "1",
            bsp2,
            OLD,
            Status.WONTGO,
            Behaviour(corrupt_objects=frozenset({kernel_sha})),
        ),
        Kind(
            "hub-unreachable-testing",
            "every Hub request fails once the new kernel is TESTING",
            "1",
            bsp2,
            OLD,
            Status.ERROR,
            Behaviour(hub_fails_in_testing=True),
        ),
        Kind(
            "local-run-commit",
            "app update through pv-ctrl LOCAL_RUN_COMMIT (forced try-boot)",
            "locals/dev",
            app2,
            NEW,
            Status.DONE,
            local=True,
        ),
        Kind(
            "gc-during-update",
            "storage nearly full: the space check runs GC, then a kernel update",
            "2",
            gc_new,
            NEW,
            Status.DONE,
            Behaviour(object_sizes=sizes),
            gc_base=True,
        ),
    ]
    assert base is not None
    return {k.name: k for k in items}


# ----------------------------------------------------------------------------- base device


def base_storage(kind: Kind, config: Config) -> tuple[MemDisk, str]:
    """A settled device running its committed revision; returns (disk, old revision)."""
    old_state = build_state()
    objects = set(old_state.object_shas())
    trails = {"0": TrailView(old_state)}
    old = "0"
    total = 1 << 30
    if kind.gc_base:
        older = build_state(kernel="k2")
        objects |= older.object_shas()
        trails = {
            "0": TrailView(older, Progress.make(Status.DONE, Msg.FACTORY), True),
            "1": TrailView(old_state, Progress.make(Status.DONE, Msg.DONE), True),
        }
        old = "1"
        # Room for the update only once GC removed revision 0's kernel and pantavisor.
        used = sum(kind.behaviour.object_sizes.get(sha, 1000) for sha in objects)
        total = int((used + 300_000) / 0.95) + 1
    if kind.local:
        objects |= kind.new_state.object_shas()  # objects uploaded with PUT /objects before the step
    disk = MemDisk.settled(trails, objects, old, total=total)
    device = MemDevice(disk, config, kind.behaviour, [])
    outcome = device.run_boot()
    assert outcome == "quiet", f"base device for {kind.name} did not settle"
    return disk, old


def operator(kind: Kind) -> Callable[[MemDevice], list[Event]] | None:
    """A person at pv-ctrl: uploads the local step and runs it, again after a power cut; or,
    for the GC kind, asks for RUN_GC every time the device is quiet."""
    if kind.gc_base:
        return lambda device: [CtrlCommand("RUN_GC")]
    if not kind.local:
        return None
    rev, state = kind.new_rev, kind.new_state

    def act(device: MemDevice) -> list[Event]:
        trail = device.storage.trails.get(rev)
        record = trail.progress if trail is not None else None
        if record is not None and record.status is not Status.NEW:
            return []
        if trail is None or trail.state is None:
            # The PUT writes .pvr/json itself (backend I/O), then tells the engine.
            device.storage.write_trail(rev, state)
            return [
                LocalStepStarted(rev),
                LocalStepUploaded(rev, state),
                CtrlCommand("LOCAL_RUN_COMMIT", rev, state),
            ]
        return [CtrlCommand("LOCAL_RUN_COMMIT", rev, state)]

    return act
