"""Giant fleets: one scenario split into N shards simulated in parallel, in lock-step epochs.

Shard k owns the devices whose number is k modulo N and holds its own SimPy world (a `ShardWorld`:
the full per-device tables, but only its devices ever become processes). A coordinator plays the
Hub's rollout brain: at every epoch boundary (`epoch_s`, 60 s by default, the Exponential strategy's
minute) it asks each release's strategy with the tally summed over all shards, turns the answer
into a slice of the release's global seeded order, and tells every shard how many of its devices in
that slice to admit and what share of the Hub's egress it has (in proportion to the downloads
active in it at the end of the previous epoch, plus one so an idle shard is not starved). Each
shard then advances to the epoch end and answers with its reports so far. At the end the shards'
results are merged into one `RunResult` of the same shape as an unsharded run.

The approximation (docs/scaling.md): decisions are made once per epoch instead of at every report,
a release opens at the first epoch boundary at or after its `at_s`, and the egress split is one
epoch stale. `shard_check` measures what it costs.

Shards live in long-lived worker processes (multiprocessing pipes) or in Dask actors; both drive
the same `ShardHost`, so a run gives the same result on either.
"""

from __future__ import annotations

import gc
import hashlib
import math
import os
import time
import traceback
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pvsim.hub import Rollout, make_strategy
from pvsim.results import SILENT_IDS_SHOWN, RunResult, merge_reasons, peak_rss_mb
from pvsim.runner import model_factory
from pvsim.scenario import Scenario, validate_scenario
from pvsim.world import World
from shared.rollout import ABORTED, PAUSED, RUNNING, Tally

DEFAULT_EPOCH_S = 60.0


def stable_seed(*parts: Any) -> int:
    """A 31-bit seed from `parts` via BLAKE2b of their repr: the same on every machine and process
    (Python's hash() of a str is salted per process)."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF


class ShardWorld(World):
    """A World that simulates only the devices `device % shards == shard` and never decides a
    rollout itself: releases open and devices are admitted when the coordinator says so."""

    def __init__(self, scenario: Scenario, shard: int, shards: int) -> None:
        super().__init__(scenario, model_factory(scenario.update_model.kind))
        self.shard, self.shards = shard, shards
        # per-event draws differ per shard (same seed would correlate the shards' fault draws)
        self.rng.seed(stable_seed("shard", scenario.fleet.seed, shard, shards))
        self.hub_mbps = self.egress.mbps
        self.busy_s = 0.0

    def _release(self, index: int, at_s: float):
        return  # the coordinator opens releases (open_release)
        yield

    def _pump(self, rollout: Rollout) -> None:
        return  # the coordinator decides, once per epoch, from every shard's reports

    def open_release(self, index: int) -> None:
        for older in self.rollouts:
            older.superseded = True
        n = self.table.n
        release = self.scenario.release[index]
        full = np.random.default_rng([self.scenario.fleet.seed, 0x0DE5, index]).permutation(n)
        order = full[full % self.shards == self.shard]
        strategy = make_strategy(self.scenario.rollout, n)  # only for start_delay
        self.rollouts.append(Rollout(index, index + 1, release.name, release.at_s, strategy, order, Tally(n)))

    def step(self, opens: Sequence[int], admits: dict[int, int], egress_share: float, until: float) -> dict[str, Any]:
        for index in opens:
            self.open_release(index)
        if self.hub_mbps > 0:
            self.egress.mbps = self.hub_mbps * egress_share
        by_index = {r.index: r for r in self.rollouts}
        for index, count in admits.items():
            if count > 0:
                self._admit(by_index[index], count)
        if until > self.env.now:
            started = time.perf_counter()
            self.env.run(until=until)
            self.busy_s += time.perf_counter() - started  # this shard's own simulating, for pvsim bench
        return {
            "tally": {r.index: (r.tally.succeeded, r.tally.failed) for r in self.rollouts},
            "active": self.egress.active,
        }

    def finish(self) -> dict[str, Any]:
        from pvsim.results import collect

        result = collect(self, 0.0, self.env.events)
        return {
            "result": result,
            "commit_times": {r.index: array("d", r.commit_times) for r in self.rollouts},
            "owned": sum(1 for d in range(self.shard, self.table.n, self.shards)),
            "peak_rss_mb": peak_rss_mb(),
            "busy_s": round(self.busy_s, 3),
            "pid": os.getpid(),  # shards that share a worker process share its memory
        }


class ShardHost:
    """Holds some shards of one run in one process; the unit a worker process or a Dask actor runs."""

    def __init__(self, scenario_data: dict[str, Any], source: str, shard_ids: Sequence[int], shards: int) -> None:
        self._cpu_start = time.process_time()  # CPU of this host's process (thread under Dask threads)
        scenario = validate_scenario(scenario_data, source)
        self._gc_was_enabled = gc.isenabled()
        gc.disable()  # as in runner.run_scenario: millions of long-lived objects, no cycles
        self.worlds = {k: ShardWorld(scenario, k, shards) for k in shard_ids}

    def step(self, commands: dict[int, tuple]) -> dict[int, dict[str, Any]]:
        return {k: self.worlds[k].step(*commands[k]) for k in self.worlds}

    def finish(self) -> dict[int, dict[str, Any]]:
        out = {k: w.finish() for k, w in self.worlds.items()}
        cpu = round(time.process_time() - self._cpu_start, 3)
        for part in out.values():
            part["host_cpu_s"] = cpu
        self.worlds = {}
        if self._gc_was_enabled:
            gc.enable()
        return out


# -- executors: one interface over worker processes and Dask actors ----------------------------------


class ShardError(RuntimeError):
    """A shard failed; the message carries the worker's traceback."""


