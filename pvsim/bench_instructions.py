"""`pvsim bench --instructions`: the twin against the reference model in CPU instructions.

Wall and CPU time on a shared VM drift by tens of percent within a minute, which hides changes of
a few percent. Instructions counted by valgrind's callgrind do not drift: the same run gives the
same count (to ~0.1 %, with PYTHONHASHSEED fixed) however loaded the machine is. So each model
runs in a process of its own under callgrind, twice: at `devices` and at a small `base` fleet.
The difference between the two counts, divided by the difference in device-updates, is the
model's instructions per device-update: interpreter start, imports and building the fleet
cancel out, and what is left is what one more device-update costs.

`twin_over_reference` is then the twin's figure over each reference variant's. It is the same
question `pvsim bench` asks of wall time, answered in a unit that a drifting machine cannot blur
(a run under callgrind takes ~50 times as long as without it, so keep `devices` in the thousands).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pvsim.bench import MODELS, QUICKSTART
from shared.errors import PvError

DEFAULT_DEVICES = 4000
BASE_DIVISOR = 20  # the base fleet is devices / 20 (at least 20 devices)
MIN_DEVICES = 100  # well above the base fleet, so the difference is mostly device-updates
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


class InstructionCountError(PvError):
    """callgrind is missing, or a counted run failed."""


def base_size(devices: int) -> int:
    return max(20, devices // BASE_DIVISOR)


def _child_argv(model: str, devices: int, scenario: Path) -> list[str]:
    return [sys.executable, "-m", "pvsim.bench_instructions", model, str(devices), str(scenario)]


def count_run(model: str, devices: int, scenario: Path = QUICKSTART) -> dict[str, Any]:
    """One model at one size in its own process under callgrind: its instructions (the whole
    process) and device-updates."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise InstructionCountError("--instructions needs valgrind (apt install valgrind)")
    with tempfile.TemporaryDirectory(prefix="pvsim-callgrind-") as tmp:
        argv = [valgrind, "--tool=callgrind", f"--callgrind-out-file={tmp}/out", *_child_argv(model, devices, scenario)]
        env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same dict layouts, the same count
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    found = _COLLECTED.search(proc.stderr)
    if proc.returncode != 0 or found is None:
        tail = " / ".join(proc.stderr.strip().splitlines()[-3:])
        raise InstructionCountError(f"{model} at {devices} devices under callgrind failed (exit {proc.returncode}): {tail}")
    try:
        doc = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise InstructionCountError(f"{model} at {devices} devices printed no result: {proc.stdout[-200:]!r}") from None
    return {"instructions": int(found.group(1)), "device_updates": int(doc["device_updates"])}


def per_update(at_size: dict[str, Any], at_base: dict[str, Any]) -> float:
    """Instructions one more device-update costs: the difference of the two runs' counts over
    the difference of their device-updates."""
    updates = at_size["device_updates"] - at_base["device_updates"]
    if updates <= 0:
        raise InstructionCountError("the base fleet ran as many device-updates as the measured one: give more --devices")
    return (at_size["instructions"] - at_base["instructions"]) / updates


def bench_instructions(
    devices: int = DEFAULT_DEVICES, models: list[str] | None = None, scenario: Path = QUICKSTART,
    jobs: int = 2, say: Callable[[str], None] = lambda _line: None,
) -> dict[str, Any]:  # fmt: skip
    """Count each model at `devices` and at `base_size(devices)`, `jobs` processes at a time.
    The scenario is checked here first, so a bad one costs no minutes under callgrind."""
    from pvsim.reference import check_supported
    from pvsim.scenario import ScenarioError, load_scenario

    models = list(models or MODELS)
    if devices < MIN_DEVICES:
        raise ScenarioError(f"counting needs at least {MIN_DEVICES} devices (the base run has {base_size(devices)})", source="--devices")
    loaded = load_scenario(scenario, **{"fleet.devices": devices})
    if any(m != "twin" for m in models):
        check_supported(loaded)
    base = base_size(devices)
    runs = [(model, n) for model in models for n in (devices, base)]

    def counted(run: tuple[str, int]) -> dict[str, Any]:
        result = count_run(run[0], run[1], scenario)
        say(f"{run[0]} at {run[1]:,} devices: {result['instructions']:,} instructions, {result['device_updates']:,} device-updates")
        return result

    say(f"{len(runs)} runs under callgrind, {jobs} at a time (each ~50x slower than without it)")
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        results = dict(zip(runs, pool.map(counted, runs), strict=True))
    report: dict[str, Any] = {"devices": devices, "base_devices": base, "scenario": str(scenario), "models": {}}
    for model in models:
        at_size, at_base = results[model, devices], results[model, base]
        report["models"][model] = {
            "instructions": at_size["instructions"], "base_instructions": at_base["instructions"],
            "device_updates": at_size["device_updates"], "base_device_updates": at_base["device_updates"],
            "instructions_per_device_update": round(per_update(at_size, at_base)),
        }  # fmt: skip
    figures = report["models"]
    if "twin" in figures:
        twin = figures["twin"]["instructions_per_device_update"]
        report["twin_over_reference"] = {
            v: round(twin / figures[v]["instructions_per_device_update"], 3) for v in models if v != "twin"
        }
    return report


def _child(model: str, devices: int, scenario: Path) -> None:
    """What runs under callgrind: one model, once; prints its device-updates as JSON. Not through
    run_twin: its memory sampler is a thread whose instructions grow with the (slowed) wall time."""
    from pvsim.reference import run_reference
    from pvsim.runner import run_scenario
    from pvsim.scenario import load_scenario

    loaded = load_scenario(scenario, **{"fleet.devices": devices})
    if model == "twin":
        updates = run_scenario(loaded).results["device_updates"]
    else:
        updates = run_reference(loaded, model)["device_updates"]
    print(json.dumps({"device_updates": updates}))


if __name__ == "__main__":
    _child(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
