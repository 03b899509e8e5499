"""pv-ctrl command rules (§5.1 rejection rules, §3.4), as one pure decision function."""

from __future__ import annotations

from dataclasses import dataclass

OPS = (
    "UPDATE_METADATA",
    "REBOOT_DEVICE",
    "POWEROFF_DEVICE",
    "TRY_ONCE",
    "LOCAL_RUN",
    "MAKE_FACTORY",
    "RUN_GC",
    "ENABLE_SSH",
    "DISABLE_SSH",
    "GO_REMOTE",
    "DEFER_REBOOT",
    "LOCAL_RUN_COMMIT",
    "LOCAL_APPLY",
    "XCONNECT_GRAPH",
    "UNCLAIM",
)
# Refused with 503 (Retry-After 600) while an update exists.
BLOCKED_DURING_UPDATE = frozenset(
    {"REBOOT_DEVICE", "POWEROFF_DEVICE", "LOCAL_RUN", "LOCAL_RUN_COMMIT", "MAKE_FACTORY", "UNCLAIM"}
)
# Declared by Pantavisor but without a handler: queued, then dropped as unknown.
UNHANDLED = frozenset({"TRY_ONCE", "LOCAL_APPLY", "XCONNECT_GRAPH"})


@dataclass(frozen=True, slots=True)
class CtrlDecision:
    status: int  # HTTP status: 200 accepted, 400 unknown op, 409 conflict, 503 busy
    retry_after: int | None = None
    reason: str = ""

    @property
    def accepted(self) -> bool:
        return self.status == 200


def ctrl_decision(
    op: str,
    *,
    update_active: bool,
    command_queued: bool = False,
    claimed: bool = True,
    control_remote: bool = True,
    local_mode: bool = False,
) -> CtrlDecision:
    """Whether pv-ctrl accepts `POST /commands {"op": op}` now."""
    if op not in OPS:
        return CtrlDecision(400, None, f"unknown command {op!r}")
    if update_active and op in BLOCKED_DURING_UPDATE:
        return CtrlDecision(503, 600, "an update is in progress")
    if op == "MAKE_FACTORY" and claimed:
        return CtrlDecision(409, None, "device is claimed")
    if op == "GO_REMOTE" and not control_remote:
        return CtrlDecision(409, None, "PV_CONTROL_REMOTE is 0")
    if op == "UPDATE_METADATA" and local_mode:
        return CtrlDecision(409, None, "device is in local mode")
    if command_queued:
        return CtrlDecision(503, 120, "another command is queued")
    return CtrlDecision(200)
