"""The small revisions every crash check updates between, with the bytes of their objects.

`pvsim crashcheck` needs only the states (its pool holds names); `pvreal crashcheck` writes the
bytes into a real object pool, so each object is the sha256 of a short text kept here.
"""

from __future__ import annotations

import hashlib
from functools import cache
from typing import Any

from shared.state import State, parse_state


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _texts(kernel: str, app: str, sysc: str) -> dict[str, str]:
    """The object entries of a revision → the text each object holds."""
    return {
        "bsp/kernel.img": "kernel " + kernel,
        "bsp/pantavisor": "pantavisor " + kernel,
        "sysc/root.squashfs": "sysc " + sysc,
        "sysc/lxc.container.conf": "sysc conf",
        "app/root.squashfs": "app " + app,
        "app/lxc.container.conf": "app conf",
    }


def object_bytes(kernel: str = "k1", app: str = "a1", sysc: str = "s1") -> dict[str, bytes]:
    """sha → bytes of every object of `build_state(kernel, app, sysc)`."""
    return {_sha(text): text.encode() for text in _texts(kernel, app, sysc).values()}


def _container(name: str, group: str, policy: str, goal: str | None = None) -> dict[str, Any]:
    run: dict[str, Any] = {
        "#spec": "service-manifest-run@1",
        "config": "lxc.container.conf",
        "drivers": {"manual": [], "optional": [], "required": []},
        "group": group,
        "name": name,
        "restart_policy": policy,
        "root-volume": "root.squashfs",
        "storage": {"lxc-overlay": {"persistence": "boot"}},
        "type": "lxc",
        "volumes": [],
    }
    if goal:
        run["status_goal"] = goal
    return run


@cache
def build_state(kernel: str = "k1", app: str = "a1", sysc: str = "s1", app_goal: str = "") -> State:
    """A small revision: BSP, a system-policy container `sysc`, an app container `app`."""
    groups = [
        {"name": "data", "status_goal": "MOUNTED", "restart_policy": "system", "timeout": 30},
        {"name": "root", "status_goal": "STARTED", "restart_policy": "system", "timeout": 30},
        {"name": "platform", "status_goal": "STARTED", "restart_policy": "system", "timeout": 30},
        {
            "name": "app",
            "status_goal": "STARTED",
            "restart_policy": "container",
            "timeout": 60,
            "auto_recovery": {
                "policy": "on-failure",
                "max_retries": 3,
                "retry_delay": 5,
                "backoff_factor": 2.0,
                "stable_timeout": 30,
            },
        },
    ]
    shas = {key: _sha(text) for key, text in _texts(kernel, app, sysc).items()}
    doc: dict[str, Any] = {
        "#spec": "pantavisor-service-system@1",
        "bsp/run.json": {"linux": "kernel.img", "initrd": "pantavisor", "addons": []},
        "bsp/kernel.img": shas["bsp/kernel.img"],
        "bsp/pantavisor": shas["bsp/pantavisor"],
        "device.json": {"groups": groups},
        "sysc/run.json": _container("sysc", "platform", "system"),
        "sysc/root.squashfs": shas["sysc/root.squashfs"],
        "sysc/lxc.container.conf": shas["sysc/lxc.container.conf"],
        "app/run.json": _container("app", "app", "container", app_goal or None),
        "app/root.squashfs": shas["app/root.squashfs"],
        "app/lxc.container.conf": shas["app/lxc.container.conf"],
    }
    return parse_state(doc, source=f"crashcheck revision ({kernel}, {app}, {sysc})")
