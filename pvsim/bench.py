"""What `pvsim bench` measures: the twin against the reference model, side by side in one process.

"pvtwin, or the model I would write myself in an afternoon?" The bar is wall time per
device-update against the reference model (`pvsim.reference`): the simplest honest plain-SimPy
model of the same scenario, in its two idioms for power cuts (`interrupt`, `predrawn`). At each
size the three models run one after the other in this process, `repeat` rounds, the order
reversed every other round so that a machine whose speed drifts (this shared VM's does, by tens
of percent within a minute) favours none of them. Each model's wall time covers the whole call
(building the fleet, simulating, counting), with the cyclic GC off in both models.

Reported per size: each model's wall and CPU time, µs per device-update and peak RSS during its
run (sampled: /proc/self/statm every 20 ms, so every model in the one process gets its own);
`twin_over_reference` (the median over rounds of twin wall ÷ reference wall, per variant, and the
same per CPU second); the twin's events per device-update and memory per device (peak RSS growth
over its run ÷ devices); and the outcome counts of each model, which should agree.

At sizes from `SHARD_FROM` (1 000 000 devices) on, the sharded twin (`pvsim.shard`, `shards`
worker processes or Dask actors) runs first, before the unsharded models (its workers are forked
from this process, so they inherit its memory), and is reported beside the unsharded twin: wall,
peak RSS per shard and in all, time each shard spent simulating, epochs.
"""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

QUICKSTART = Path(__file__).resolve().parent.parent / "scenarios" / "quickstart.toml"
REFERENCES = ("interrupt", "predrawn")
MODELS = ("twin", *REFERENCES)
SHARD_FROM = 1_000_000
# issue 18's bars, printed beside the measurements: twin ÷ reference wall at 20 000 and 100 000
# devices, cost growth from 10 000 to 1 000 000, and the million-device run
TARGETS = {
    "twin_over_reference.interrupt": 2.0,
    "twin_over_reference.predrawn": 2.5,
    "twin_cost_growth_10k_to_1m": 1.25,
    "million_wall_s": 180.0,
    "million_peak_rss_mb": 3000.0,
}


def current_rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


