"""What `pvsim bench` measures: measured, not guessed — event rates, events per device-update, memory per device.

In one process: a raw SimPy loop (processes that only yield timeouts) to calibrate this machine, the
twin running scenarios/quickstart.toml at the requested size, and the raw loop again. The machine's
speed drifts (a shared VM measured here varies by tens of percent within a minute), so the raw rate
is the mean of the runs before and after the twin, and both are reported. Reported: both
event rates and their ratio, SimPy events per device-update, memory per device (peak RSS growth
over the twin run divided by the fleet size), the twin's wall time and its peak RSS.

The ratio of event rates says how much work a twin event carries next to an empty timeout; the
per-device-update figures say what that means for a run: a twin at ratio 0.5 spends at most
2 x (raw cost of an event) x (events per device-update) on one device-update.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import simpy

from pvsim.results import peak_rss_mb

QUICKSTART = Path(__file__).resolve().parent.parent / "scenarios" / "quickstart.toml"


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            pages = int(handle.read().split()[1])
        import resource

        return pages * resource.getpagesize() / (1024 * 1024)
    except OSError:
        return peak_rss_mb()


def raw_simpy_rate(processes: int = 10_000, timeouts: int = 100) -> dict[str, float]:
    """Events per second of plain SimPy: `processes` generators each yielding `timeouts` timeouts."""
    env = simpy.Environment()

    def proc(env: simpy.Environment, k: int) -> Generator[Any, Any, None]:
        delay = 1.0 + (k % 7) * 0.1
        for _ in range(timeouts):
            yield env.timeout(delay)

    for k in range(processes):
        env.process(proc(env, k))
    start = time.perf_counter()
    cpu_start = time.process_time()
    env.run()
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    # each process: one Initialize, `timeouts` timeouts, one process-end event
    events = processes * (timeouts + 2)
    return {"events": events, "wall_s": wall, "cpu_s": cpu, "events_per_s": events / wall, "events_per_cpu_s": events / cpu}


def twin_run(devices: int, scenario_path: Path = QUICKSTART) -> dict[str, Any]:
    from pvsim.runner import run_scenario
    from pvsim.scenario import load_scenario

    scenario = load_scenario(scenario_path, **{"fleet.devices": devices})
    before = current_rss_mb()
    result = run_scenario(scenario)
    after_peak = peak_rss_mb()
    r, x = result.results, result.extras
    return {
        "devices": devices,
        "events": r["events"],
        "wall_s": r["wall_s"],
        "events_per_s": r["events"] / r["wall_s"] if r["wall_s"] else None,
        "cpu_s": x["cpu_s"],
        "events_per_cpu_s": r["events"] / x["cpu_s"] if x["cpu_s"] else None,
        "device_updates": x["device_updates"],
        "events_per_device_update": x["events_per_device_update"],
        "memory_per_device_kb": round(max(0.0, after_peak - before) * 1024 / devices, 3),
        "peak_rss_mb": after_peak,
        "rollout_state": r["rollout_state"],
        "committed": r["committed"],
        "rolled_back": r["rolled_back"],
    }


def per_update_figures(twin_wall_s: float, device_updates: int, events_per_update: float, raw_events_per_s: float) -> dict[str, float]:
    """Microseconds: the twin's wall time per device-update, the raw loop's per event, and the
    per-device-update time at which the twin's event rate would be half the raw loop's."""
    raw_us = 1e6 / raw_events_per_s
    return {
        "twin_us_per_device_update": round(1e6 * twin_wall_s / device_updates, 1),
        "raw_simpy_us_per_event": round(raw_us, 3),
        "us_per_device_update_at_ratio_0_5": round(2 * raw_us * events_per_update, 1),
    }


def bench(devices: int) -> dict[str, Any]:
    before = raw_simpy_rate()
    twin = twin_run(devices)
    after = raw_simpy_rate()
    raw = {key: (before[key] + after[key]) / 2 for key in ("events_per_s", "events_per_cpu_s")}
    ratio = twin["events_per_s"] / raw["events_per_s"] if twin["events_per_s"] else None
    cpu_ratio = twin["events_per_cpu_s"] / raw["events_per_cpu_s"] if twin["events_per_cpu_s"] else None
    return {
        "raw_simpy_events_per_s": round(raw["events_per_s"]),
        "raw_simpy_events_per_s_before": round(before["events_per_s"]),
        "raw_simpy_events_per_s_after": round(after["events_per_s"]),
        "twin_events_per_s": round(twin["events_per_s"] or 0),
        "twin_to_raw_ratio": round(ratio, 4) if ratio is not None else None,
        # per CPU second: the same ratio, robust to other processes sharing the machine
        "raw_simpy_events_per_cpu_s": round(raw["events_per_cpu_s"]),
        "twin_events_per_cpu_s": round(twin["events_per_cpu_s"] or 0),
        "twin_to_raw_cpu_ratio": round(cpu_ratio, 4) if cpu_ratio is not None else None,
        "events_per_device_update": twin["events_per_device_update"],
        **per_update_figures(twin["wall_s"], twin["device_updates"], twin["events_per_device_update"], raw["events_per_s"]),
        "memory_per_device_kb": twin["memory_per_device_kb"],
        "quickstart_devices": devices,
        "quickstart_wall_s": twin["wall_s"],
        "quickstart_cpu_s": twin["cpu_s"],
        "quickstart_events": twin["events"],
        "device_updates": twin["device_updates"],
        "peak_rss_mb": twin["peak_rss_mb"],
        "rollout_state": twin["rollout_state"],
    }
