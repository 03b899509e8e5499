"""Small in-memory scenarios (a base document plus dotted overrides), for tests and notebooks."""

from __future__ import annotations

import copy
from typing import Any

from pvsim.results import RunResult
from pvsim.runner import run_scenario
from pvsim.scenario import Scenario, validate_scenario

BASE: dict[str, Any] = {
    "name": "test",
    "fleet": {"devices": 120, "seed": 1, "poll_interval_s": 60},
    "release": [{"name": "r1", "parts": ["app:web"], "size_mb": 10}],
    "rollout": {"strategy": "all-at-once"},
    "update_model": {"kind": "pantavisor"},
    "run": {"until_s": 7200, "timeline_step_s": 300},
}


def scenario(**dotted: Any) -> Scenario:
    """BASE with dotted keys replaced, e.g. scenario(**{"faults.disk_full_fraction": 0.5})."""
    doc = copy.deepcopy(BASE)
    for key, value in dotted.items():
        *tables, leaf = key.split(".")
        target = doc
        for table in tables:
            target = target.setdefault(table, {})
        target[leaf] = value
    return validate_scenario(doc, "test.toml")


def run(**dotted: Any) -> RunResult:
    return run_scenario(scenario(**dotted))
