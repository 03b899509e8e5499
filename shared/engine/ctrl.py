"""pv-ctrl's answers (§5.1 rejection rules, §3.4), as pure decision functions.

Every answer pv-ctrl gives is decided here; a backend's HTTP layer only parses the request and
maps a `CtrlDecision` to a response. The engine is the caller (`Updater.ctrl_decision`,
`Updater.signal_decision`) so that every backend answers from the engine's own state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from shared.engine.gc import real_free
from shared.state import StatusGoal

if TYPE_CHECKING:
    from shared.engine.events import StorageStats


class Op(StrEnum):
    """Pantavisor's pv-ctrl command names (`POST /commands {"op": ...}`)."""

    UPDATE_METADATA = "UPDATE_METADATA"
    REBOOT_DEVICE = "REBOOT_DEVICE"
    POWEROFF_DEVICE = "POWEROFF_DEVICE"
    TRY_ONCE = "TRY_ONCE"
    LOCAL_RUN = "LOCAL_RUN"
    MAKE_FACTORY = "MAKE_FACTORY"
    RUN_GC = "RUN_GC"
    ENABLE_SSH = "ENABLE_SSH"
    DISABLE_SSH = "DISABLE_SSH"
    GO_REMOTE = "GO_REMOTE"
    DEFER_REBOOT = "DEFER_REBOOT"
    LOCAL_RUN_COMMIT = "LOCAL_RUN_COMMIT"
    LOCAL_APPLY = "LOCAL_APPLY"
    XCONNECT_GRAPH = "XCONNECT_GRAPH"
    UNCLAIM = "UNCLAIM"

    @classmethod
    def parse(cls, text: str) -> Op | None:
        """The op named `text`, or None for a name Pantavisor does not know."""
        try:
            return cls(text)
        except ValueError:
            return None


OPS = tuple(Op)
# Refused with 503 (Retry-After 600) while an update exists.
BLOCKED_DURING_UPDATE = frozenset(
    {Op.REBOOT_DEVICE, Op.POWEROFF_DEVICE, Op.LOCAL_RUN, Op.LOCAL_RUN_COMMIT, Op.MAKE_FACTORY,
     Op.UNCLAIM}
)
# Declared by Pantavisor but without a handler: queued, then dropped as unknown.
UNHANDLED = frozenset({Op.TRY_ONCE, Op.LOCAL_APPLY, Op.XCONNECT_GRAPH})
# Ops whose payload names a revision the backend loads for the engine (CtrlCommand.state).
OPS_WITH_REVISION = frozenset({Op.LOCAL_RUN, Op.LOCAL_RUN_COMMIT})
REBOOTING_OPS = frozenset({Op.REBOOT_DEVICE, Op.POWEROFF_DEVICE})


@dataclass(frozen=True, slots=True)
class CtrlDecision:
    status: int  # HTTP status: 200 accepted, 400 unknown op, 403/404 signal, 409, 503, 507
    retry_after: int | None = None
    reason: str = ""

    @property
    def accepted(self) -> bool:
        return self.status == 200


ACCEPTED = CtrlDecision(200)


def ctrl_decision(
    op: str,
    *,
    update_active: bool,
    command_queued: bool = False,
    claimed: bool = True,
    control_remote: bool = True,
    local_mode: bool = False,
    debug_shell: bool = True,
) -> CtrlDecision:
    """Whether pv-ctrl accepts `POST /commands {"op": op}` now, in ctrl_cmd.c's order
    (`pv_ctrl_cmd_add`). A command that would change nothing (GO_REMOTE when remote, UNCLAIM
    when unclaimed) is not queued and answered 204. `debug_shell`: PV_DEBUG_SHELL (on by default
    in Pantavisor), without which DEFER_REBOOT is refused."""
    if op not in OPS:
        return CtrlDecision(400, None, f"unknown command {op!r}")
    if update_active and op in BLOCKED_DURING_UPDATE:
        return CtrlDecision(503, 600, "an update is in progress")
    if op == Op.MAKE_FACTORY and claimed:
        return CtrlDecision(409, None, "device is claimed")
    if op == Op.GO_REMOTE and not control_remote:
        return CtrlDecision(409, None, "PV_CONTROL_REMOTE is 0")
    if op == Op.UPDATE_METADATA and local_mode:
        return CtrlDecision(409, None, "device is in local mode")
    if op == Op.DEFER_REBOOT and not debug_shell:
        return CtrlDecision(409, None, "PV_DEBUG_SHELL is 0")
    if op == Op.GO_REMOTE and not local_mode:
        return CtrlDecision(204, None, "device is already in remote mode")
    if op == Op.UNCLAIM and not claimed:
        return CtrlDecision(204, None, "device is already unclaimed")
    if command_queued:
        return CtrlDecision(503, 120, "another command is queued")
    return ACCEPTED


# The endpoints a container without the `mgmt` role may call on its own socket (§4.4, §5.1).
UNPRIVILEGED_ENDPOINTS = frozenset({("signal",)})


def endpoint_decision(path: Sequence[str], *, mgmt: bool) -> CtrlDecision:
    """Whether a socket may call the endpoint at `path` (its segments): every endpoint with the
    mgmt role (the device's own socket), only /signal without."""
    if not mgmt and tuple(path) not in UNPRIVILEGED_ENDPOINTS:
        return CtrlDecision(403, None, "only /signal is allowed without the mgmt role")
    return ACCEPTED


def signal_decision(container: str, status_goal: StatusGoal | None) -> CtrlDecision:
    """Whether pv-ctrl accepts a container's `POST /signal {"type": "ready"}`: only from a
    running container whose status goal is READY. `status_goal` None: no such container."""
    if status_goal is None:
        return CtrlDecision(404, None, f"container {container} is not running")
    if status_goal is not StatusGoal.READY:
        return CtrlDecision(403, None, f"container {container}: status goal is not READY")
    return ACCEPTED


def object_put_decision(size: int, storage: StorageStats, reserved_percent: int) -> CtrlDecision:
    """Whether an object upload of `size` bytes fits: it must fit in the real free space, i.e.
    free space minus the PV_STORAGE_GC_RESERVED share (`shared.engine.gc.real_free`)."""
    if size > max(0, real_free(storage.total, storage.free, reserved_percent)):
        return CtrlDecision(507, None, f"object of {size} B does not fit in free space")
    return ACCEPTED