def _worker_main(conn: Any, scenario_data: dict[str, Any], source: str, shard_ids: list[int], shards: int) -> None:
    try:
        host = ShardHost(scenario_data, source, shard_ids, shards)
        conn.send(("ok", None))
        while True:
            verb, payload = conn.recv()
            if verb == "step":
                conn.send(("ok", host.step(payload)))
            else:
                conn.send(("ok", host.finish()))
                return
    except Exception:  # report it to the coordinator instead of dying silently
        conn.send(("error", traceback.format_exc()))


class _ProcessHosts:
    """Long-lived worker processes, one ShardHost each, driven over pipes."""

    def __init__(self, scenario_data: dict[str, Any], source: str, groups: list[list[int]], shards: int) -> None:
        import multiprocessing

        # fork: the child starts at once with pvsim imported; it only runs _worker_main (no threads of
        # the parent are used there), and spawn would re-import the caller's __main__
        ctx = multiprocessing.get_context("fork")
        self.conns, self.procs = [], []
        for group in groups:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, scenario_data, source, group, shards), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        for conn in self.conns:
            self._recv(conn)

    @staticmethod
    def _recv(conn: Any) -> Any:
        try:
            status, payload = conn.recv()
        except EOFError:
            raise ShardError("a shard worker process died (out of memory?)") from None
        if status == "error":
            raise ShardError(payload)
        return payload

    def call(self, verb: str, payloads: list[Any]) -> list[Any]:
        for conn, payload in zip(self.conns, payloads, strict=True):
            conn.send((verb, payload))
        return [self._recv(conn) for conn in self.conns]

    def close(self) -> None:
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()


class _DaskHosts:
    """One Dask actor per group of shards (placed by the scheduler, one per worker when it can)."""

    def __init__(self, client: Any, scenario_data: dict[str, Any], source: str, groups: list[list[int]], shards: int) -> None:
        workers = list(client.scheduler_info()["workers"])
        futures = [
            client.submit(
                ShardHost, scenario_data, source, group, shards, actor=True, pure=False,
                workers=[workers[i % len(workers)]] if workers else None,
            )
            for i, group in enumerate(groups)
        ]  # fmt: skip
        self.actors = [f.result() for f in futures]

    def call(self, verb: str, payloads: list[Any]) -> list[Any]:
        try:
            pending = [getattr(actor, verb)(*([] if p is None else [p])) for actor, p in zip(self.actors, payloads, strict=True)]
            return [f.result() for f in pending]
        except Exception as exc:
            raise ShardError(f"a shard actor failed: {exc!r}") from exc

    def close(self) -> None:
        self.actors = []


# -- the coordinator -----------------------------------------------------------------------------