class RssSampler:
    """The peak of this process's resident memory while the `with` block runs (a thread reads it
    every `every_s`): ru_maxrss is the peak of the whole process, which later runs cannot undercut."""

    def __init__(self, every_s: float = 0.02) -> None:
        self.every_s = every_s
        self.peak_mb = 0.0
        self.before_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> RssSampler:
        self.before_mb = self.peak_mb = current_rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, current_rss_mb())

    def _watch(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak_mb = max(self.peak_mb, current_rss_mb())


def _outcomes(results: dict[str, Any], releases: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {
        "committed": results["committed"],
        "rolled_back": results["rolled_back"],
        "rollout_state": results["rollout_state"],
        "paused_at_s": [None if r["halted_at_s"] is None else round(r["halted_at_s"], 1) for r in releases],
    }


def run_twin(scenario: Any) -> dict[str, Any]:
    from pvsim.runner import run_scenario

    with RssSampler() as rss:
        start, cpu_start = time.perf_counter(), time.process_time()
        result = run_scenario(scenario)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    r, x = result.results, result.extras
    devices = scenario.fleet.devices
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "device_updates": r["device_updates"],
        "peak_rss_mb": round(rss.peak_mb, 1),
        "memory_per_device_kb": round(max(0.0, rss.peak_mb - rss.before_mb) * 1024 / devices, 3),
        "events": r["events"],
        "events_per_device_update": x["events_per_device_update"],
        **_outcomes(r, result.releases),
    }


def run_reference_model(scenario: Any, variant: str) -> dict[str, Any]:
    from pvsim.reference import run_reference

    with RssSampler() as rss:
        r = run_reference(scenario, variant)
    return {
        "wall_s": r["wall_s"],
        "cpu_s": r["cpu_s"],
        "device_updates": r["device_updates"],
        "peak_rss_mb": round(rss.peak_mb, 1),
        **_outcomes(r, r["releases"]),
    }


def run_sharded_twin(scenario: Any, shards: int, dask: Any = None) -> dict[str, Any]:
    """The sharded twin: wall, and memory per shard worker and in all. A forked worker's RSS
    includes the pages it inherited from this process, so each worker's growth is counted
    (its peak less this process's RSS at the start) and added to this process's peak."""
    from pvsim.shard import DEFAULT_EPOCH_S, run_sharded

    with RssSampler() as rss:
        start, cpu_start = time.perf_counter(), time.process_time()
        result = run_sharded(scenario, shards, dask=dask)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    x = result.extras
    shard_peaks = x["shard_peak_rss_mb"]
    inherited = 0.0 if dask is not None else rss.before_mb
    per_process: dict[int, float] = {}  # shards in one worker process report its one peak
    for pid, peak in zip(x["shard_pid"], shard_peaks, strict=True):
        per_process[pid] = max(peak, per_process.get(pid, 0.0))
    grown = sum(max(0.0, peak - inherited) for peak in per_process.values())
    return {
        "shards": shards,
        "executor": "dask" if dask is not None else "processes",
        "wall_s": round(wall, 3),
        "coordinator_cpu_s": round(cpu, 3),
        "device_updates": result.results["device_updates"],
        "epochs": math.ceil(scenario.run.until_s / DEFAULT_EPOCH_S),
        "shard_devices": x["shard_devices"],
        "shard_host_cpu_s": x["shard_host_cpu_s"],
        "shard_busy_s": x.get("shard_busy_s"),
        "shard_peak_rss_mb": shard_peaks,
        "worker_processes": len(per_process),
        "worker_peak_rss_mb": sorted(per_process.values()),
        "peak_rss_mb_in_all": round(rss.peak_mb + grown, 1),
        **_outcomes(result.results, result.releases),
    }


def us_per_update(run: dict[str, Any], key: str = "wall_s") -> float | None:
    """Microseconds of `key` (wall or CPU time) per device-update."""
    updates = run["device_updates"]
    seconds = run.get(key)
    return round(1e6 * seconds / updates, 1) if updates and seconds is not None else None


def bench_size(
    devices: int,
    repeat: int = 1,
    models: Sequence[str] = MODELS,
    shards: int = 2,
    dask: Any = None,
    scenario_path: Path = QUICKSTART,
    say: Callable[[str], None] = lambda _line: None,
) -> dict[str, Any]:
    """All runs at one fleet size, interleaved; the figures of one row of the report."""
    from pvsim.scenario import load_scenario

    scenario = load_scenario(scenario_path, **{"fleet.devices": devices})
    if any(m in REFERENCES for m in models):
        from pvsim.reference import check_supported

        check_supported(scenario)
    out: dict[str, Any] = {"devices": devices, "rounds": repeat}
    if "sharded" in models:
        say(f"{devices} devices: sharded twin ({shards} shards)")
        out["sharded"] = run_sharded_twin(scenario, shards, dask)
        say(_headline("sharded", out["sharded"]))
    order = [m for m in MODELS if m in models]
    rounds: dict[str, list[dict[str, Any]]] = {m: [] for m in order}
    for k in range(repeat):
        for model in order if k % 2 == 0 else order[::-1]:
            say(f"{devices} devices, round {k + 1}/{repeat}: {model}")
            run = run_twin(scenario) if model == "twin" else run_reference_model(scenario, model)
            rounds[model].append(run)
            say(_headline(model, run))
    for model, runs in rounds.items():
        out[model] = _median_run(runs)
    if "twin" in rounds:
        for variant in REFERENCES:
            if variant not in rounds:
                continue
            pairs = list(zip(rounds["twin"], rounds[variant], strict=True))
            out.setdefault("twin_over_reference", {})[variant] = _median_ratio(pairs, "wall_s")
            out.setdefault("twin_over_reference_cpu", {})[variant] = _median_ratio(pairs, "cpu_s")
    out["us_per_device_update"] = {m: us_per_update(out[m]) for m in (*order, "sharded") if m in out}
    # per CPU second: what a loaded machine (other processes on the same cores) disturbs least
    out["cpu_us_per_device_update"] = {m: us_per_update(out[m], "cpu_s") for m in order}
    if "sharded" in out and "twin" in out:
        out["sharded_over_unsharded_wall"] = round(out["sharded"]["wall_s"] / out["twin"]["wall_s"], 3)
    return out


def _headline(model: str, run: dict[str, Any]) -> str:
    """One line as soon as a run is over: a long benchmark shows its figures as it goes."""
    memory = run.get("peak_rss_mb", run.get("peak_rss_mb_in_all"))
    return f"  {model}: {run['wall_s']:.1f} s wall, {us_per_update(run)} µs per device-update, peak RSS {memory:.0f} MB"


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median wall time (its own figures, so they stay consistent), plus every round's wall."""
    ranked = sorted(runs, key=lambda r: r["wall_s"])
    run = dict(ranked[(len(ranked) - 1) // 2])
    if len(runs) > 1:
        run["wall_s_rounds"] = [r["wall_s"] for r in runs]
    return run


def _median_ratio(pairs: list[tuple[dict[str, Any], dict[str, Any]]], key: str) -> float | None:
    ratios = [twin[key] / ref[key] for twin, ref in pairs if ref[key] > 0]
    return round(statistics.median(ratios), 3) if ratios else None


def bench(
    sizes: Sequence[int],
    repeat: int = 1,
    models: Sequence[str] | None = None,
    shards: int = 2,
    dask: Any = None,
    scenario_path: Path = QUICKSTART,
    say: Callable[[str], None] = lambda _line: None,
) -> dict[str, Any]:
    """Every size in turn (smallest first). `models` None: the twin and both reference variants,
    and the sharded twin at sizes from SHARD_FROM (when `shards` ≥ 2)."""
    import platform

    import simpy

    rows = []
    for devices in sorted(sizes):
        chosen = list(models) if models is not None else [*MODELS, *(["sharded"] if devices >= SHARD_FROM and shards >= 2 else [])]
        rows.append(bench_size(devices, repeat, chosen, shards, dask, scenario_path, say))
    report: dict[str, Any] = {
        "scenario": str(scenario_path),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "simpy": simpy.__version__},
        "repeat": repeat,
        "sizes": rows,
        "targets": TARGETS,
    }
    twin_rows = [row for row in rows if row["us_per_device_update"].get("twin")]
    if len(twin_rows) > 1:
        small, large = twin_rows[0], twin_rows[-1]
        report["twin_cost_growth"] = {
            "from_devices": small["devices"],
            "to_devices": large["devices"],
            "ratio": round(large["us_per_device_update"]["twin"] / small["us_per_device_update"]["twin"], 3),
            "cpu_ratio": round(large["cpu_us_per_device_update"]["twin"] / small["cpu_us_per_device_update"]["twin"], 3),
        }
    return report


@contextmanager
def local_dask_cluster(workers: int) -> Iterator[Any]:
    """A client of a Dask LocalCluster of `workers` single-threaded worker processes on loopback.
    A shard actor's memory is not data Dask could spill: no spilling or pausing, but a worker past
    95 % of its memory limit (the machine's memory split between the workers) is still stopped
    before it takes the whole machine down."""
    import dask
    from dask.distributed import Client, LocalCluster

    settings = {f"distributed.worker.memory.{key}": False for key in ("target", "spill", "pause")}
    with dask.config.set(settings), LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster, Client(cluster) as client:
        yield client
