"""What a running device shows of itself: the `status` answer and the start-up inspection lines.

Reads a `Device` (pvreal.device.daemon); decides nothing.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from shared.engine.updater import Phase

if TYPE_CHECKING:
    from pvreal.device.daemon import Device


def inspection_lines(device: Device) -> list[str]:
    """What a person needs to look inside this device by hand (logged at start; docs/device.md
    "Inspecting a running device"): its id, the runc root, the network namespace names. The
    namespaces are bound under /run/netns inside the daemon's private mount namespace, so the
    host sees their names but not the bindings: they are entered through the daemon."""
    pid = os.getpid()
    runc_root = device.runner.runc.root
    lines = [
        f"device {device.prefix}: storage {device.storage.root}, run dir {device.run_dir}, "
        f"daemon pid {pid}",
        f"runc root {runc_root} (runc --root {runc_root} list); container ids "
        f"{device.prefix}-<name>; stop grace {device.config.stop_grace:g} s",
    ]
    if device.hub is not None:
        lines.append(f"remote mode: Hub {device.hub.url}, credentials in "
                     f"{device.hub.credentials.path} (device id {device.hub.client.device or 'not yet registered'})")  # fmt: skip
    if device.network is None:
        lines.append("network: none (--no-network); containers share the daemon's netns")
    else:
        device_ns = device.network.device_netns or "the daemon's own"
        lines.append(
            f"network namespaces: device {device_ns} (bridge {device.network.bridge}), "
            f"containers {device.network.netns_name('<name>')}; enter one with "
            f"nsenter -t {pid} -m ip netns exec {device.network.netns_name('<name>')} CMD"
        )
    return lines


def status_of(device: Device) -> dict[str, Any]:
    """The device's `status` answer (pv-ctrl GET /status, `pvreal ctl status`)."""
    u = device.updater
    containers: dict[str, dict[str, Any]] = {}
    running = device.runner.snapshot()
    if u is not None and u.containers is not None:
        for name, rec in u.containers.recs.items():
            spec = rec.spec
            containers[name] = {
                "name": name,
                "group": spec.group,
                "status": rec.status.name,
                "status_goal": str(spec.status_goal),
                "restart_policy": str(spec.restart_policy),
                "roles": list(spec.roles),
                "auto_recovery": spec.auto_recovery.policy if spec.auto_recovery else "no",
                **running.get(name, {"pid": None}),
            }
    status = {
        "booted": device.booted_rev,
        "running": u.running_rev if u else "",
        # A reboot outside QEMU happens inside the daemon: show it as the engine's phase.
        "phase": str(Phase.REBOOTING) if device._rebooting else str(u.phase) if u else "",
        "activity": device.activity,
        "update": u.update.rev if u is not None and u.update is not None else None,
        "pv_rev": u.pv_rev if u else "",
        "pv_try": u.pv_try if u else "",
        "boots": device.boots,
        "last_reboot": device.last_reboot,
        "containers": containers,
        "timers": device.timers.armed(),
        "last_gc": device.last_gc,
        "error": str(device.error) if device.error else None,
        "failures": device.failures,
        "last_failure": device.last_failure,
        "hub": device.hub.status() if device.hub is not None else None,
    }
    return status