class _GlobalRollout:
    __slots__ = ("index", "name", "at_s", "strategy", "order", "tally", "cursor", "superseded", "marks")

    def __init__(self, scenario: Scenario, index: int, shards: int) -> None:
        n = scenario.fleet.devices
        release = scenario.release[index]
        self.index, self.name, self.at_s = index, release.name, release.at_s
        self.strategy = make_strategy(scenario.rollout, n)
        self.order = np.random.default_rng([scenario.fleet.seed, 0x0DE5, index]).permutation(n)
        self.tally = Tally(n)
        self.cursor = 0
        self.superseded = False
        self.marks: list[tuple[float, str]] = [(release.at_s, f"{release.name} released")]

    def decide(self, now: float, shards: int) -> list[int]:
        """Ask the strategy once; return how many devices each shard admits now."""
        if self.superseded or self.strategy.state != RUNNING:
            return [0] * shards
        admit, _wake = self.strategy.admit(now, self.tally)
        if self.strategy.state != RUNNING:
            self.marks.append((now, f"{self.name} {self.strategy.state}"))
            return [0] * shards
        start = self.cursor
        stop = min(start + max(0, admit), len(self.order))
        self.cursor = stop
        self.tally.admitted += stop - start
        if stop > start and (start == 0 or (stop - start) * 20 >= len(self.order)):
            self.marks.append((now, f"{self.name}: {stop} admitted"))
        return np.bincount(self.order[start:stop] % shards, minlength=shards).tolist()


def run_sharded(
    scenario: Scenario,
    shards: int,
    workers: int = 0,
    dask: str | Any | None = None,
    epoch_s: float = DEFAULT_EPOCH_S,
    progress: Callable[[float, float], None] | None = None,
) -> RunResult:
    """Simulate `scenario` as `shards` shards on `workers` processes (default: min(shards, CPUs)),
    or on a Dask cluster (`dask`: a scheduler address or a `distributed.Client`)."""
    import os

    if shards < 1:
        raise ValueError("shards must be at least 1")
    start = time.perf_counter()
    n_hosts = min(shards, workers or os.cpu_count() or 1)
    if dask is not None:
        n_hosts = shards  # one actor per shard; the scheduler spreads them
    groups = [list(range(h, shards, n_hosts)) for h in range(n_hosts)]
    data = scenario.model_dump()
    client = None
    if dask is None:
        hosts: Any = _ProcessHosts(data, scenario.name, groups, shards)
    else:
        from dask.distributed import Client

        client = dask if isinstance(dask, Client) else Client(dask)
        hosts = _DaskHosts(client, data, scenario.name, groups, shards)
    try:
        rollouts, until = _coordinate(scenario, hosts, groups, shards, epoch_s, progress)
        finished: dict[int, dict[str, Any]] = {}
        for part in hosts.call("finish", [None] * len(groups)):
            finished.update(part)
    finally:
        hosts.close()
        if client is not None and client is not dask:
            client.close()
    wall = time.perf_counter() - start
    return merge(scenario, rollouts, [finished[k] for k in range(shards)], wall, until)


def _coordinate(
    scenario: Scenario, hosts: Any, groups: list[list[int]], shards: int, epoch_s: float,
    progress: Callable[[float, float], None] | None,
) -> tuple[list[_GlobalRollout], float]:  # fmt: skip
    until = scenario.run.until_s
    rollouts: list[_GlobalRollout] = []
    active = [0] * shards
    n_epochs = max(1, math.ceil(until / epoch_s))
    for e in range(n_epochs):
        now = e * epoch_s
        end = min(until, (e + 1) * epoch_s)
        opens = []
        while len(rollouts) < len(scenario.release) and scenario.release[len(rollouts)].at_s <= now:
            for older in rollouts:
                older.superseded = True
            rollouts.append(_GlobalRollout(scenario, len(rollouts), shards))
            opens.append(len(rollouts) - 1)
        quotas = {r.index: r.decide(now, shards) for r in rollouts}
        total_active = sum(active)
        commands = {
            k: (opens, {i: q[k] for i, q in quotas.items()}, (active[k] + 1) / (total_active + shards), end)
            for k in range(shards)
        }
        replies: dict[int, dict[str, Any]] = {}
        for part in hosts.call("step", [{k: commands[k] for k in group} for group in groups]):
            replies.update(part)
        for r in rollouts:
            r.tally.succeeded = sum(replies[k]["tally"].get(r.index, (0, 0))[0] for k in range(shards))
            r.tally.failed = sum(replies[k]["tally"].get(r.index, (0, 0))[1] for k in range(shards))
        active = [replies[k]["active"] for k in range(shards)]
        if progress is not None:
            progress(end, until)
    return rollouts, until


