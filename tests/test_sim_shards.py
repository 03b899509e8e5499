"""Sharded runs (pvsim.shard) on local worker processes: the merged result is one fleet of the
usual shape, reproducible whatever the worker count. (Agreement with the unsharded run at 4 000
devices is in test_sim_dask.py, next to the same run on Dask actors.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from pvsim.cli import main
from pvsim.runner import run_scenario
from pvsim.scenario import load_scenario
from pvsim.shard import compare_runs, run_sharded

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "scenarios" / "quickstart.toml"


@pytest.fixture(scope="module")
def pair():
    scenario = load_scenario(QUICKSTART, **{"fleet.devices": 1200})
    return scenario, run_scenario(scenario), run_sharded(scenario, shards=2, workers=2)


def test_merged_result_is_one_fleet(pair):
    scenario, unsharded, sharded = pair
    n = scenario.fleet.devices
    assert sharded.results.keys() == unsharded.results.keys()
    assert sum(sharded.results["final_revision_counts"].values()) == n
    assert all(sum(row) == n for row in sharded.timeline["counts"])
    assert sharded.extras["shard_devices"] == [600, 600]
    first = sharded.releases[0]
    assert first["admitted"] == n and first["state"] == "completed"
    assert first["committed"] + first["rolled_back"] + first["wontgo"] + first["bricked"] <= n
    assert abs(first["committed"] - unsharded.releases[0]["committed"]) <= 0.02 * n
    assert sharded.releases[1]["state"] == unsharded.releases[1]["state"] == "paused"
    assert compare_runs(unsharded, sharded)["max_adoption_gap_pp"] <= 2.0


def test_sharded_run_is_reproducible_whatever_the_worker_count():
    scenario = load_scenario(QUICKSTART, **{"fleet.devices": 900})
    one = run_sharded(scenario, shards=3, workers=1)  # three shards in one process
    two = run_sharded(scenario, shards=3, workers=2)
    volatile = {"wall_s", "peak_rss_mb"}
    assert {k: v for k, v in one.results.items() if k not in volatile} == {
        k: v for k, v in two.results.items() if k not in volatile
    }
    assert one.timeline == two.timeline and one.marks == two.marks


def test_run_shards_cli_writes_results(tmp_path):
    out = tmp_path / "sharded"
    code = main(["run", str(QUICKSTART), "--devices", "600", "--shards", "3", "--workers", "2", "--out", str(out), "--quiet"])
    assert code == 0
    text = (out / "results.json").read_text()
    assert '"devices": 600' in text
    lines = (out / "timeline.csv").read_text().splitlines()
    assert all(sum(map(int, line.split(",")[1:-1])) == 600 for line in lines[1:])  # the last column: MB moved
    assert main(["run", str(QUICKSTART), "--devices", "600", "--shards", "0"]) == 1
