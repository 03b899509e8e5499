"""The update kinds `pvreal crashcheck` runs: `pvsim crashcheck`'s kinds, as far as a daemon
without a Hub and outside QEMU can run them.

Most kinds are local steps: the person at pv-ctrl uploads the objects and the state
(`PUT /objects`, `PUT /steps/locals/NAME`) and runs it (`LOCAL_RUN`, or `LOCAL_RUN_COMMIT`). A
remote kind (`hub=True`) comes from a real Hub instead: the daemon runs in remote mode
(`pvreal device run --hub`), and the person at the Hub has published the update to it
(pvreal.crashcheck.hub). The revisions are pvsim's (`shared.crashrevisions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.crashrevisions import build_state, object_bytes
from shared.engine.invariants import NEW, OLD
from shared.engine.progress import Status
from shared.state import State

UPDATE = "locals/update"  # the revision every local kind updates to
HUB_REV = "1"  # the Hub's first step for a device whose factory revision is 0


@dataclass(frozen=True)
class RealKind:
    name: str  # pvsim crashcheck's kind of the same name
    description: str
    expected: str  # outcome without a kill: OLD or NEW
    expected_status: Status
    state: State
    objects: dict[str, bytes]  # sha → bytes of every object of `state`
    op: str = "LOCAL_RUN"
    crashes: frozenset[str] = frozenset()  # containers of the update whose init exits after start
    never_ready: frozenset[str] = frozenset()  # containers of the update that never signal ready
    gc_base: bool = False  # an older revision on disk too; RUN_GC whenever the device is quiet
    rev: str = UPDATE
    hub: bool = False  # remote mode: the update is a Hub step (revision `rev` on the Hub)
    hub_down_in_testing: bool = False  # no Hub request gets through while the engine is TESTING


def _update(kernel: str = "k1", app: str = "a1", sysc: str = "s1", app_goal: str = "") -> dict[str, Any]:
    return {"state": build_state(kernel, app, sysc, app_goal), "objects": object_bytes(kernel, app, sysc)}


def kinds() -> dict[str, RealKind]:
    items = [
        RealKind("app-good", "app-only update, non-reboot (LOCAL_RUN)", NEW, Status.UPDATED, **_update(app="a2")),
        RealKind(
            "app-crash", "app-only update whose container keeps crashing", OLD, Status.ERROR,
            crashes=frozenset({"app"}), **_update(app="a2"),
        ),
        RealKind(
            "app-never-ready", "app with status goal READY that never signals ready", OLD,
            Status.ERROR, never_ready=frozenset({"app"}), **_update(app="a2", app_goal="READY"),
        ),
        RealKind(
            "bsp-good", "new kernel, reboot update (a daemon restart here)", NEW, Status.DONE,
            **_update(kernel="k2"),
        ),
        RealKind(
            "system-container", "container with restart_policy system changed (reboot)", NEW,
            Status.DONE, **_update(sysc="s2"),
        ),
        RealKind(
            "system-container-crash",
            "system-policy container changed and crashing: try-boot, ERROR, rollback reboot",
            OLD, Status.ERROR, crashes=frozenset({"sysc"}), **_update(sysc="s2"),
        ),
        RealKind(
            "local-run-commit", "app update through pv-ctrl LOCAL_RUN_COMMIT (forced try-boot)",
            NEW, Status.DONE, op="LOCAL_RUN_COMMIT", **_update(app="a2"),
        ),
        RealKind(
            "gc-during-update",
            "RUN_GC whenever quiet (an older revision to collect), then a kernel update",
            NEW, Status.DONE, gc_base=True, **_update(kernel="k3"),
        ),
        RealKind(
            "hub-unreachable-testing",
            "new kernel from a real Hub; every Hub request fails once it is TESTING",
            OLD, Status.ERROR, hub=True, hub_down_in_testing=True, rev=HUB_REV,
            **_update(kernel="k2"),
        ),
    ]
    return {k.name: k for k in items}


# pvsim crashcheck's kinds this daemon cannot run, and why
LEFT_OUT = {
    "bsp-panic": "a kernel that panics needs a kernel: QEMU (pvreal qemu run --scenario ...)",
    "bad-signature": "pv-ctrl refuses the state at PUT (422) before the engine writes anything "
    "but the upload's NEW record, which it deletes again",
    "corrupt-object": "pv-ctrl re-hashes every uploaded object and refuses a mismatch (422): "
    "nothing reaches the engine",
}