def _time_to(times: np.ndarray, fraction: float, fleet: int, start: float) -> float | None:
    needed = math.ceil(fraction * fleet)
    if needed == 0 or len(times) < needed:
        return None
    return round(float(np.partition(times, needed - 1)[needed - 1]) - start, 3)


def merge(
    scenario: Scenario, rollouts: list[_GlobalRollout], parts: list[dict[str, Any]], wall_s: float, until: float
) -> RunResult:
    """One RunResult from the shards' results and the coordinator's rollouts."""
    n, shards = scenario.fleet.devices, len(parts)
    results = [p["result"] for p in parts]
    first = results[0].results
    summed = (
        "committed", "rolled_back", "bricked", "stuck", "exposed", "bytes_downloaded", "bytes_wasted", "power_cuts",
        "events", "device_updates", "wontgo", "in_progress_at_end", "timed_out",
    )  # fmt: skip
    out = dict(first)
    for key in summed:
        out[key] = sum(r.results[key] for r in results)
    # every shard holds the whole device table: devices it does not own stay on the factory revision
    factory = next(iter(first["final_revision_counts"]))
    counts = {name: sum(r.results["final_revision_counts"][name] for r in results) for name in first["final_revision_counts"]}
    counts[factory] -= (shards - 1) * n
    out["final_revision_counts"] = counts
    table_level = {"hub_outages", "slow_link_devices", "disk_full_devices"}  # the same in every shard
    fault_keys = sorted({key for r in results for key in r.results["faults"]})  # only faults that fired
    out["faults"] = {
        key: first["faults"].get(key, 0) if key in table_level else sum(r.results["faults"].get(key, 0) for r in results)
        for key in fault_keys
    }
    out["power_cuts"] = out["faults"].get("power_cuts", 0)
    commit_times = {
        r.index: np.concatenate([np.frombuffer(p["commit_times"].get(r.index, array("d")), dtype=np.float64) for p in parts])
        for r in rollouts
    }
    last = rollouts[-1] if rollouts else None
    out["time_to_50pct_s"] = _time_to(commit_times[last.index], 0.5, n, last.at_s) if last else None
    out["time_to_95pct_s"] = _time_to(commit_times[last.index], 0.95, n, last.at_s) if last else None
    states = {r.index: _state(r) for r in rollouts}
    out["rollout_state"] = states[last.index] if last else "running"
    out["wall_s"] = round(wall_s, 3)
    out["peak_rss_mb"] = max(p["peak_rss_mb"] for p in parts)
    releases = []
    for r in rollouts:
        per = [res.releases[r.index] for res in results]
        merged_release = dict(per[0])
        for key in (
            "committed", "rolled_back", "wontgo", "bricked", "exposed", "reboots", "stuck", "in_progress_at_end",
            "timed_out", "device_updates",
        ):  # fmt: skip
            merged_release[key] = sum(x[key] for x in per)
        for key in ("mb_downloaded", "mb_wasted", "mb_written"):
            merged_release[key] = round(sum(x[key] for x in per), 3)
        for key in ("rolled_back_reasons", "wontgo_reasons", "bricked_reasons"):
            merged_release[key] = merge_reasons(x[key] for x in per)
        merged_release["timed_out_devices"] = sorted(d for x in per for d in x["timed_out_devices"])[:SILENT_IDS_SHOWN]
        merged_release.update(
            state=states[r.index],
            admitted=r.tally.admitted,
            succeeded_reports=r.tally.succeeded,
            failed_reports=r.tally.failed,
            time_to_50pct_s=_time_to(commit_times[r.index], 0.5, n, r.at_s),
            time_to_95pct_s=_time_to(commit_times[r.index], 0.95, n, r.at_s),
            halted_at_s=r.strategy.halted_at,
        )
        releases.append(merged_release)
    out["retries"] = dict(sum((Counter(r.results["retries"]) for r in results), Counter()))
    out["retries"] = {key: out["retries"].get(key, 0) for key in first["retries"]}
    out["rollback_reasons"] = merge_reasons(x["rolled_back_reasons"] for x in releases)
    out["wontgo_reasons"] = merge_reasons(x["wontgo_reasons"] for x in releases)
    out["releases"] = releases
    timeline = dict(results[0].timeline)
    stacked = np.sum([np.asarray(r.timeline["counts"], dtype=np.int64) for r in results], axis=0)
    stacked[:, 0] -= (shards - 1) * n
    timeline["counts"] = stacked.tolist()
    for key in ("rolled_back", "bricked", "mb_moved"):
        timeline[key] = np.sum([r.timeline[key] for r in results], axis=0).tolist()
    extras = dict(results[0].extras)
    for key in ("device_updates", "reboots", "wontgo", "in_progress_at_end"):
        extras[key] = sum(r.extras[key] for r in results)
    extras["mb_written"] = round(sum(r.extras["mb_written"] for r in results), 3)
    du = extras["device_updates"]
    extras["events_per_device_update"] = round(out["events"] / du, 2) if du else None
    extras["shards"] = shards
    extras["shard_peak_rss_mb"] = [p["peak_rss_mb"] for p in parts]
    extras["shard_devices"] = [p["owned"] for p in parts]
    extras["shard_host_cpu_s"] = [p["host_cpu_s"] for p in parts]
    extras["shard_busy_s"] = [p["busy_s"] for p in parts]
    extras["shard_pid"] = [p["pid"] for p in parts]
    marks = sorted(m for r in rollouts for m in r.marks)
    return RunResult(out, releases, timeline, marks, extras)


