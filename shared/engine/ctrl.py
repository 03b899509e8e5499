"""pv-ctrl's answers (§5.1 rejection rules, §3.4), as pure decision functions.

Every answer pv-ctrl gives is decided here; a backend's HTTP layer only parses the request and
maps a `CtrlDecision` to a response. The engine is the caller (`Updater.ctrl_decision`,
`Updater.signal_decision`) so that every backend answers from the engine's own state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from shared.engine.gc import real_free
from shared.errors import PvError
from shared.state import StatusGoal, check_revision_name

if TYPE_CHECKING:
    from shared.engine.events import StorageStats
    from shared.state import State


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
    payload: str | None = None,
) -> CtrlDecision:
    """Whether pv-ctrl accepts `POST /commands {"op": op, "payload": payload}` now, in
    ctrl_cmd.c's order (`pv_ctrl_cmd_add`). A command that would change nothing (GO_REMOTE when
    remote, UNCLAIM when unclaimed) is not queued and answered 204. `debug_shell`:
    PV_DEBUG_SHELL (on by default in Pantavisor), without which DEFER_REBOOT is refused.
    `payload` None: not checked (an op whose payload does not matter, or a caller that checked
    it)."""
    if op not in OPS:
        return CtrlDecision(400, None, f"unknown command {op!r}")
    if payload is not None and op in OPS_WITH_REVISION:
        named = revision_decision(payload)
        if not named.accepted:
            return named
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


# ---------------------------------------------------------------------------- hostile input
# What pv-ctrl refuses before anything reaches the engine or the disk (docs/device.md "Limits").
MAX_STATE_BYTES = 16 << 20  # a state JSON body (a real one is a few hundred kB)
MAX_STATE_DEPTH = 64  # nesting of a state JSON (a real one is 4-5 levels deep)
MAX_COMMAND_BYTES = 64 << 10  # a POST /commands or /signal body


def revision_decision(rev: Any) -> CtrlDecision:
    """400 unless `rev` is a revision name the device can store (`shared.state.check_revision_name`,
    the rule the engine applies to every name it writes progress under)."""
    try:
        check_revision_name(rev)
    except PvError as exc:
        return CtrlDecision(400, None, str(exc))
    return ACCEPTED


def body_size_decision(length: int, limit: int, what: str) -> CtrlDecision:
    """413 when a body is larger than pv-ctrl reads into memory."""
    if length > limit:
        return CtrlDecision(413, None, f"{what} of {length} B is larger than the {limit} B limit")
    return ACCEPTED


def nesting_depth(value: Any, stop_at: int = MAX_STATE_DEPTH) -> int:
    """How deeply JSON arrays and objects nest in `value` (a scalar is 0), counted without
    recursion; stops counting past `stop_at`."""
    deepest = 0
    todo: list[tuple[Any, int]] = [(value, 0)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if deepest > stop_at:
            break
        todo.extend((child, depth) for child in children)
    return deepest


def state_depth_decision(doc: Any) -> CtrlDecision:
    """422 when a decoded state nests deeper than MAX_STATE_DEPTH."""
    if nesting_depth(doc) > MAX_STATE_DEPTH:
        return CtrlDecision(422, None, f"state nests deeper than {MAX_STATE_DEPTH} levels")
    return ACCEPTED


def missing_objects_decision(state: State, present: Callable[[str], bool]) -> CtrlDecision:
    """422 naming the first object a state needs that the device lacks. The engine's own check
    comes later (`Updater._install`: ERROR before pv_try); pv-ctrl refuses such a state on PUT so
    that the person uploading it learns which object to send."""
    missing = {sha for sha in state.object_shas() if not present(sha)}
    if not missing:
        return ACCEPTED
    path, sha = min((p, s) for p, s in state.objects.items() if s in missing)
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    return CtrlDecision(
        422, None, f"object {sha} ({path}) is not on the device{more}: PUT /objects/{sha} first"
    )
