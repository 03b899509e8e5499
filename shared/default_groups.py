"""The groups Pantavisor ships in /etc/pantavisor/defaults/groups.json (pantavisor.md §1.4).

A state with neither `device.json` nor `groups.json` gets these groups and "runlevel mode". They are
kept as raw JSON-shaped data so that they go through the same group parser as a state's own groups.
"""

from __future__ import annotations

from typing import Any

DEFAULT_GROUPS_SOURCE = "/etc/pantavisor/defaults/groups.json"

DEFAULT_GROUPS_JSON: tuple[dict[str, Any], ...] = (
    {
        "name": "data",
        "description": "Containers whose volumes are mounted but which are not started",
        "status_goal": "MOUNTED",
        "restart_policy": "system",
        "timeout": 30,
    },
    {
        "name": "root",
        "description": "Containers that bring up the board's network connectivity",
        "status_goal": "STARTED",
        "restart_policy": "system",
        "timeout": 30,
    },
    {
        "name": "platform",
        "description": "Middleware and utility containers",
        "status_goal": "STARTED",
        "restart_policy": "system",
        "timeout": 30,
    },
    {
        "name": "app",
        "description": "Application containers",
        "status_goal": "STARTED",
        "restart_policy": "container",
        "timeout": 30,
        "auto_recovery": {
            "policy": "on-failure",
            "max_retries": 5,
            "retry_delay": 5,
            "backoff_factor": 2.0,
            "stable_timeout": 30,
            "backoff_policy": "reboot",
        },
    },
)

# The deprecated run.json `runlevel` key names one of these four groups.
RUNLEVELS = ("data", "root", "platform", "app")