def _state(rollout: _GlobalRollout) -> str:
    if rollout.strategy.state != RUNNING:
        return rollout.strategy.state
    tally = rollout.tally
    return "completed" if tally.admitted >= tally.fleet and tally.in_flight == 0 else RUNNING


__all__ = ["ABORTED", "PAUSED", "DEFAULT_EPOCH_S", "ShardError", "ShardHost", "ShardWorld", "merge", "run_sharded", "stable_seed"]


# -- measuring the approximation ----------------------------------------------------------------


def adoption_at(result: RunResult, step_s: float = 3600.0) -> tuple[list[float], np.ndarray]:
    """(hours, share of the fleet in % per revision) at every `step_s`, from the run's timeline."""
    t = np.asarray(result.timeline["t"], dtype=np.float64)
    counts = np.asarray(result.timeline["counts"], dtype=np.float64)
    hours = np.arange(0.0, t[-1] + 1e-9, step_s)
    rows = np.searchsorted(t, hours, side="right") - 1  # the timeline's value at that moment
    return (hours / 3600.0).tolist(), 100.0 * counts[rows] / max(1, result.results["devices"])


def compare_runs(unsharded: RunResult, sharded: RunResult, epoch_s: float = DEFAULT_EPOCH_S) -> dict[str, Any]:
    """How far a sharded run is from the unsharded one: the largest gap in any revision's share
    of the fleet at any whole hour (percentage points), and each release's pause/abort time gap
    in evaluation epochs."""
    hours, a = adoption_at(unsharded)
    _, b = adoption_at(sharded)
    gap = np.abs(a - b)
    worst = np.unravel_index(int(np.argmax(gap)), gap.shape) if gap.size else (0, 0)
    decisions = []
    for ra, rb in zip(unsharded.releases, sharded.releases, strict=True):
        ta, tb = ra["halted_at_s"], rb["halted_at_s"]
        both = ta is not None and tb is not None
        decisions.append(
            {
                "release": ra["release"],
                "unsharded": {"state": ra["state"], "halted_at_s": ta},
                "sharded": {"state": rb["state"], "halted_at_s": tb},
                "same_decision": ra["state"] == rb["state"],
                "gap_epochs": round(abs(ta - tb) / epoch_s, 3) if both else (0.0 if ta == tb else None),
            }
        )
    names = unsharded.timeline["names"]
    return {
        "devices": unsharded.results["devices"],
        "shards": sharded.extras.get("shards"),
        "epoch_s": epoch_s,
        "max_adoption_gap_pp": round(float(gap.max()) if gap.size else 0.0, 3),
        "worst_at_h": hours[worst[0]] if gap.size else None,
        "worst_revision": names[worst[1]] if gap.size else None,
        "decisions": decisions,
        "decisions_within_one_epoch": all(d["same_decision"] and (d["gap_epochs"] or 0.0) <= 1.0 for d in decisions),
        "unsharded_wall_s": unsharded.results["wall_s"],
        "sharded_wall_s": sharded.results["wall_s"],
        "unsharded_peak_rss_mb": unsharded.results["peak_rss_mb"],
        "sharded_peak_rss_mb_per_shard": sharded.extras.get("shard_peak_rss_mb"),
        "unsharded_cpu_s": unsharded.extras.get("cpu_s"),
        "sharded_cpu_s_per_shard_host": sharded.extras.get("shard_host_cpu_s"),
    }
