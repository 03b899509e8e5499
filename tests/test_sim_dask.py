"""Sweeps and sharded runs on a real dask.distributed LocalCluster (loopback, no dashboard): the
same table as the process pool, failures reported with their traceback, shards as Dask actors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pvsim.runner import run_scenario
from pvsim.scenario import load_scenario
from pvsim.shard import compare_runs, run_sharded
from pvsim.sweep import make_jobs, report_failures, run_jobs, tidy_rows

distributed = pytest.importorskip("dask.distributed", reason="dask[distributed] is not installed")

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.xdist_group("dask")


@pytest.fixture(scope="module")
def client():
    # threads in this process talking over the in-process transport: quick to start, no socket
    # beyond loopback (the scheduler's HTTP server always starts: bind it to 127.0.0.1, any port)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0"
    ) as cluster, distributed.Client(cluster) as dask_client:
        yield dask_client


def _grid_jobs(devices: int = 150):
    scenario = load_scenario(REPO / "scenarios" / "strategy-study.toml", **{"fleet.devices": devices})
    variants = {
        f"s={s}, p={p}": {"rollout.strategy": s, "faults.power_cuts_per_device_day": p}
        for s in ("all-at-once", "groups")
        for p in (0, 20)
    }
    return make_jobs(scenario, variants, seeds=2)


def _stable(records):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in records]


def test_sweep_table_is_the_same_on_dask_and_on_the_process_pool(client):
    jobs = _grid_jobs()
    keys = ["rollout.strategy", "faults.power_cuts_per_device_day"]
    finished = []
    on_dask = tidy_rows(run_jobs(jobs, dask=client, on_done=lambda: finished.append(1)), keys)
    on_pool = tidy_rows(run_jobs(jobs, workers=2), keys)
    assert len(finished) == len(jobs) == 8
    assert _stable(on_dask) == _stable(on_pool)
    assert {r["rollout.strategy"] for r in on_dask} == {"all-at-once", "groups"}
    assert all(r["error"] is None for r in on_dask)
    # the grid point is part of each run's seed: the two power-cut levels see different fleets
    assert len({r["run_seed"] for r in on_dask}) == len(jobs)


def test_failing_grid_point_is_reported_with_traceback_and_others_finish(client, capsys):
    jobs = _grid_jobs(devices=60)[:4]
    broken = dict(jobs[1].scenario)
    broken["rollout"] = {**broken["rollout"], "error_threshold": 7}  # fails validation in the worker
    jobs[1] = dataclasses.replace(jobs[1], scenario=broken)
    rows = run_jobs(jobs, dask=client)
    assert [bool(r["error"]) for r in rows] == [False, True, False, False]
    assert "Traceback (most recent call last)" in rows[1]["error"]
    assert "rollout.error_threshold" in rows[1]["error"]
    assert rows[1]["point"] == dict(jobs[1].point)
    from rich.console import Console

    console = Console(file=None, force_terminal=False, width=200)
    assert report_failures(rows, console) == 1
    out = capsys.readouterr().out
    assert "run failed: rollout.strategy='all-at-once', faults.power_cuts_per_device_day=0, seed #1" in out
    assert "1 of 4 runs failed" in out
    assert report_failures([rows[0]], console) == 0


def test_sharded_run_agrees_with_unsharded_and_is_the_same_on_dask_actors(client):
    # one test, not a shared fixture: xdist may split a module's tests over workers
    scenario = load_scenario(REPO / "scenarios" / "quickstart.toml", **{"fleet.devices": 4000})
    unsharded = run_scenario(scenario)
    on_pool = run_sharded(scenario, shards=2, workers=2)
    report = compare_runs(unsharded, on_pool)
    assert report["max_adoption_gap_pp"] <= 2.0, report
    assert report["decisions_within_one_epoch"], report["decisions"]
    assert report["decisions"][-1]["sharded"]["state"] == "paused"
    on_dask = run_sharded(scenario, shards=2, dask=client)
    volatile = {"wall_s", "peak_rss_mb"}
    assert {k: v for k, v in on_dask.results.items() if k not in volatile} == {
        k: v for k, v in on_pool.results.items() if k not in volatile
    }
    assert on_dask.timeline == on_pool.timeline and on_dask.releases == on_pool.releases
